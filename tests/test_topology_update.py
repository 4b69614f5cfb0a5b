"""Applying a new topology keeps every allocation, or fails atomically naming what breaks."""

from __future__ import annotations

import copy

import pytest

from romana.errors import TopologyConflict
from romana.ipam import Engine

from .conftest import racks_topology


def populated() -> Engine:
    engine = Engine()
    engine.apply_topology(racks_topology(racks=4))
    engine.add_host("h1", "192.168.0.1", {"rack": "rack-1"})
    engine.add_host("h2", "192.168.0.2", {"rack": "rack-2"})
    engine.allocate("a", "h1", "t")
    engine.allocate("b", "h2", "t")
    return engine


def test_compatible_update_keeps_ips_hosts_and_owners() -> None:
    engine = populated()
    before = [a.to_json() for a in engine.addresses()]
    doc = racks_topology(racks=4)
    doc["topologies"][0]["map"][0]["routing"] = "block-host-routes"
    doc["networks"].append({"name": "extra", "cidr": "10.9.0.0/16"})
    doc["topologies"][0]["networks"].append("extra")
    engine.apply_topology(doc)
    assert [a.to_json() for a in engine.addresses()] == before
    assert engine.host("h1").groups["extra"] == {
        "group": "rack-1",
        "cidr": "10.9.0.0/18",
        "areas": [],
    }
    assert engine.host("h1").groups["net"]["areas"] == ["10.1.0.0/18"]  # areas kept too
    assert engine.allocate("c", "h1", "t").ip == "10.1.0.1"  # same block still owned


def test_incompatible_update_fails_atomically_naming_each_casualty() -> None:
    engine = populated()
    snapshot = engine.snapshot()
    doc = racks_topology(racks=8)  # racks become /19s: rack-2 moves to 10.1.32.0/19
    with pytest.raises(TopologyConflict, match="nothing was changed") as info:
        engine.apply_topology(doc)
    assert [str(p) for p in info.value.details] == [
        "hosts.h2: blocks of network net would lie in group rack-3 (10.1.64.0/19), which "
        "the host's labels {'rack': 'rack-2'} do not fit",
    ]
    assert engine.snapshot() == snapshot


def test_block_mask_change_and_dropped_network_are_refused() -> None:
    engine = populated()
    doc = racks_topology(block_mask=28)
    with pytest.raises(TopologyConflict) as info:
        engine.apply_topology(doc)
    assert len(info.value.details) == 2
    assert "would change size to /28" in str(info.value.details[0])
    doc = racks_topology(cidr="10.7.0.0/16")
    with pytest.raises(TopologyConflict, match="cannot keep") as info:
        engine.apply_topology(doc)
    assert "lies in no network of the new map" in str(info.value.details[0])


def test_renaming_networks_and_groups_keeps_allocations_areas_and_blackouts() -> None:
    engine = populated()
    engine.add_blackout("net", "10.1.255.0/24")
    before = {a.name: (a.ip, a.host, a.tenant, a.block) for a in engine.addresses()}
    areas = {h: engine.host(h).groups["net"]["areas"] for h in ("h1", "h2")}
    doc = racks_topology()
    doc["networks"][0]["name"] = "pods"
    doc["topologies"][0]["networks"] = ["pods"]
    for group in doc["topologies"][0]["map"]:
        group["name"] = group["name"].replace("rack-", "row-")
    assert engine.apply_topology(doc) == []
    after = {a.name: (a.ip, a.host, a.tenant, a.block) for a in engine.addresses()}
    assert after == before
    assert {a.network for a in engine.addresses()} == {"pods"}
    assert {h: engine.host(h).groups["pods"]["areas"] for h in ("h1", "h2")} == areas
    assert engine.host("h2").groups["pods"]["group"] == "row-2"
    assert engine.blackouts("pods") == ["10.1.255.0/24"]
    # Owners' blocks keep serving them under the new names; a released block goes back.
    assert engine.allocate("c", "h1", "t").ip == "10.1.0.1"
    engine.release("b")
    assert engine.blocks("pods")[-1].cidr == "10.1.0.0/29"


def test_tenant_restriction_that_excludes_an_owner_is_refused() -> None:
    engine = populated()
    doc = racks_topology()
    doc["networks"][0]["tenants"] = ["someone-else"]
    with pytest.raises(TopologyConflict) as info:
        engine.apply_topology(doc)
    assert "belongs to tenant 't', which network net would no longer allow" in str(
        info.value.details[0]
    )


def test_hosts_without_blocks_are_placed_afresh_and_blackouts_kept() -> None:
    engine = populated()
    engine.add_host("h3", "192.168.0.3", {"rack": "rack-1"})
    engine.add_blackout("net", "10.1.255.0/24")
    doc = copy.deepcopy(racks_topology(racks=4))
    doc["topologies"][0]["map"][0]["assignment"] = {"rack": "rack-1", "gpu": "yes"}
    with pytest.raises(TopologyConflict):  # h1 has blocks in rack-1 and no gpu label
        engine.apply_topology(doc)
    engine.remove_host("h1")
    warnings = engine.apply_topology(doc)
    assert warnings == []
    # h3 has no blocks: it no longer fits rack-1 and is not placed in this network.
    assert engine.host("h3").groups == {}
    assert engine.blackouts("net") == ["10.1.255.0/24"]


def test_update_with_pinned_host_conflicting_ip() -> None:
    engine = populated()
    doc = racks_topology()
    doc["topologies"][0]["map"][0] = {
        "name": "rack-1",
        "assignment": {"rack": "rack-1"},
        "hosts": [{"name": "h1", "ip": "192.168.0.50"}],
    }
    with pytest.raises(TopologyConflict, match="cannot keep") as info:
        engine.apply_topology(doc)
    assert "pins it with IP 192.168.0.50 but it exists with IP 192.168.0.1" in str(
        info.value.details[0]
    )
