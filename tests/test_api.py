"""The romanad REST API, against a real daemon process on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .conftest import EXAMPLES
from .daemon import Daemon, running
from .wait import wait_until

pytestmark = pytest.mark.daemons

TOPOLOGY = str(EXAMPLES / "datacenter-4-racks.json")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("api") / "data", "--topology", TOPOLOGY) as d:
        with d.client() as c:
            for i in range(1, 5):
                rack = f"rack-{(i - 1) // 2 + 1}"
                r = c.post(
                    "/hosts",
                    json={
                        "name": f"h{i}",
                        "ip": f"192.168.0.{i}",
                        "tags": {"my-location-tag": rack},
                    },
                )
                assert r.status_code == 200, r.text
        yield d


@pytest.fixture
def client(daemon: Daemon) -> Iterator[httpx.Client]:
    with daemon.client() as c:
        yield c


def err(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_topology_is_annotated(client: httpx.Client) -> None:
    doc = client.get("/topology").json()
    racks = doc["topologies"][0]["map"]
    assert [g["cidr"] for g in racks] == [
        "10.1.0.0/18",
        "10.1.64.0/18",
        "10.1.128.0/18",
        "10.1.192.0/18",
    ]
    assert racks[0]["hosts"] == [
        {"name": "h1", "ip": "192.168.0.1"},
        {"name": "h2", "ip": "192.168.0.2"},
    ]


def test_hosts_answer_with_group_path_and_cidr(client: httpx.Client) -> None:
    r = client.post(
        "/hosts", json={"name": "h9", "ip": "192.168.0.9", "tags": {"my-location-tag": "rack-4"}}
    )
    assert r.json()["groups"] == {
        "romana-network": {"group": "rack-4", "cidr": "10.1.192.0/18", "areas": []}
    }
    names = [h["name"] for h in client.get("/hosts").json()["hosts"]]
    assert "h9" in names
    assert err(client.put("/hosts/h9/tags", json={"my-location-tag": "rack-1"})) == (
        409,
        "conflict",
    )
    assert client.put("/hosts/h9/tags", json={"my-location-tag": "rack-4", "x": "y"}).json()[
        "labels"
    ] == {"my-location-tag": "rack-4", "x": "y"}
    assert client.delete("/hosts/h9").status_code == 200
    assert err(client.delete("/hosts/h9")) == (404, "not_found")
    assert err(client.post("/hosts", json={"name": "bad", "ip": "192.168.0.300"})) == (
        422,
        "invalid",
    )
    assert err(
        client.post(
            "/hosts", json={"name": "x", "ip": "192.168.7.7", "tags": {"my-location-tag": "rack-9"}}
        )
    ) == (422, "invalid")


def test_allocate_show_list_release(client: httpx.Client) -> None:
    a = client.post("/address", json={"name": "pod-a", "host": "h3", "tenant": "t1"}).json()
    assert (a["ip"], a["block"]) == ("10.1.64.0", "10.1.64.0/29")
    assert client.get("/address/pod-a").json() == a
    listed = client.get("/addresses", params={"host": "h3"}).json()["addresses"]
    assert [x["name"] for x in listed] == ["pod-a"]
    blocks = client.get("/blocks").json()
    assert {
        "cidr": "10.1.64.0/29",
        "network": "romana-network",
        "group": "rack-2",
        "host": "h3",
        "tenant": "t1",
        "segment": "",
        "allocated_ip_count": 1,
    } in blocks["blocks"]
    assert blocks["revision"] > 0
    assert client.get("/networks/romana-network/blocks").json()["blocks"] == blocks["blocks"]
    assert err(client.post("/address", json={"name": "pod-a", "host": "h3"})) == (409, "conflict")
    assert client.delete("/address", params={"addressName": "10.1.64.0"}).json()["name"] == "pod-a"
    assert err(client.get("/address/pod-a")) == (404, "not_found")


def test_specific_address(client: httpx.Client) -> None:
    r = client.post("/address", json={"name": "fixed", "host": "h1", "ip": "10.1.0.77"})
    assert r.json()["ip"] == "10.1.0.77"
    assert err(client.post("/address", json={"name": "f2", "host": "h1", "ip": "10.1.0.77"})) == (
        409,
        "conflict",
    )
    assert err(client.post("/address", json={"name": "f3", "host": "h1", "ip": "10.1.64.9"})) == (
        409,
        "conflict",
    )
    client.delete("/address", params={"name": "fixed"})


def test_blackouts(client: httpx.Client) -> None:
    path = "/networks/romana-network/blackout"
    assert client.post(path, json={"cidr": "10.1.128.0/24"}).json()["blackouts"] == [
        "10.1.128.0/24"
    ]
    assert client.get(path).json()["blackouts"] == ["10.1.128.0/24"]
    assert err(client.post(path, json={"cidr": "10.1.0.0/16"})) == (422, "invalid")
    assert client.request("DELETE", path, json={"cidr": "10.1.128.0/24"}).json()["blackouts"] == []
    assert err(client.request("DELETE", path, json={"cidr": "10.1.128.0/24"})) == (404, "not_found")
    assert err(client.get("/networks/nope/blackout")) == (404, "not_found")


def test_bad_input_gets_4xx_with_a_message(client: httpx.Client) -> None:
    r = client.post("/address", content=b'{"name": ', headers={"content-type": "application/json"})
    assert err(r) == (400, "invalid") and "malformed JSON" in r.json()["error"]["message"]
    r = client.post("/address", json={"name": "x", "host": "h1", "tenatn": "t"})
    assert err(r) == (422, "invalid")
    assert r.json()["error"]["details"][0]["path"] == "body.tenatn"
    assert err(client.post("/address", json={"name": 5, "host": "h1"})) == (422, "invalid")
    assert err(
        client.post(
            "/address", content=b"x" * (1 << 20 + 1), headers={"content-type": "application/json"}
        )
    ) == (413, "too_large")
    chunks = iter([b'{"name": "', b"x" * (1 << 20), b'"}'])  # chunked: no Content-Length
    assert err(
        client.post("/address", content=chunks, headers={"content-type": "application/json"})
    ) == (413, "too_large")
    assert err(client.delete("/address")) == (422, "invalid")
    assert err(client.get("/no/such/path")) == (404, "not_found")
    assert err(client.put("/address")) == (405, "method_not_allowed")
    assert err(client.post("/topology", json={"networks": []})) == (422, "invalid")


def test_topology_update_conflict_is_atomic(client: httpx.Client) -> None:
    client.post("/address", json={"name": "keep", "host": "h3", "tenant": "t"})
    doc = json.loads(Path(TOPOLOGY).read_text())
    doc["topologies"][0]["map"] = doc["topologies"][0]["map"] * 1 + [
        {"name": f"rack-{i}", "groups": []} for i in range(5, 9)
    ]
    before = client.get("/topology").json()
    r = client.post("/topology", json=doc)
    assert err(r) == (409, "conflict")
    assert "h3" in json.dumps(r.json()["error"]["details"])
    assert client.get("/topology").json() == before
    client.delete("/address", params={"name": "keep"})


def test_health_metrics_openapi_watch(client: httpx.Client) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["revision"] == health["durable_revision"]
    assert set(health["loops"]) == {"group-commit", "maintenance"}
    assert all(loop["state"] == "running" for loop in health["loops"].values())
    store_id = health["store_id"]
    assert len(store_id) == 32
    client.post("/address", json={"name": "m1", "host": "h4", "tenant": "t"})
    metrics = client.get("/metrics").text
    assert 'romana_blocks_in_use{group="rack-2",network="romana-network"} 1.0' in metrics
    assert "romana_allocations_total" in metrics and "romana_request_seconds_bucket" in metrics
    assert "romana_free_addresses" in metrics
    assert "romana_store_appends_total" in metrics and "romana_store_behind 0.0" in metrics
    assert "/address" in client.get("/openapi.json").json()["paths"]
    since = client.get("/healthz").json()["revision"]
    empty = client.get("/watch", params={"since": since, "timeout": 0.2}).json()
    assert empty == {"revision": since, "store_id": store_id, "changes": []}
    client.delete("/address", params={"name": "m1"})
    feed = client.get("/watch", params={"since": since, "timeout": 5}).json()
    assert [c["kind"] for c in feed["changes"]] == ["address_released", "block_freed"]
    assert [c["revision"] for c in feed["changes"]] == [since + 1, since + 2]


def test_token_protects_mutations(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    args = ("--topology", TOPOLOGY, "--token-file", str(token))
    with running(tmp_path / "data", *args) as d, d.client() as c:
        body = {"name": "h", "ip": "192.168.0.1", "tags": {"my-location-tag": "rack-1"}}
        assert err(c.post("/hosts", json=body)) == (401, "unauthorized")
        assert err(c.post("/hosts", json=body, headers={"Authorization": "Bearer nope"})) == (
            401,
            "unauthorized",
        )
        assert c.get("/hosts").status_code == 200  # reads stay open
        ok = c.post("/hosts", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_second_daemon_on_same_data_dir_is_refused(tmp_path: Path) -> None:
    with running(tmp_path / "data", "--topology", TOPOLOGY):
        second = Daemon(tmp_path / "data")
        with pytest.raises(RuntimeError, match="is in use by another process"):
            second.start()


def test_restart_restores_exact_state(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running(data, "--topology", TOPOLOGY) as d, d.client() as c:
        c.post(
            "/hosts",
            json={"name": "h1", "ip": "192.168.0.1", "tags": {"my-location-tag": "rack-3"}},
        )
        for i in range(20):
            c.post("/address", json={"name": f"p{i}", "host": "h1", "tenant": f"t{i % 3}"})
        c.delete("/address", params={"name": "p5"})
        before = (c.get("/addresses").json(), c.get("/blocks").json(), c.get("/hosts").json())
        assert d.stop() == 0  # SIGTERM: clean exit
    with running(data) as d, d.client() as c:
        after = (c.get("/addresses").json(), c.get("/blocks").json(), c.get("/hosts").json())
        assert after == before


def test_200_parallel_allocations_get_200_distinct_addresses(tmp_path: Path) -> None:
    with running(tmp_path / "data", "--topology", TOPOLOGY) as d:
        with d.client() as c:
            for i in range(4):
                c.post(
                    "/hosts",
                    json={
                        "name": f"h{i}",
                        "ip": f"192.168.0.{i + 1}",
                        "tags": {"my-location-tag": f"rack-{i + 1}"},
                    },
                )

        def allocate(i: int) -> str:
            with d.client() as c:
                r = c.post(
                    "/address", json={"name": f"p{i}", "host": f"h{i % 4}", "tenant": f"t{i % 5}"}
                )
                assert r.status_code == 200, r.text
                return str(r.json()["ip"])

        with ThreadPoolExecutor(32) as pool:
            ips = list(pool.map(allocate, range(200)))
        assert len(set(ips)) == 200
        with d.client() as c:
            assert len(c.get("/addresses").json()["addresses"]) == 200


def test_watch_behind_compaction_gets_resync_and_snapshots_restore(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ("--topology", TOPOLOGY, "--snapshot-every", "20", "--keep-history", "5")
    with running(data, *args) as d, d.client() as c:
        c.post(
            "/hosts",
            json={"name": "h1", "ip": "192.168.0.1", "tags": {"my-location-tag": "rack-1"}},
        )
        for i in range(60):
            assert c.post("/address", json={"name": f"p{i}", "host": "h1"}).status_code == 200
        head = c.get("/healthz").json()["durable_revision"]
        # The maintenance loop snapshots and compacts within a second or so.
        wait_until(
            lambda: c.get("/watch", params={"since": 0, "timeout": 0}).status_code == 410,
            10,
            what="the snapshot and the compaction",
            interval=0.05,
        )
        stale = c.get("/watch", params={"since": 0, "timeout": 0})
        assert err(stale) == (410, "resync")
        assert stale.json()["revision"] == head
        recent = c.get("/watch", params={"since": head - 2, "timeout": 0}).json()
        assert [ch["revision"] for ch in recent["changes"]] == [head - 1, head]
        before = c.get("/addresses").json()
    with running(data, *args) as d, d.client() as c:
        assert '"from_snapshot": true' in d.log.read_text()  # started from the snapshot
        assert c.get("/addresses").json() == before
        assert c.post("/address", json={"name": "after", "host": "h1"}).status_code == 200


def test_lists_come_in_pages_and_the_client_reads_them_all(tmp_path: Path) -> None:
    from romana.api.client import RomanaClient

    with running(tmp_path / "data", "--topology", str(EXAMPLES / "datacenter-4-racks.json")) as d:
        with RomanaClient(d.url) as client:
            for h in range(5):
                client.add_host(f"p{h}", f"192.168.7.{h + 1}", {"my-location-tag": "rack-1"})
            for i in range(25):
                client.allocate(f"pod-{i:02d}", f"p{i % 5}", f"t{i % 3}")
            expected = sorted(a["ip"] for a in client.addresses()["addresses"])
            assert len(expected) == 25
        with d.client() as c:
            seen: list[str] = []
            cursor = None
            pages = 0
            while True:
                params = {"limit": 10, **({"after": cursor} if cursor else {})}
                page = c.get("/addresses", params=params).json()
                seen += [a["ip"] for a in page["addresses"]]
                pages += 1
                cursor = page["next"]
                if cursor is None:
                    break
            assert pages == 3 and seen == sorted(
                seen, key=lambda ip: tuple(map(int, ip.split(".")))
            )
            assert sorted(seen) == expected  # every address once
            hosts = c.get("/hosts", params={"limit": 2}).json()
            assert [h["name"] for h in hosts["hosts"]] == ["p0", "p1"] and hosts["next"] == "p1"
            rest = c.get("/hosts", params={"limit": 10, "after": "p1"}).json()
            assert [h["name"] for h in rest["hosts"]] == ["p2", "p3", "p4"] and rest["next"] is None
            blocks = c.get("/blocks", params={"limit": 1}).json()
            second = c.get("/blocks", params={"limit": 1, "after": blocks["next"]}).json()
            assert blocks["blocks"][0]["cidr"] == blocks["next"] != second["blocks"][0]["cidr"]
            assert c.get("/addresses", params={"after": "nope"}).status_code == 422
            assert c.get("/hosts", params={"limit": 0}).status_code == 422
