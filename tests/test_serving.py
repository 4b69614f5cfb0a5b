"""Listening sockets shared by every daemon, and the health server of the listener and the
publisher."""

from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from romana.serving import bind, read_token_file, serve_health_in_thread

from .daemon import running


def test_tcp_connections_have_nagle_disabled() -> None:
    """Without TCP_NODELAY small responses wait ~40 ms for delayed ACKs (a real regression:
    every API call took 44 ms)."""
    server = bind("127.0.0.1:0")
    try:
        assert server.proto == socket.IPPROTO_TCP  # asyncio only sets NODELAY when it says so
        with socket.create_connection(server.getsockname()):
            accepted, _ = server.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        server.close()


def test_unix_socket_replaces_a_stale_file_but_not_a_live_one(tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    first = bind(f"unix:{path}")
    with pytest.raises(OSError):
        bind(f"unix:{path}")  # someone is listening there: refuse, do not steal it
    first.close()
    assert path.is_socket()  # left behind, as a crashed daemon would
    second = bind(f"unix:{path}")
    assert oct(path.stat().st_mode & 0o777) == "0o660"
    second.close()


def test_bad_addresses_are_refused() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        bind("localhost")


def test_token_files_must_be_readable_and_not_empty(tmp_path: Path) -> None:
    assert read_token_file("d", None) is None
    (tmp_path / "t").write_text(" s3cret\n")
    assert read_token_file("d", tmp_path / "t") == "s3cret"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SystemExit, match=r"d: token file .* is empty"):
        read_token_file("d", tmp_path / "empty")
    with pytest.raises(SystemExit, match="d: cannot read token file"):
        read_token_file("d", tmp_path / "missing")


@pytest.mark.daemons
@pytest.mark.parametrize(
    ("choice", "loop"), [("auto", "uvloop.Loop"), ("asyncio", "asyncio.unix_events")]
)
def test_romanad_runs_on_uvloop_unless_told_otherwise(
    tmp_path: Path, choice: str, loop: str
) -> None:
    with running(tmp_path / "data", "--event-loop", choice) as daemon:
        with daemon.client() as c:
            assert c.get("/healthz").status_code == 200
        serving = [
            json.loads(line) for line in daemon.log.read_text().splitlines() if '"serving"' in line
        ]
    assert serving and serving[0]["event_loop"].startswith(loop), serving


def test_long_polls_always_leave_a_quarter_of_the_connections_to_the_rest() -> None:
    from romana.connections import watch_budget

    assert watch_budget(4096, 3000) == 3000  # romanad's defaults: 1,096 left
    assert watch_budget(1000, 1000) == 750
    assert watch_budget(200, 50) == 50
    assert watch_budget(100, 100) == 68  # at least 32 left
    assert watch_budget(10, 100) == 1  # a tiny server still serves one watch


def test_the_health_server_answers_and_logs_under_its_callers_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The listener and the publisher share this server: each one's requests must be logged
    under its own logger, from a thread of that name (the listener's once carried the
    publisher's), and an unhealthy process must answer 503 for probes to see it."""
    registry = CollectorRegistry()
    Counter("probe_things", "things", registry=registry).inc(3)
    healthy = {"ok": True}

    def health() -> tuple[bool, dict[str, Any]]:
        return healthy["ok"], {"ok": healthy["ok"]}

    caplog.set_level(logging.DEBUG, logger="romana.kube.http")
    server = serve_health_in_thread("romana.kube", "127.0.0.1:0", registry, health)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert any(t.name == "romana.kube.http" for t in threading.enumerate())
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as answer:
            assert (answer.status, json.load(answer)) == (200, {"ok": True})
        healthy["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(f"{base}/healthz", timeout=5)
        assert failed.value.code == 503
        assert json.load(failed.value) == {"ok": False}
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
            assert "probe_things_total 3.0" in answer.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    logged = [r for r in caplog.records if "/healthz" in r.getMessage()]
    assert logged and {r.name for r in logged} == {"romana.kube.http"}
