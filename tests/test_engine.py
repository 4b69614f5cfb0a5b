"""Allocation semantics: block choice, lowest address first, block return, tenants, blackouts."""

from __future__ import annotations

import pytest

from romana.errors import Conflict, Exhausted, InvalidRequest, NotFound, RomanaError
from romana.ipam import Engine

from .conftest import racks_topology


def test_first_block_of_the_hosts_group_and_lowest_address(racks: Engine) -> None:
    a = racks.allocate("a", "h3", "t1")  # h3 is in rack-2 = 10.1.64.0/18
    assert (a.ip, a.block, a.network, a.host, a.tenant) == (
        "10.1.64.0",
        "10.1.64.0/29",
        "net",
        "h3",
        "t1",
    )
    assert racks.allocate("b", "h3", "t1").ip == "10.1.64.1"


def test_all_addresses_of_a_block_are_usable_then_next_block(racks: Engine) -> None:
    ips = [racks.allocate(f"a{i}", "h1", "t").ip for i in range(9)]
    assert ips == [f"10.1.0.{i}" for i in range(9)]
    assert [b.cidr for b in racks.blocks()] == ["10.1.0.0/29", "10.1.0.8/29"]


def test_owner_is_tenant_and_segment(racks: Engine) -> None:
    racks.allocate("a", "h1", "t1", "s1")
    b = racks.allocate("b", "h1", "t1", "s2")
    c = racks.allocate("c", "h1", "t2", "s1")
    d = racks.allocate("d", "h2", "t1", "s1")  # same rack, other host: its own area
    assert [b.block, c.block, d.block] == ["10.1.0.8/29", "10.1.0.16/29", "10.1.32.0/29"]
    assert racks.allocate("e", "h1", "t1", "s1").block == "10.1.0.0/29"


def test_owned_nonfull_blocks_are_used_lowest_first(racks: Engine) -> None:
    for i in range(10):
        racks.allocate(f"a{i}", "h1", "t")  # fills 10.1.0.0/29, starts 10.1.0.8/29
    racks.release("a2")
    assert racks.allocate("x", "h1", "t").ip == "10.1.0.2"
    assert racks.allocate("y", "h1", "t").ip == "10.1.0.10"


def test_emptied_block_returns_to_pool_and_its_area_keeps_it_for_its_host(racks: Engine) -> None:
    racks.allocate("a", "h1", "t")
    racks.allocate("b", "h2", "t")  # 10.1.32.0/29: h2's area is the rack's upper half
    released = racks.release("a")
    assert released.ip == "10.1.0.0"
    assert [b.cidr for b in racks.blocks()] == ["10.1.32.0/29"]
    assert racks.allocate("c", "h2", "other").block == "10.1.32.8/29"
    assert racks.allocate("d", "h1", "other").block == "10.1.0.0/29"


def test_release_by_ip_and_unknown(racks: Engine) -> None:
    racks.allocate("a", "h1", "t")
    assert racks.release("10.1.0.0").name == "a"
    with pytest.raises(NotFound, match='no address named or numbered "a"'):
        racks.release("a")
    with pytest.raises(NotFound):
        racks.release("10.1.0.0")


def test_names_are_unique(racks: Engine) -> None:
    racks.allocate("pod", "h1", "t")
    with pytest.raises(Conflict, match='"pod" is already allocated'):
        racks.allocate("pod", "h2", "t")
    assert len(racks.addresses()) == 1


def test_unknown_host_and_no_topology() -> None:
    engine = Engine()
    with pytest.raises(NotFound, match="no topology"):
        engine.add_host("h", "192.168.0.1")
    engine.apply_topology(racks_topology())
    with pytest.raises(NotFound, match='host "ghost" not found'):
        engine.allocate("a", "ghost", "t")


def test_exhaustion_of_a_group_is_reported_and_changes_nothing() -> None:
    engine = Engine()
    engine.apply_topology(racks_topology(racks=2, cidr="10.1.0.0/28", block_mask=30))
    engine.add_host("h", "192.168.0.1", {"rack": "rack-1"})
    ips = [engine.allocate(f"a{i}", "h", "t").ip for i in range(8)]
    assert ips == [f"10.1.0.{i}" for i in range(8)]
    revision = engine.revision
    with pytest.raises(Exhausted, match="every block of its groups is in use"):
        engine.allocate("a8", "h", "t")
    assert engine.revision == revision


def test_tenant_restricted_networks_first_then_open_in_definition_order() -> None:
    doc = {
        "networks": [
            {"name": "open1", "cidr": "10.1.0.0/26", "block_mask": 30},
            {"name": "open2", "cidr": "10.2.0.0/24"},
            {"name": "system", "cidr": "10.3.0.0/24", "tenants": ["kube-system"]},
        ],
        "topologies": [
            {"networks": ["open1", "open2", "system"], "map": [{"name": "all", "groups": []}]}
        ],
    }
    engine = Engine()
    engine.apply_topology(doc)
    engine.add_host("h", "192.168.0.1")
    assert engine.allocate("s", "h", "kube-system").network == "system"
    assert engine.allocate("d", "h", "default").network == "open1"
    for i in range(63):
        engine.allocate(f"x{i}", "h", "default")  # fills open1 (64 addresses)
    assert engine.allocate("y", "h", "default").network == "open2"
    with pytest.raises(Conflict, match="not open to tenant"):
        engine.allocate_ip("z", "h", "10.3.0.9", "default")


def test_allocate_specific_ip() -> None:
    engine = Engine()
    engine.apply_topology(racks_topology())
    engine.add_host("h1", "192.168.0.1", {"rack": "rack-1"})
    engine.add_host("h2", "192.168.0.2", {"rack": "rack-1"})
    a = engine.allocate_ip("a", "h1", "10.1.0.21", "t")
    assert (a.ip, a.block) == ("10.1.0.21", "10.1.0.16/29")
    assert engine.allocate("b", "h1", "t").ip == "10.1.0.16"  # its owner's block, lowest free
    with pytest.raises(Conflict, match="already allocated"):
        engine.allocate_ip("c", "h1", "10.1.0.21", "t")
    with pytest.raises(Conflict, match="owned by host h1"):
        engine.allocate_ip("c", "h2", "10.1.0.22", "t")
    with pytest.raises(Conflict, match='outside host "h1"\'s group'):
        engine.allocate_ip("c", "h1", "10.1.64.1", "t")
    with pytest.raises(InvalidRequest, match="in no network"):
        engine.allocate_ip("c", "h1", "10.9.0.1", "t")
    with pytest.raises(InvalidRequest, match="not an IPv4 address"):
        engine.allocate_ip("c", "h1", "10.1.0.x", "t")
    # The automatic allocator never hands out the block taken by the specific request: the
    # largest free runs left beside it become the hosts' areas (10.1.32.0/19 for h2, then
    # 10.1.16.0/20 for h1, whose requested block keeps a route of its own).
    assert engine.allocate("d", "h2", "t").block == "10.1.32.0/29"
    assert engine.allocate("e", "h1", "t2").block == "10.1.16.0/29"
    assert engine.host("h1").groups["net"]["areas"] == ["10.1.16.0/20"]


def test_blackout_is_never_handed_out(racks: Engine) -> None:
    racks.add_blackout("net", "10.1.0.0/30")
    racks.add_blackout("net", "10.1.0.8/29")
    ips = [racks.allocate(f"a{i}", "h1", "t").ip for i in range(5)]
    assert ips == ["10.1.0.4", "10.1.0.5", "10.1.0.6", "10.1.0.7", "10.1.0.16"]
    assert racks.blackouts("net") == ["10.1.0.0/30", "10.1.0.8/29"]
    with pytest.raises(Conflict, match="blacked out"):
        racks.allocate_ip("x", "h1", "10.1.0.1", "t")


def test_blackout_refusals_and_removal(racks: Engine) -> None:
    racks.allocate("a", "h1", "t")
    with pytest.raises(Conflict, match=r"holds 1 allocated address\(es\)") as info:
        racks.add_blackout("net", "10.1.0.0/24")
    assert info.value.details == ["10.1.0.0 (a)"]
    with pytest.raises(InvalidRequest, match="whole network"):
        racks.add_blackout("net", "10.1.0.0/16")
    with pytest.raises(InvalidRequest, match="not inside network"):
        racks.add_blackout("net", "10.2.0.0/24")
    with pytest.raises(NotFound, match='network "nope"'):
        racks.add_blackout("nope", "10.1.0.0/24")
    racks.add_blackout("net", "10.1.0.8/29")
    racks.add_blackout("net", "10.1.0.8/29")  # idempotent
    assert racks.blackouts("net") == ["10.1.0.8/29"]
    racks.allocate("b", "h3", "t")  # block 10.1.64.0/29
    racks.remove_blackout("net", "10.1.0.8/29")
    with pytest.raises(NotFound):
        racks.remove_blackout("net", "10.1.0.8/29")
    assert racks.allocate("c", "h1", "t2").block == "10.1.0.8/29"


def test_blackout_inside_an_assigned_block_fills_it_sooner(racks: Engine) -> None:
    racks.allocate("a", "h1", "t")
    racks.add_blackout("net", "10.1.0.4/30")
    ips = [racks.allocate(f"b{i}", "h1", "t").ip for i in range(4)]
    assert ips == ["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.8"]
    racks.remove_blackout("net", "10.1.0.4/30")
    assert racks.allocate("c", "h1", "t").ip == "10.1.0.4"


def test_remove_host_frees_everything(racks: Engine) -> None:
    for i in range(10):
        racks.allocate(f"a{i}", "h1", f"t{i % 2}")
    racks.allocate("keep", "h2", "t0")
    racks.remove_host("h1")
    assert [a.name for a in racks.addresses()] == ["keep"]
    assert [b.host for b in racks.blocks()] == ["h2"]
    with pytest.raises(NotFound):
        racks.host("h1")
    # Its blocks went back to the pool: the lowest is reused first.
    racks.add_host("h9", "192.168.0.99", {"rack": "rack-1"})
    assert racks.allocate("n", "h9", "t").block == "10.1.0.0/29"


def test_add_host_is_idempotent_and_checks_ip(racks: Engine) -> None:
    revision = racks.revision
    assert racks.add_host("h1", "192.168.0.1", {"rack": "rack-1"}).name == "h1"
    assert racks.revision == revision
    with pytest.raises(Conflict, match="exists with IP"):
        racks.add_host("h1", "192.168.0.77")
    with pytest.raises(Conflict, match='already used by host "h1"'):
        racks.add_host("other", "192.168.0.1", {"rack": "rack-1"})


def test_listing_filters(racks: Engine) -> None:
    racks.allocate("a", "h1", "t1")
    racks.allocate("b", "h3", "t2")
    assert [a.name for a in racks.addresses(host="h3")] == ["b"]
    assert [a.name for a in racks.addresses(tenant="t1")] == ["a"]
    blocks = racks.blocks("net")
    assert blocks[1].to_json() == {
        "cidr": "10.1.64.0/29",
        "network": "net",
        "group": "rack-2",
        "host": "h3",
        "tenant": "t2",
        "segment": "",
        "allocated_ip_count": 1,
    }
    net = racks.networks()[0]
    assert (net["blocks"], net["allocated"], net["free"]) == (2, 2, 65536 - 2)


def test_errors_share_one_hierarchy_with_codes() -> None:
    for cls, code, status in (
        (NotFound, "not_found", 404),
        (Conflict, "conflict", 409),
        (Exhausted, "exhausted", 409),
        (InvalidRequest, "invalid", 422),
    ):
        err = cls("m", ["d"])
        assert isinstance(err, RomanaError)
        assert (err.code, err.http_status) == (code, status)
        assert err.to_json() == {"error": {"code": code, "message": "m", "details": ["d"]}}
