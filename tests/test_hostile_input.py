"""Hostile input against a real romanad (and, after it, a real publisher): nothing answers
5xx, hangs, or poisons later reads, not even after a restart.

Names and labels come from hypothesis over all of Unicode (lone surrogates, controls, NUL,
newlines, BOMs, bidirectional marks, slashes, IP-shaped text); bodies are sent as the
JSON a hostile client can write (surrogates escaped, ``\\ud800``). After each round every
read endpoint must still answer. Then connection floods: idle and slow-header connections
are closed after the header timeout, the connection cap answers 503, the log stays small.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import racks_topology
from .daemon import Daemon, running
from .wait import wait_until

pytestmark = pytest.mark.daemons

READS = ["/hosts", "/topology", "/addresses", "/blocks", "/networks", "/watch?since=0&timeout=0"]
NASTY = st.sampled_from(
    [
        "\ud800",
        "a\x00b",
        "a\nb",
        "\ufeffh1",
        "h\u202e1",
        "a/b",
        "10.1.0.5",
        'x";local as 65101;',
        "H1",
        "-h",
        "h" * 300,
        "",
        " h1",
        "é",
        "..",
    ]
)
TEXT = st.one_of(NASTY, st.text(max_size=20), st.text(alphabet="az09-./:_ ", max_size=12))


def post_raw(client: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    """JSON as any client may write it: escapes for what UTF-8 cannot carry (surrogates)."""
    data = json.dumps(body).encode()  # ensure_ascii: "\ud800" travels as an escape
    return client.request(method, path, content=data, headers={"content-type": "application/json"})


def raw_quote(text: str) -> str:
    """Percent-encoding of any text, lone surrogates included (as a hostile client may)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def assert_reads_answer(client: httpx.Client) -> None:
    for path in READS:
        answer = client.get(path)
        assert answer.status_code < 500, f"GET {path}: {answer.status_code} {answer.text[:300]}"
        if answer.status_code == 200:
            answer.json()


def test_hostile_names_and_labels_never_fail_or_poison(tmp_path: Path) -> None:
    with running(tmp_path / "data") as daemon, daemon.client() as c:
        assert c.post("/topology", json=racks_topology(2)).status_code == 200
        assert (
            c.post(
                "/hosts", json={"name": "h1", "ip": "192.168.0.1", "tags": {"rack": "rack-1"}}
            ).status_code
            == 200
        )
        statuses: set[int] = set()

        @settings(
            max_examples=150,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            name=TEXT,
            label_key=TEXT,
            label_value=TEXT,
            tenant=TEXT,
            kind=st.sampled_from(["host", "address", "tags", "release", "get"]),
        )
        def attack(name: str, label_key: str, label_value: str, tenant: str, kind: str) -> None:
            if kind == "host":
                body = {"name": name, "ip": "192.168.0.9", "tags": {label_key: label_value}}
                answer = post_raw(c, "POST", "/hosts", body)
            elif kind == "address":
                body = {"name": name, "host": "h1", "tenant": tenant, "segment": label_value}
                answer = post_raw(c, "POST", "/address", body)
            elif kind == "tags":
                answer = post_raw(c, "PUT", "/hosts/h1/tags", {label_key: label_value})
            elif kind == "release":
                answer = c.request("DELETE", f"/address?name={raw_quote(name)}")
            else:
                answer = c.get(f"/hosts/{raw_quote(name) or 'x'}")
            statuses.add(answer.status_code)
            assert answer.status_code < 500, (kind, name, answer.text[:300])
            error = answer.json().get("error") if answer.status_code >= 400 else None
            if error is not None:
                assert error["message"], answer.text
                # Refused by a request model: each problem names its field.
                assert all(d["path"] for d in error["details"] if isinstance(d, dict))

        attack()
        assert_reads_answer(c)
        assert 422 in statuses
        # Whatever was accepted is still good after a restart (the store replays it).
        names = [h["name"] for h in c.get("/hosts").json()["hosts"]]
    daemon.start()
    try:
        with daemon.client() as c:
            assert [h["name"] for h in c.get("/hosts").json()["hosts"]] == names
            assert_reads_answer(c)
            publisher_renders(daemon, tmp_path)
    finally:
        daemon.stop()


def publisher_renders(daemon: Daemon, tmp_path: Path) -> None:
    """The router publisher reads everything the hostile round left and renders a config."""
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "romana-publisher"),
            "--router",
            "rack-1",
            "--url",
            daemon.url,
            "--output",
            str(tmp_path / "router.conf"),
            "--local-as",
            "65101",
            "--peer-as",
            "65001",
            "--once",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "protocol bgp host_h1" in (tmp_path / "router.conf").read_text()


def test_hostile_maps_are_refused_with_422(tmp_path: Path) -> None:
    with running(tmp_path / "data") as daemon, daemon.client() as c:
        deep: dict[str, Any] = {"name": "g0", "groups": []}
        for level in range(1, 150):
            deep = {"name": f"g{level}", "groups": [deep]}
        maps = [
            {
                "networks": [{"name": "n", "cidr": "10.1.0.0/16"}],
                "topologies": [{"networks": ["n"], "map": [deep]}],
            },
            {
                "networks": [{"name": "n", "cidr": "10.1.0.0/16"}],
                "topologies": [
                    {
                        "networks": ["n"],
                        "map": [
                            {"name": "r\ud800", "assignment": {"\ud800": "\u202e"}, "groups": []}
                        ],
                    }
                ],
            },
            {
                "networks": [{"name": "n/x", "cidr": "10.1.0.0/16", "tenants": ["A B"]}],
                "topologies": [
                    {
                        "networks": ["n/x"],
                        "map": [{"name": "r1", "hosts": [{"name": "a/b", "ip": "192.168.0.1"}]}],
                    }
                ],
            },
            {
                "networks": [{"name": "n", "cidr": "10.1.0.0/8"}],
                "topologies": [
                    {
                        "networks": ["n"],
                        "map": [{"name": f"r{i}", "groups": []} for i in range(20_000)],
                    }
                ],
            },
            {"\ud800": 1},
            nested_lists(70),
        ]
        for document in maps:
            answer = post_raw(c, "POST", "/topology", document)
            assert answer.status_code in (400, 413, 422), answer.text[:500]
            assert answer.json()["error"]["message"]
        assert c.get("/topology").status_code == 404  # nothing was applied
        assert_reads_answer(c)
        # A JSON document nested beyond any parser's patience: refused, not a 500.
        body = b"[" * 100_000 + b"]" * 100_000
        answer = c.post("/topology", content=body, headers={"content-type": "application/json"})
        assert answer.status_code in (400, 413, 422)


def nested_lists(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def test_a_host_ip_inside_a_pod_network_is_refused(tmp_path: Path) -> None:
    with running(tmp_path / "data") as daemon, daemon.client() as c:
        c.post("/topology", json=racks_topology(2))
        answer = c.post("/hosts", json={"name": "h1", "ip": "10.1.0.9", "tags": {}})
        assert answer.status_code == 422
        assert "inside pod network" in answer.json()["error"]["message"]


def answer_of(s: socket.socket) -> bytes:
    """What the server sent before closing (b"" if nothing; a reset counts as closed)."""
    chunks = []
    try:
        while chunk := s.recv(4096):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def _idle(port: int, count: int) -> list[socket.socket]:
    out = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        out.append(s)
    return out


def test_idle_and_slow_connections_are_cut_and_the_cap_holds(tmp_path: Path) -> None:
    with running(tmp_path / "data", "--max-connections", "50", "--header-timeout", "1") as daemon:
        slow = socket.create_connection(("127.0.0.1", daemon.port))
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
        # A body that trickles: the head is in, the body must follow within 3 x 1 s.
        trickle = socket.create_connection(("127.0.0.1", daemon.port))
        trickle.sendall(
            b"POST /address HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100000\r\n\r\n{"
        )
        # An endless header: cut at 64 KiB with a 431, not buffered.
        endless = socket.create_connection(("127.0.0.1", daemon.port))
        endless.sendall(b"GET /healthz HTTP/1.1\r\nX-Pad: ")
        for _ in range(20):
            try:
                endless.sendall(b"a" * 8192)
            except OSError:
                break  # closed by romanad
        idle = _idle(daemon.port, 120)  # nothing sent: 47 held, the rest refused at once
        try:
            answers = []
            for s in idle:
                s.settimeout(5)
                answers.append(answer_of(s))
            refused = sum(a.startswith(b"HTTP/1.1 503") for a in answers)
            cut = sum(a == b"" for a in answers)
            # 50 held until the header timeout (1 s) cut them, the other 70 refused at once.
            assert refused + cut == len(idle) and refused >= 60 and cut >= 37, (refused, cut)
            slow.settimeout(5)
            assert answer_of(slow) == b"", "a slow request outlived the header timeout"
            endless.settimeout(5)
            assert answer_of(endless).startswith(b"HTTP/1.1 431")
            trickle.settimeout(6)
            assert answer_of(trickle) == b"", "a trickling body outlived the body timeout"
            wait_until(
                lambda: httpx.get(f"{daemon.url}/healthz", timeout=2).status_code == 200,
                10,
                what="service again once the idle connections are cut",
            )
        finally:
            for s in [*idle, slow, trickle, endless]:
                s.close()
        lines = daemon.log.read_text().splitlines()
    assert len(lines) < 40, "\n".join(lines[-20:])
    assert any("connection limit reached" in line for line in lines)
