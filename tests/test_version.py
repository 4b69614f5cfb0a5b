"""One version, reported alike by every process: ``--version`` on each console script,
``romana version`` (the client's and romanad's), romanad's ``GET /version`` and /healthz,
and the ``romana_build_info`` gauge of each process's /metrics. Real processes throughout."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from romana import __version__
from romana.cli.version import duration

from .daemon import Daemon, free_port
from .kube import KubeApiServer, Listener, listener_fixtures
from .lab import Lab, romana_argv
from .wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PYTHON = platform.python_version()
# romana-cni and romana-ipam answer --version through the CNI shim, which has its own
# tests (the node's plugin is a different build); every other script is checked here.
CNI_SCRIPTS = {"romana-cni", "romana-ipam"}

# ``romanad`` here is the listener's (a client); the tests below start their own, ``daemon``.
cluster, romanad, listener = listener_fixtures()


def console_scripts() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return sorted(set(project["scripts"]) - CNI_SCRIPTS)


def version_pattern(program: str) -> re.Pattern[str]:
    return re.compile(
        rf"{re.escape(program)} {re.escape(__version__)} "
        rf"\(Python {re.escape(PYTHON)}(, commit (?P<commit>\S+))?\)"
    )


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def build_info_labels(metrics: str) -> dict[str, str]:
    """The labels of the one ``romana_build_info`` sample, which must be 1."""
    samples = [line for line in metrics.splitlines() if line.startswith("romana_build_info{")]
    assert len(samples) == 1, metrics
    labels, value = samples[0].rsplit(" ", 1)
    assert float(value) == 1.0
    return dict(re.findall(r'(\w+)="([^"]*)"', labels))


# -- the version is written once --------------------------------------------------------
def test_the_version_is_written_once() -> None:
    """pyproject.toml takes the version from romana.__version__ instead of a copy, and
    the installed metadata agrees (a second copy would drift at the next release)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "romana.__version__"}
    assert importlib.metadata.version("romana") == __version__


# -- --version on every console script --------------------------------------------------
@pytest.mark.parametrize("script", console_scripts())
def test_every_console_script_answers_version(script: str, tmp_path: Path) -> None:
    """Alone, with nothing else given and nothing running: printed on stdout, exit 0, and
    nothing touched (romanad would otherwise create its data directory under $HOME)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "ROMANA_BUILD_COMMIT": ""}
    result = run(str(BIN / script), "--version", env=env)
    assert result.returncode == 0, result.stderr
    match = version_pattern(script).fullmatch(result.stdout.strip())
    assert match is not None, result.stdout
    assert match["commit"] is None  # this checkout's build recorded no commit
    assert result.stderr == ""
    assert list(home.iterdir()) == []


def test_a_recorded_build_commit_is_reported(tmp_path: Path) -> None:
    result = run(str(BIN / "romanad"), "--version", env={"ROMANA_BUILD_COMMIT": "0a1b2c3d\n"})
    assert result.returncode == 0
    match = version_pattern("romanad").fullmatch(result.stdout.strip())
    assert match is not None and match["commit"] == "0a1b2c3d", result.stdout


@pytest.mark.daemons
def test_version_goes_before_argument_errors() -> None:
    """``--version`` wins over a wrong argument beside it, as people expect; a wrong
    argument alone is still a usage error."""
    assert run(str(BIN / "romanad"), "--version", "--max-connections", "x").returncode == 0
    assert run(str(BIN / "romanad"), "--max-connections", "x").returncode == 2


# -- romanad: GET /version, /healthz, /metrics ------------------------------------------
@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    monkeypatch.setenv("ROMANA_BUILD_COMMIT", "feedc0de")  # inherited by the processes
    running = Daemon(tmp_path / "data").start()
    yield running
    running.stop()


@pytest.mark.daemons
def test_romanad_reports_its_build(daemon: Daemon) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    with daemon.client() as http:
        first = http.get("/version").json()
        second = http.get("/version").json()
        health = http.get("/healthz").json()
        metrics = http.get("/metrics").text
        spec = http.get("/openapi.json").json()
    assert first["version"] == __version__
    assert first["python"] == PYTHON
    assert first["implementation"] == platform.python_implementation()
    assert first["commit"] == "feedc0de"
    assert first["store"] == "sqlite"
    assert first["platform"] == f"{platform.system().lower()}/{platform.machine()}"
    # Started before this test looked (the daemon was healthy already), and the uptime
    # counts from that start (started_at is to the second).
    started = datetime.fromisoformat(first["started_at"])
    assert started.tzinfo is not None and started <= before
    assert 0 <= first["uptime_seconds"] <= second["uptime_seconds"]
    assert first["uptime_seconds"] <= (datetime.now(UTC) - started).total_seconds() + 1
    assert health["version"] == __version__
    assert health["store"]["kind"] == "sqlite"
    assert build_info_labels(metrics) == {
        "version": __version__,
        "python": PYTHON,
        "commit": "feedc0de",
    }
    assert spec["info"]["version"] == __version__


# -- romana version ----------------------------------------------------------------------
@pytest.mark.daemons
def test_romana_version_shows_client_and_romanad(daemon: Daemon) -> None:
    shown = run(str(BIN / "romana"), "version", "--url", daemon.url)
    assert shown.returncode == 0, shown.stderr
    client_line, server_line = shown.stdout.strip().splitlines()
    assert version_pattern("romana").search(client_line)
    assert server_line.startswith(f"romanad  {__version__} (Python {PYTHON}, commit feedc0de)")
    assert "sqlite store" in server_line and daemon.url in server_line
    assert shown.stderr == ""  # same versions: no note

    as_json = run(str(BIN / "romana"), "version", "--url", daemon.url, "--json")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["client"]["version"] == document["romanad"]["version"] == __version__
    assert document["romanad"]["store"] == "sqlite"
    assert "error" not in document


def test_romana_version_without_romanad_fails_clearly() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    shown = run(str(BIN / "romana"), "version", "--url", url)
    assert shown.returncode == 1
    assert version_pattern("romana").search(shown.stdout)  # the client's version still shown
    assert "romanad " not in shown.stdout
    assert f"cannot reach romanad at {url}" in shown.stderr

    as_json = run(str(BIN / "romana"), "version", "--url", url, "--json")
    assert as_json.returncode == 1
    document = json.loads(as_json.stdout)
    assert document["client"]["version"] == __version__
    assert document["romanad"] is None
    assert document["error"]["code"] == "unreachable"


class _Romanad(BaseHTTPRequestHandler):
    """Stands for a romanad of another build: ``answers`` maps a path to (status, body)."""

    answers: ClassVar[dict[str, tuple[int, dict[str, Any]]]] = {}

    def do_GET(self) -> None:
        # An unknown path: romanad's own 404 body.
        not_found = {"error": {"code": "not_found", "message": "Not Found", "details": []}}
        status, body = self.answers.get(self.path, (404, not_found))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def other_romanad() -> Iterator[tuple[str, dict[str, tuple[int, dict[str, Any]]]]]:
    answers: ClassVar[dict[str, tuple[int, dict[str, Any]]]] = {}
    handler = type("Handler", (_Romanad,), {"answers": answers})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answers
    server.shutdown()
    server.server_close()


def test_romana_version_notes_a_different_romanad(
    other_romanad: tuple[str, dict[str, tuple[int, dict[str, Any]]]],
) -> None:
    url, answers = other_romanad
    answers["/version"] = (
        200,
        {
            "version": "9.9.9",
            "python": "3.13.1",
            "implementation": "CPython",
            "platform": "linux/aarch64",
            "commit": None,
            "store": "etcd",
            "started_at": "2030-01-01T00:00:00+00:00",
            "uptime_seconds": 93_784.5,
        },
    )
    shown = run(str(BIN / "romana"), "version", "--url", url)
    assert shown.returncode == 0, shown.stderr  # a rolling upgrade is not an error
    assert f"romanad  9.9.9 (Python 3.13.1), etcd store, up 1d 2h, at {url}" in shown.stdout
    assert f"the client is {__version__}, romanad 9.9.9" in shown.stderr


def test_romana_version_against_a_romanad_without_the_route(
    other_romanad: tuple[str, dict[str, tuple[int, dict[str, Any]]]],
) -> None:
    url, _ = other_romanad  # answers 404 to everything, as a romanad before /version
    shown = run(str(BIN / "romana"), "version", "--url", url)
    assert shown.returncode == 1
    assert version_pattern("romana").search(shown.stdout)
    assert "older than GET /version" in shown.stderr


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (60, "1m"), (3_725, "1h 2m"), (90_061, "1d 1h"), (86_400, "1d")],
)
def test_uptime_reads_in_its_two_largest_units(seconds: float, text: str) -> None:
    assert duration(seconds) == text


# -- romana_build_info in the other processes' registries -------------------------------
@pytest.mark.root
@pytest.mark.daemons
def test_agent_metrics_carry_build_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a network namespace of its own: the agent owns a routing table there."""
    monkeypatch.delenv("ROMANA_BUILD_COMMIT", raising=False)
    socket = tmp_path / "romanad.sock"
    romanad = Daemon(tmp_path / "data", socket=socket).start()
    metrics_socket = tmp_path / "agent.sock"
    try:
        with Lab("ver", tmp_path) as lab:
            host = lab.netns("h1")
            lab.agent(
                host,
                "h1",
                f"unix:{socket}",
                serving=metrics_socket,
                listen=f"unix:{metrics_socket}",
                no_policy=True,
            )
            metrics = get_unix(metrics_socket, "/metrics")
    finally:
        romanad.stop()
    assert build_info_labels(metrics) == {"version": __version__, "python": PYTHON, "commit": ""}


@pytest.mark.daemons
def test_publisher_metrics_carry_build_info(daemon: Daemon, tmp_path: Path) -> None:
    template = tmp_path / "bird.conf.j2"
    template.write_text("# rendered by romana-publisher\n")
    port = free_port()
    log = (tmp_path / "publisher.log").open("ab")
    argv = romana_argv(
        "romana-publisher",
        host="h1",
        url=daemon.url,
        template=template,
        output=tmp_path / "bird.conf",
        metrics_listen=f"127.0.0.1:{port}",
    )
    proc = subprocess.Popen(argv, stdout=log, stderr=log)
    try:
        wait_until(
            lambda: _answers(f"http://127.0.0.1:{port}/metrics"), 15, what="/metrics", interval=0.1
        )
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        proc.terminate()
        proc.wait(10)
    # The daemon fixture set ROMANA_BUILD_COMMIT, and the publisher inherited it too.
    labels = build_info_labels(metrics)
    assert labels == {"version": __version__, "python": PYTHON, "commit": "feedc0de"}


@pytest.mark.daemons
def test_listener_metrics_carry_build_info(cluster: KubeApiServer, listener: Listener) -> None:
    wait_until(listener.health.exists, 15, what="the listener's health socket")
    metrics = get_unix(listener.health, "/metrics")
    assert build_info_labels(metrics)["version"] == __version__


def get_unix(socket: Path, path: str) -> str:
    transport = httpx.HTTPTransport(uds=str(socket))
    with httpx.Client(transport=transport, base_url="http://local", timeout=10) as http:
        answer = http.get(path)
    assert answer.status_code == 200, answer.text
    return answer.text


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
