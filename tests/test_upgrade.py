"""Data written before host areas existed loads and keeps serving, in a real romanad.

``data/pre-areas.json`` was written by the release before areas (commit f256aa1): its fact
log and its version-1 snapshot for two racks, four hosts whose blocks interleave (that
release gave out the lowest free block of the group), three tenants, some releases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from romana.api.client import RomanaClient
from romana.store.sqlite import SqliteStore

from .daemon import running

pytestmark = pytest.mark.daemons

OLD = json.loads((Path(__file__).parent / "data" / "pre-areas.json").read_text())
# Written by the release before pods were recorded (commit 14da496): endpoints with labels
# and ports, a tenant's labels, a labeled address released; snapshot version 3.
PRE_PODS: dict[str, Any] = {
    "facts": [
        {
            "kind": "topology_applied",
            "topology": {
                "networks": [{"name": "net", "cidr": "10.1.0.0/16", "block_mask": 29}],
                "topologies": [
                    {
                        "networks": ["net"],
                        "map": [
                            {"name": "rack-1", "groups": [], "assignment": {"rack": "rack-1"}},
                            {"name": "rack-2", "groups": [], "assignment": {"rack": "rack-2"}},
                        ],
                    }
                ],
            },
            "hosts": [],
            "blackouts": {},
        },
        {
            "kind": "host_added",
            "name": "h0",
            "ip": "192.168.0.1",
            "labels": {"rack": "rack-1"},
            "placements": {"net": "rack-1"},
        },
        {
            "kind": "host_added",
            "name": "h1",
            "ip": "192.168.0.2",
            "labels": {"rack": "rack-2"},
            "placements": {"net": "rack-2"},
        },
        {"kind": "area_reserved", "network": "net", "cidr": "10.1.0.0/17", "host": "h0"},
        {
            "kind": "block_assigned",
            "network": "net",
            "cidr": "10.1.0.0/29",
            "host": "h0",
            "tenant": "shop",
            "segment": "",
        },
        {"kind": "address_allocated", "name": "shop:web:eth0", "network": "net", "ip": "10.1.0.0"},
        {
            "kind": "endpoint_labeled",
            "name": "shop:web:eth0",
            "labels": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "protocol": "tcp"}],
        },
        {"kind": "area_reserved", "network": "net", "cidr": "10.1.128.0/17", "host": "h1"},
        {
            "kind": "block_assigned",
            "network": "net",
            "cidr": "10.1.128.0/29",
            "host": "h1",
            "tenant": "shop",
            "segment": "",
        },
        {"kind": "address_allocated", "name": "shop:db:eth0", "network": "net", "ip": "10.1.128.0"},
        {"kind": "endpoint_labeled", "name": "shop:db:eth0", "labels": {"app": "db"}, "ports": []},
        {
            "kind": "block_assigned",
            "network": "net",
            "cidr": "10.1.0.8/29",
            "host": "h0",
            "tenant": "t1",
            "segment": "",
        },
        {"kind": "address_allocated", "name": "plain", "network": "net", "ip": "10.1.0.8"},
        {
            "kind": "block_assigned",
            "network": "net",
            "cidr": "10.1.128.8/29",
            "host": "h1",
            "tenant": "t2",
            "segment": "",
        },
        {"kind": "address_allocated", "name": "gone", "network": "net", "ip": "10.1.128.8"},
        {"kind": "endpoint_labeled", "name": "gone", "labels": {"app": "x"}, "ports": []},
        {"kind": "address_released", "name": "gone", "network": "net", "ip": "10.1.128.8"},
        {"kind": "block_freed", "network": "net", "cidr": "10.1.128.8/29"},
        {"kind": "tenant_labeled", "tenant": "shop", "labels": {"env": "prod"}},
    ],
    "snapshot": {
        "format": "romana-ipam-snapshot",
        "version": 3,
        "revision": 19,
        "topology": {
            "networks": [{"name": "net", "cidr": "10.1.0.0/16", "block_mask": 29}],
            "topologies": [
                {
                    "networks": ["net"],
                    "map": [
                        {"name": "rack-1", "groups": [], "assignment": {"rack": "rack-1"}},
                        {"name": "rack-2", "groups": [], "assignment": {"rack": "rack-2"}},
                    ],
                }
            ],
        },
        "hosts": [
            {
                "name": "h0",
                "ip": "192.168.0.1",
                "labels": {"rack": "rack-1"},
                "placements": {"net": "rack-1"},
            },
            {
                "name": "h1",
                "ip": "192.168.0.2",
                "labels": {"rack": "rack-2"},
                "placements": {"net": "rack-2"},
            },
        ],
        "blackouts": {},
        "areas": [
            {"network": "net", "host": "h0", "cidr": "10.1.0.0/17"},
            {"network": "net", "host": "h1", "cidr": "10.1.128.0/17"},
        ],
        "blocks": [
            {
                "network": "net",
                "cidr": "10.1.0.0/29",
                "host": "h0",
                "tenant": "shop",
                "segment": "",
            },
            {"network": "net", "cidr": "10.1.0.8/29", "host": "h0", "tenant": "t1", "segment": ""},
            {
                "network": "net",
                "cidr": "10.1.128.0/29",
                "host": "h1",
                "tenant": "shop",
                "segment": "",
            },
        ],
        "addresses": [
            ["shop:web:eth0", "net", "10.1.0.0"],
            ["plain", "net", "10.1.0.8"],
            ["shop:db:eth0", "net", "10.1.128.0"],
        ],
        "policy": {
            "tenants": {"shop": {"env": "prod"}},
            "endpoints": [
                ["shop:db:eth0", {"app": "db"}, []],
                [
                    "shop:web:eth0",
                    {"app": "web"},
                    [{"name": "http", "port": 80, "protocol": "tcp"}],
                ],
            ],
            "policies": [],
        },
    },
}


def old_addresses() -> dict[str, str]:
    return {name: ip for name, _, ip in OLD["snapshot"]["addresses"]}


def check_serving(client: RomanaClient) -> None:
    now = {a["name"]: a["ip"] for a in client.addresses()["addresses"]}
    assert now == old_addresses()  # every allocation kept, same IPs
    assert all(not h["groups"]["pods"]["areas"] for h in client.hosts()["hosts"])
    assert client.routes_verify()["ok"]
    # The interleaved old blocks keep a route each: nothing was moved.
    tor = client.routes(group="rack-1")["routes"]
    assert len(tor) > 2
    # New blocks go to areas carved from the free room; old blocks keep their routes.
    fresh = client.allocate("new", "h0", "t-new")
    areas = client.host("h0")["groups"]["pods"]["areas"]
    assert len(areas) == 1
    assert client.routes_verify()["ok"]
    assert fresh["block"] not in {b["cidr"] for b in OLD["snapshot"]["blocks"]}


@pytest.mark.parametrize("form", ["facts", "snapshot"])
def test_a_data_directory_from_before_areas_loads_and_serves(tmp_path: Path, form: str) -> None:
    data = tmp_path / "data"
    with SqliteStore(data) as store:
        facts: list[dict[str, Any]] = OLD["facts"]
        store.append(facts, 0)
        if form == "snapshot":  # a version-1 snapshot, and the facts before it compacted
            store.save_snapshot(len(facts), OLD["snapshot"])
            store.compact(len(facts))
    assert OLD["snapshot"]["version"] == 1
    with running(data) as daemon, RomanaClient(daemon.url) as client:
        assert client.health()["revision"] == len(OLD["facts"])
        check_serving(client)


@pytest.mark.parametrize("form", ["facts", "snapshot"])
def test_a_data_directory_from_before_pods_loads_and_serves(tmp_path: Path, form: str) -> None:
    data = tmp_path / "data"
    facts: list[dict[str, Any]] = PRE_PODS["facts"]
    with SqliteStore(data) as store:
        store.append(facts, 0)
        if form == "snapshot":
            store.save_snapshot(len(facts), PRE_PODS["snapshot"])
            store.compact(len(facts))
    assert PRE_PODS["snapshot"]["version"] == 3
    with running(data) as daemon, RomanaClient(daemon.url) as client:
        assert client.health()["revision"] == len(facts)
        web = client.address("shop:web:eth0")
        assert web["labels"] == {"app": "web"} and web["ports"][0]["port"] == 80
        assert all("pod" not in a for a in client.addresses()["addresses"])
        assert client.tenant("shop")["labels"] == {"env": "prod"}
        pod = {"namespace": "shop", "name": "api-0", "uid": ""}
        assert client.allocate("shop:api:eth0", "h1", "shop", pod=pod)["pod"] == pod
        labeled = client.label_endpoint("shop:web:eth0", {"app": "web", "v": "2"})
        assert labeled["ports"] == web["ports"] and "pod" not in labeled
