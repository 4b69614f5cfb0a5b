"""Long polls have a budget of their own (``--max-watches``), below the connection limit:
more long polls than it allows, held by an unauthenticated client, leave writes and
/healthz answered; the excess watches are refused at once with 503, ``Retry-After`` and
``Connection: close``; once the polls end (their clients gone), watching works again.
A real romanad process, stopped by PID."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import EXAMPLES
from .daemon import Daemon, running
from .wait import wait_until

pytestmark = pytest.mark.daemons

TOPOLOGY = str(EXAMPLES / "datacenter-4-racks.json")
WATCHES = 50
CONNECTIONS = 200
POLLS = 120  # more than the watch budget; fewer than the connection limit


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    limits = ("--max-watches", str(WATCHES), "--max-connections", str(CONNECTIONS))
    with running(tmp_path / "data", "--topology", TOPOLOGY, *limits) as d:
        with d.client() as c:
            host = {"name": "h1", "ip": "192.168.0.1", "tags": {"my-location-tag": "rack-1"}}
            assert c.post("/hosts", json=host).status_code == 200
        yield d


def long_polls(daemon: Daemon, since: int, count: int) -> list[socket.socket]:
    """``count`` watches waiting for the fact after ``since`` (a minute at most)."""
    request = f"GET /watch?since={since}&timeout=60 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    polls = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", daemon.port))
        s.sendall(request)
        polls.append(s)
    return polls


def answered(
    polls: list[socket.socket], count: int, within: float = 10.0
) -> dict[socket.socket, bytes]:
    """The first ``count`` polls to get an answer within ``within`` s, and that answer."""
    found: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + within
    while len(found) < count and time.monotonic() < deadline:
        waiting = [s for s in polls if s not in found]
        ready, _, _ = select.select(waiting, [], [], 0.2)
        found.update((s, response_of(s)) for s in ready)
    return found


def response_of(s: socket.socket) -> bytes:
    """One whole HTTP answer (its head may come before its body)."""
    s.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed before a whole head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, f"closed before a whole body: {data!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def health(c: httpx.Client) -> dict[str, Any]:
    answer = c.get("/healthz")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_long_polls_past_their_budget_leave_writes_and_health_answered(daemon: Daemon) -> None:
    with daemon.client() as c:
        since = health(c)["revision"]
    polls = long_polls(daemon, since, POLLS)
    try:
        with daemon.client() as c:
            full = {"open": WATCHES, "limit": WATCHES, "refused": POLLS - WATCHES}
            wait_until(lambda: health(c)["watches"] == full, 10, what="the budget to fill")
        refusals = answered(polls, POLLS - WATCHES)
        assert len(refusals) == POLLS - WATCHES
        assert answered([s for s in polls if s not in refusals], 1, within=0.5) == {}  # wait
        for raw in refusals.values():
            head, _, body = raw.partition(b"\r\n\r\n")
            lines = head.decode().lower().split("\r\n")
            assert lines[0] == "http/1.1 503 service unavailable"
            assert "retry-after: 5" in lines and "connection: close" in lines
            error = json.loads(body)["error"]
            assert error["code"] == "unavailable" and "--max-watches" in error["message"]
        for s in refusals:
            s.settimeout(5)
            assert s.recv(1) == b""  # closed: a refusal holds no connection
        held = [s for s in polls if s not in refusals]
        # Budget full: every write and every probe is still served, each on its own
        # connection as a CNI plugin and a liveness probe make them.
        outcomes = []
        for i in range(20):
            with daemon.client() as c:
                outcomes.append(
                    c.post("/address", json={"name": f"w{i}", "host": "h1"}).status_code
                )
                outcomes.append(c.get("/healthz").status_code)
        assert outcomes == [200] * 40
        # The first write woke the waiting polls: each was answered with the changes.
        woken = answered(held, WATCHES)
        assert len(woken) == WATCHES
        assert all(raw.startswith(b"HTTP/1.1 200") for raw in woken.values())
    finally:
        for s in polls:
            s.close()
    with daemon.client() as c:
        revision = health(c)["revision"]
        again = long_polls(daemon, revision, WATCHES)  # clients that leave: their watches end
        try:
            wait_until(
                lambda: health(c)["watches"]["open"] == WATCHES,
                10,
                what="the watch budget to fill again",
            )
        finally:
            for s in again:
                s.close()
        wait_until(
            lambda: health(c)["watches"]["open"] == 0,
            10,
            what="the watches of clients that left to end",
        )
        fresh = c.get("/watch", params={"since": revision - 1, "timeout": 5})
        assert fresh.status_code == 200 and len(fresh.json()["changes"]) == 1
