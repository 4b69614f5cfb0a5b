"""Listening sockets shared by romanad and the agent."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from romana.serving import bind, read_token_file

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
