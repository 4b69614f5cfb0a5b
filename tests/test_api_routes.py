"""Routes over the API and the CLI, and romanad's Unix socket, against a real romanad."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from romana.api.client import RomanaClient
from romana.errors import InvalidRequest, NotFound

from .conftest import racks_topology
from .daemon import Daemon, running
from .test_cli_client import romana

pytestmark = pytest.mark.daemons


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("routes")
    topology = base / "racks.json"
    topology.write_text(json.dumps(racks_topology(2)))
    with running(
        base / "data", "--topology", str(topology), "--listen", f"unix:{base / 'romanad.sock'}"
    ) as d:
        with RomanaClient(d.url) as c:
            for i in (1, 2, 3):
                c.add_host(f"h{i}", f"192.168.0.{i}", {"rack": f"rack-{1 if i < 3 else 2}"})
            c.allocate("a", "h1")
            c.allocate("b", "h2")
        yield d


def test_host_routes_have_the_documented_wire_shape(daemon: Daemon) -> None:
    with RomanaClient(daemon.url) as c:
        result = c.routes(host="h1")
    assert len(result["store_id"]) == 32
    assert result == {
        "vantage": "host:h1",
        "default": "group:rack-1",
        "revision": result["revision"],
        "store_id": result["store_id"],
        "routes": [
            {"prefix": "10.1.0.0/18", "via": "local", "gateway": None},
            {"prefix": "10.1.64.0/18", "via": "host:h2", "gateway": "192.168.0.2"},
        ],
    }


def test_group_routes_accept_paths_and_the_root(daemon: Daemon) -> None:
    with RomanaClient(daemon.url) as c:
        assert c.routes(group="/")["routes"] == [
            {"prefix": "10.1.0.0/17", "via": "group:rack-1", "gateway": None},
            {"prefix": "10.1.128.0/17", "via": "group:rack-2", "gateway": None},
        ]
        rack = c.routes(group="rack-1")
        assert (rack["vantage"], rack["default"]) == ("group:rack-1", "group:/")
        assert [r["via"] for r in rack["routes"]] == ["host:h1", "host:h2"]
        with pytest.raises(NotFound, match='no group "rack-7"'):
            c.routes(group="rack-7")
        with pytest.raises(NotFound, match='no host "zz"'):
            c.routes(host="zz")
        with pytest.raises(InvalidRequest, match="exactly one"):
            c.routes(host="h1", group="rack-1")


def test_unix_socket_serves_the_same_api(daemon: Daemon) -> None:
    sock = daemon.data_dir.parent / "romanad.sock"
    with RomanaClient(f"unix:{sock}") as c:
        assert c.routes(host="h2")["vantage"] == "host:h2"
        assert c.health()["status"] == "ok"


def test_summary_counts_updates(daemon: Daemon) -> None:
    with RomanaClient(daemon.url) as c:
        rows = {d["vantage"]: d for d in c.routes_summary()["devices"]}
    assert rows["host:h3"]["routes"] == 0
    assert rows["host:h1"]["routes"] == 2 and rows["host:h1"]["next_hops"] == 2
    assert rows["group:/"]["routes"] == 2


def test_cli_shows_routes_and_rejects_ambiguous_requests(daemon: Daemon) -> None:
    out = romana("routes", "--host", "h1", "--url", daemon.url)
    assert out.returncode == 0, out.stderr
    assert "10.1.64.0/18" in out.stdout and "192.168.0.2" in out.stdout
    out = romana("routes", "--group", "/", "--json", "--url", daemon.url)
    assert json.loads(out.stdout)["vantage"] == "group:/"
    out = romana("routes", "summary", "--url", daemon.url)
    assert "group:rack-1" in out.stdout
    assert romana("routes", "--url", daemon.url).returncode == 2
    out = romana("routes", "--group", "nope", "--url", daemon.url)
    assert out.returncode == 1 and 'no group "nope"' in out.stderr


def test_verify_forwards_every_address_from_every_host(daemon: Daemon) -> None:
    with RomanaClient(daemon.url) as c:
        report = c.routes_verify()
    assert report["ok"] and report["failures"] == []
    assert report["addresses"] >= 2 and report["sources"] == 3
    assert report["walks"] == report["blocks"] * 3
    rows = {d["vantage"]: d for d in report["devices"]}
    assert rows["group:rack-1"] == {"vantage": "group:rack-1", "routes": 2, "next_hops": 2}
    out = romana("routes", "verify", "--url", daemon.url)
    assert out.returncode == 0, out.stderr
    assert "forwarded from 3 hosts" in out.stdout and ": ok" in out.stdout
    out = romana("routes", "verify", "--json", "--url", daemon.url)
    assert json.loads(out.stdout)["ok"] is True


def test_socket_file_is_removed_on_clean_stop(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    d = Daemon(tmp_path / "data", "--listen", f"unix:{sock}").start()
    assert sock.is_socket()
    assert d.stop() == 0
    assert not sock.exists()


def test_watch_with_a_limit_continues_after_the_last_fact_returned(daemon: Daemon) -> None:
    with RomanaClient(daemon.url) as c:
        for i in range(3):
            c.allocate(f"w{i}", "h3")
        first = c.watch(since=0, timeout=0, limit=2)
        assert [f["revision"] for f in first["changes"]] == [1, 2]
        assert first["revision"] == 2  # not the head: the client would skip facts
        rest = c.watch(since=first["revision"], timeout=0, limit=10_000)
        assert rest["changes"][0]["revision"] == 3
        assert rest["revision"] == rest["changes"][-1]["revision"]
