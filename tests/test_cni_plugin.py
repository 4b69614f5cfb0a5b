"""The plugin executable nodes run (``romana/cni/plugin.c``, built static by ``make plugin``).

It must speak the protocol exactly as ``romana/cni/shim.py`` (the reference) does: both run
here on the same environment and stdin against sockets the test controls, and must send
byte-identical requests and give byte-identical answers, hostile inputs included. It must
need nothing on the node: no program loader in its ELF headers, and it answers an ADD in
an empty root where no Python can start. And it waits for an agent that is away (restarting,
being upgraded) for ``agent_wait_seconds``, never for STATUS.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from romana import __version__
from romana.cni import install, shim
from romana.wire import CNI_VERSIONS

from .elf import PT_DYNAMIC, PT_INTERP, program_header_types

ROOT = Path(__file__).resolve().parent.parent
IMPLEMENTATIONS = ("static", "shim")


def build_plugin() -> Path:
    """The plugin as ``make plugin`` builds it (rebuilt here when plugin.c is newer)."""
    build = subprocess.run(
        ["make", "-C", str(ROOT), "--no-print-directory", "plugin"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return install.PLUGIN


@pytest.fixture(scope="module")
def executable() -> Path:
    return build_plugin()


@pytest.fixture
def plugins(tmp_path: Path, executable: Path) -> dict[str, dict[str, list[str]]]:
    """implementation -> mode -> argv: the installed executable, and the shim run as a
    script under each plugin name (``python -IS``; the name chooses the mode)."""
    static_dir, shim_dir = tmp_path / "bin", tmp_path / "shim"
    install.install(static_dir)
    shim_dir.mkdir()
    for name in install.NAMES.values():
        (shim_dir / name).symlink_to(shim.__file__)
    return {
        "static": {mode: [str(static_dir / name)] for mode, name in install.NAMES.items()},
        "shim": {
            mode: [sys.executable, "-IS", str(shim_dir / name)]
            for mode, name in install.NAMES.items()
        },
    }


@dataclass
class Agent:
    """A Unix socket server standing in for romana-agent: records each request, answers
    every one with ``reply``."""

    path: Path
    reply: bytes = b"0\n{}\n"
    requests: list[bytes] = field(default_factory=list)
    _server: socket.socket | None = None

    def start(self) -> Agent:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._serve, args=(server,), daemon=True).start()
        return self

    def _serve(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed by stop()
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                self.requests.append(data)
                conn.sendall(self.reply)

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            self.path.unlink(missing_ok=True)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    running = Agent(tmp_path / "agent.sock").start()
    yield running
    running.stop()


@dataclass(frozen=True)
class Answer:
    rc: int
    stdout: bytes

    @property
    def error(self) -> dict[str, object]:
        assert self.rc == 1, self
        document = json.loads(self.stdout)
        assert set(document) == {"cniVersion", "code", "msg", "details"}
        return dict(document)


def call(argv: list[str], env: dict[bytes, bytes] | dict[str, str], stdin: bytes) -> Answer:
    done = subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=60)
    assert done.stderr == b"", done.stderr
    return Answer(done.returncode, done.stdout)


def both(
    plugins: dict[str, dict[str, list[str]]],
    mode: str,
    env: dict[bytes, bytes] | dict[str, str],
    stdin: bytes,
) -> Answer:
    """Run both implementations; their answers must be identical (returned once)."""
    static, reference = (call(plugins[impl][mode], env, stdin) for impl in IMPLEMENTATIONS)
    assert static == reference, (static, reference)
    return static


def conf(**fields: object) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "net", "type": "romana", **fields}).encode()


# -- the same protocol as the reference -----------------------------------------------------
def test_both_send_identical_requests_and_relay_the_agents_answer(
    plugins: dict[str, dict[str, list[str]]], agent: Agent
) -> None:
    env = {
        b"CNI_COMMAND": b"ADD",
        b"CNI_CONTAINERID": b"c1",
        b"CNI_NETNS": b"/var/run/netns/p1",
        b"CNI_IFNAME": b"eth0",
        b"CNI_ARGS": b"K8S_POD_NAMESPACE=a;X=b=c",
        b"CNI_ODD": b"\xff\xfe not utf-8",
        b"HOME": b"/nowhere",  # not CNI_: not forwarded
        b"cni_lower": b"x",
    }
    full = conf(agent_socket=str(agent.path)) + b"\n\x00binary tail \xff"
    ipam = json.dumps(
        {"cniVersion": "0.4.0", "name": "br", "ipam": {"agent_socket": str(agent.path)}}
    ).encode()
    replies = [b"0\n{}\n", b'7\n{"code": 7}\n', b"300\nbig", b"5", b"0\n" + b"x" * 200_000]
    for reply in replies:
        agent.reply = reply
        for mode, stdin in (("full", full), ("ipam", ipam)):
            agent.requests.clear()
            answer = both(plugins, mode, env, stdin)
            forwarded = b"".join(k + b"=" + v + b"\0" for k, v in env.items() if k[:4] == b"CNI_")
            expected = shim.MAGIC + mode.encode() + b"\0" + forwarded + b"\0" + stdin
            assert agent.requests == [expected, expected]
            code, _, stdout = reply.partition(b"\n")
            assert answer == Answer(int(code) % 256, stdout)


def test_both_report_an_agent_that_closes_without_an_answer(
    plugins: dict[str, dict[str, list[str]]], agent: Agent
) -> None:
    for reply in (b"", b"\n{}", b"oops\n{}", b"-1\n"):
        agent.reply = reply
        for command, code in (("ADD", 11), ("STATUS", 50)):
            error = both(
                plugins, "full", {"CNI_COMMAND": command}, conf(agent_socket=str(agent.path))
            ).error
            assert error["code"] == code
            assert error["msg"] == "romana-agent closed the connection without an answer"


def test_both_answer_version_by_themselves(plugins: dict[str, dict[str, list[str]]]) -> None:
    """VERSION needs no agent (the default socket is not even tried) and echoes a
    supported cniVersion, escapes decoded; anything else gets the latest."""
    cases = {
        b'{"cniVersion": "0.4.0"}': "0.4.0",
        b'{"cniVersion": "1.0.\\u0030"}': "1.0.0",
        b'{"cniVersion": "9.9.9"}': CNI_VERSIONS[-1],
        b'{"cniVersion": 1}': CNI_VERSIONS[-1],
        b"": CNI_VERSIONS[-1],
        b'{"name": "cniVersion", "cniVersion" :\n"0.3.1"}': "0.3.1",
    }
    for stdin, expected in cases.items():
        for mode in ("full", "ipam"):
            answer = both(plugins, mode, {"CNI_COMMAND": "VERSION"}, stdin)
            assert answer.rc == 0
            assert json.loads(answer.stdout) == {
                "cniVersion": expected,
                "supportedVersions": list(CNI_VERSIONS),
            }


def test_both_refuse_what_the_agent_never_sees(
    plugins: dict[str, dict[str, list[str]]], tmp_path: Path
) -> None:
    nowhere = str(tmp_path / "absent.sock")
    missing = both(plugins, "full", {}, conf(agent_socket=nowhere, cniVersion="0.4.0")).error
    assert (missing["code"], missing["cniVersion"]) == (4, "0.4.0")
    huge = conf(agent_socket=nowhere, pad="x" * (1 << 20))
    oversized = both(plugins, "full", {"CNI_COMMAND": "ADD"}, huge).error
    assert oversized["code"] == 7
    assert oversized["msg"] == f"the network configuration is {len(huge)} bytes, over 1048576"


HOSTILE_PATHS = {  # JSON text of agent_socket's value -> the path the message names
    '/run/we\\"ird\\\\name': '/run/we"ird\\name',
    "/run/line\\nbreak\\ttab\\u0001\\u001f": "/run/line\nbreak\ttab\x01\x1f",
    "/run/nul\\u0000after": "/run/nul\x00after",
    "/run/\\u00e9\\u4e2d\\ud83d\\ude00/\\/x": "/run/é中😀//x",
    "/run/lone\\ud800surrogate": "/run/lone\ufffd\ufffd\ufffdsurrogate",
    "/run/" + "x" * 120: "/run/" + "x" * 120,  # too long for a Unix socket
}


@pytest.mark.parametrize("path_json", list(HOSTILE_PATHS))
def test_error_objects_are_json_whatever_the_path(
    plugins: dict[str, dict[str, list[str]]], path_json: str
) -> None:
    stdin = b'{"cniVersion": "1.0.0", "agent_wait_seconds": 0, "agent_socket": "%s"}' % (
        path_json.encode()
    )
    for command, code in (("ADD", 11), ("STATUS", 50)):
        error = both(plugins, "full", {"CNI_COMMAND": command}, stdin).error
        assert error["code"] == code and error["cniVersion"] == "1.0.0"
        assert error["msg"] == f"romana-agent is not reachable at {HOSTILE_PATHS[path_json]}"
        reason = "AF_UNIX path too long" if "x" * 120 in path_json else "No such file or directory"
        assert error["details"] == f"{reason}; is romana-agent running with --cni-socket?"


def test_raw_bytes_that_are_not_utf8_become_replacement_characters(
    plugins: dict[str, dict[str, list[str]]],
) -> None:
    stdin = (
        b'{"cniVersion": "1.0.\xff", "agent_wait_seconds": 0, "agent_socket": "/r/\xe2\x82 \xc3"}'
    )
    error = both(plugins, "full", {"CNI_COMMAND": "DEL"}, stdin).error
    assert error["cniVersion"] == "1.0.\ufffd"
    assert error["msg"] == "romana-agent is not reachable at /r/\ufffd \ufffd"


_JSON_STRING_PIECES = st.sampled_from(
    [b"a", b"/", b" ", b'\\"', b"\\\\", b"\\/", b"\\n", b"\\u00e9", b"\\ud83d\\ude00", b"\\ud800",
     b"\\udc00", b"\\u12", b"\\x", b"\\", b'"', b"\x00", b"\x1f", b"\x7f", b"\x80", b"\xc3",
     b"\xc3\xa9", b"\xe0\x80", b"\xed\xa0\x80", b"\xf0\x9f\x98", b"\xf4\x90\x80\x80", b"\xff"]
)  # fmt: skip


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    path=st.lists(_JSON_STRING_PIECES, max_size=12).map(b"".join),
    version=st.lists(_JSON_STRING_PIECES, max_size=4).map(b"".join),
    command=st.sampled_from(["ADD", "DEL", "STATUS", "VERSION", ""]),
)
def test_both_agree_on_arbitrary_bytes(
    plugins: dict[str, dict[str, list[str]]],
    tmp_path: Path,
    path: bytes,
    version: bytes,
    command: str,
) -> None:
    """Escapes, broken escapes, raw control and non-UTF-8 bytes in the socket path and the
    version: the two implementations answer byte for byte alike, with valid JSON."""
    nowhere = str(tmp_path / "none").encode() + b"/"
    stdin = b'{"agent_wait_seconds": 0, "cniVersion": "%s", "agent_socket": "%s%s"}' % (
        version,
        nowhere,
        path,
    )
    answer = both(plugins, "full", {"CNI_COMMAND": command}, stdin)
    assert isinstance(json.loads(answer.stdout), dict)


@pytest.mark.parametrize(
    ("value", "waits"),
    [("0", False), ("00", False), ("5", True), ("0.5", True), ("-1", True), ("601", True),
     ('"0"', True), ("0e1", True), ("null", True)],
)  # fmt: skip
def test_both_read_agent_wait_seconds_alike(
    plugins: dict[str, dict[str, list[str]]], tmp_path: Path, value: str, waits: bool
) -> None:
    """A plain integer from 0 to 600 is the wait; anything else (config.py refuses it, once
    the agent is reached) means the default, 60 s: seen by whether a socket that appears
    0.5 s after the start is reached."""
    for implementation in IMPLEMENTATIONS:
        path = tmp_path / f"{implementation}.sock"
        stdin = b'{"cniVersion": "1.0.0", "agent_socket": "%s", "agent_wait_seconds": %s}' % (
            str(path).encode(),
            value.encode(),
        )
        with agent_later(path, 0.5) as late:
            answer = call(plugins[implementation]["full"], {"CNI_COMMAND": "ADD"}, stdin)
        assert (answer.rc == 0, len(late.requests)) == ((True, 1) if waits else (False, 0))


# -- needs nothing on the node --------------------------------------------------------------
def test_the_executable_is_static(executable: Path) -> None:
    types = program_header_types(executable)
    assert types, "an executable has program headers"
    assert PT_INTERP not in types, "a program loader is named: not static"
    assert PT_DYNAMIC not in types, "dynamic section: shared libraries would be loaded"
    # And the check itself sees a loader where there is one.
    assert PT_INTERP in program_header_types(Path(os.path.realpath(sys.executable)))


def test_version_flag_names_the_plugin_and_the_project_version(
    plugins: dict[str, dict[str, list[str]]],
) -> None:
    for mode, name in install.NAMES.items():
        answer = call([*plugins["static"][mode], "--version"], {}, b"")
        assert answer == Answer(0, f"{name} {__version__}\n".encode())
    bin_dir = Path(sys.executable).parent
    for script in ("romana-cni", "romana-ipam"):
        done = subprocess.run(
            [str(bin_dir / script), "--version"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and done.stdout.startswith(f"{script} {__version__} ")


@pytest.mark.root
@pytest.mark.skipif(shutil.which("chroot") is None, reason="needs chroot (coreutils)")
def test_answers_an_add_in_an_empty_root_where_python_cannot_run(
    executable: Path, tmp_path: Path
) -> None:
    """A root holding only the plugin, this machine's python3 binary (without its loader
    and libraries it cannot start, as on a node without Python) and the agent's socket
    directory: the plugin answers ADD through the default socket path."""
    root = tmp_path / "root"
    (root / "run" / "romana").mkdir(parents=True)
    (root / "usr" / "bin").mkdir(parents=True)
    shutil.copy(executable, root / "romana")
    shutil.copy(os.path.realpath(sys.executable), root / "usr" / "bin" / "python3")
    stub = Agent(root / "run" / "romana" / "cni.sock", reply=b'0\n{"ips": []}\n').start()
    try:
        python = subprocess.run(
            [str(shutil.which("chroot")), str(root), "/usr/bin/python3", "-c", "pass"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert python.returncode != 0, "python must not be able to start in this root"
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"}
        chroot = shutil.which("chroot")
        assert chroot is not None
        answer = call([chroot, str(root), "/romana"], env, b'{"cniVersion": "1.0.0"}')
        assert answer == Answer(0, b'{"ips": []}\n')
        assert stub.requests == [
            shim.MAGIC + b"full\0CNI_COMMAND=ADD\0CNI_CONTAINERID=c1\0CNI_IFNAME=eth0\0\0"
            b'{"cniVersion": "1.0.0"}'
        ]
        assert sorted(p.name for p in root.iterdir()) == ["romana", "run", "usr"]
    finally:
        stub.stop()


# -- waiting for an agent that is away ------------------------------------------------------
@contextmanager
def agent_later(
    path: Path, delay: float, before: Callable[[], None] | None = None
) -> Iterator[Agent]:
    """An agent whose socket appears ``delay`` seconds from now (``before`` runs first);
    leaving the block waits until it has appeared, then stops it."""
    late = Agent(path)

    def appear() -> None:
        time.sleep(delay)
        if before is not None:
            before()
        late.start()

    thread = threading.Thread(target=appear, daemon=True)
    thread.start()
    try:
        yield late
    finally:
        thread.join()
        late.stop()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("away", ["missing", "refusing"])
def test_waits_for_an_agent_whose_socket_appears_later(
    plugins: dict[str, dict[str, list[str]]], tmp_path: Path, implementation: str, away: str
) -> None:
    """The agent's socket appears (or, for a stale socket file, starts accepting) 0.5 s
    after the plugin started: the ADD is answered with the agent's reply; the agent saw it
    once."""
    path = tmp_path / "agent.sock"
    if away == "refusing":  # a socket file nobody listens on: connections are refused
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))
        stale.close()
    stdin = conf(agent_socket=str(path), agent_wait_seconds=20)
    with agent_later(path, 0.5, before=lambda: path.unlink(missing_ok=True)) as late:
        answer = call(plugins[implementation]["full"], {"CNI_COMMAND": "ADD"}, stdin)
    assert answer == Answer(0, b"{}\n")
    assert len(late.requests) == 1 and late.requests[0].endswith(stdin)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_no_waiting_with_zero_or_for_status(
    plugins: dict[str, dict[str, list[str]]], tmp_path: Path, implementation: str
) -> None:
    """``agent_wait_seconds: 0``, and STATUS whatever the setting: the agent whose socket
    appears 0.5 s later is never asked (code 11, or 50 for STATUS)."""
    for command, wait, code in (("ADD", 0, 11), ("STATUS", 20, 50)):
        path = tmp_path / f"{command}.sock"
        stdin = conf(agent_socket=str(path), agent_wait_seconds=wait)
        with agent_later(path, 0.5) as late:
            answer = call(plugins[implementation]["full"], {"CNI_COMMAND": command}, stdin)
        assert answer.error["code"] == code
        assert "No such file or directory" in str(answer.error["details"])
        assert late.requests == []


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gives_up_with_try_again_later_once_the_wait_is_over(
    plugins: dict[str, dict[str, list[str]]], tmp_path: Path, implementation: str
) -> None:
    stdin = conf(agent_socket=str(tmp_path / "never.sock"), agent_wait_seconds=1)
    error = call(plugins[implementation]["full"], {"CNI_COMMAND": "DEL"}, stdin).error
    assert error["code"] == 11
    assert error["msg"] == f"romana-agent is not reachable at {tmp_path / 'never.sock'}"


# -- install --------------------------------------------------------------------------------
def test_install_without_a_built_executable_says_how_to_build_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(install, "PLUGIN", tmp_path / "not-built")
    assert install.main(["install", "--bin-dir", str(tmp_path / "bin")]) == 1
    assert "run `make plugin`" in capsys.readouterr().err
    assert not (tmp_path / "bin").exists()
