"""Route sets per device: aggregation rules, routing modes, and which devices a change touches."""

from __future__ import annotations

import itertools
from ipaddress import IPv4Network, ip_network
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from romana.errors import InvalidTopology, NotFound
from romana.ipam import Engine
from romana.routes import (
    Route,
    RouteSet,
    RouteTracker,
    blocks_of,
    group_routes,
    host_routes,
    verify,
)
from romana.routes.aggregate import absorb, carve, collapse
from romana.topology import routing_modes, validate

from .conftest import racks_topology


def tracked(doc: dict[str, Any], hosts_per_rack: int = 2) -> tuple[Engine, RouteTracker]:
    engine = Engine()
    engine.apply_topology(doc)
    tracker = RouteTracker(lambda: engine.state)
    engine.observers.append(tracker.observe)
    racks = len(doc["topologies"][0]["map"])
    for r in range(1, racks + 1):
        for i in range(1, hosts_per_rack + 1):
            engine.add_host(f"r{r}h{i}", f"192.168.{r}.{10 + i}", {"rack": f"rack-{r}"})
    return engine, tracker


def with_routing(doc: dict[str, Any], mode: str) -> dict[str, Any]:
    for group in doc["topologies"][0]["map"]:
        group["routing"] = mode
    return doc


def prefixes(result: Any) -> list[tuple[str, str, str | None]]:
    return [(r["prefix"], r["via"], r["gateway"]) for r in result.to_json()["routes"]]


# -- the routing field --------------------------------------------------------------------
def test_routing_field_accepts_the_original_comma_style_and_aliases() -> None:
    mode = routing_modes.parse("block-host-routes, prefix-announce-bgp")
    assert mode.host_routes and mode.announce == {"bgp"}
    assert routing_modes.parse(" L3-to-host ") == routing_modes.RoutingMode(
        False, frozenset({"bgp"})
    )
    assert routing_modes.parse("prefix-announce-ospf").announce == {"ospf"}
    assert routing_modes.parse("l2-to-host").text == "block-host-routes"


def test_unknown_routing_mode_is_reported_with_its_path() -> None:
    doc = with_routing(racks_topology(2), "block-host-routes,bgp-please")
    problems = validate(doc)
    assert [p.path for p in problems] == [
        "topologies[0].map[0].routing",
        "topologies[0].map[1].routing",
    ]
    assert 'unknown routing mode "bgp-please"' in problems[0].message
    with pytest.raises(InvalidTopology):
        Engine().apply_topology(doc)


# -- aggregation --------------------------------------------------------------------------
def test_l2_racks_hosts_route_to_neighbours_and_spine_has_one_route_per_rack() -> None:
    engine, _ = tracked(racks_topology(4))
    for i in range(12):  # 12 addresses: one full /29 and a second block on r1h1
        engine.allocate(f"a{i}", "r1h1")
    engine.allocate("b", "r1h2")  # splits r1h1's area (the whole rack): each keeps a half
    engine.allocate("c", "r3h1")
    # One route per host: its area, however many blocks it holds there.
    assert prefixes(host_routes(engine.state, "r1h1")) == [
        ("10.1.0.0/19", "local", None),
        ("10.1.32.0/19", "host:r1h2", "192.168.1.12"),
    ]
    assert host_routes(engine.state, "r1h1").default == "group:rack-1"
    # Rack 2 has no blocks yet: its hosts need no routes at all.
    assert prefixes(host_routes(engine.state, "r2h1")) == []
    spine = group_routes(engine.state, "/")
    assert spine.default is None
    assert prefixes(spine) == [
        ("10.1.0.0/18", "group:rack-1", None),
        ("10.1.64.0/18", "group:rack-2", None),
        ("10.1.128.0/18", "group:rack-3", None),
        ("10.1.192.0/18", "group:rack-4", None),
    ]
    tor = group_routes(engine.state, "rack-1")
    assert tor.default == "group:/"
    assert prefixes(tor) == [
        ("10.1.0.0/19", "host:r1h1", "192.168.1.11"),
        ("10.1.32.0/19", "host:r1h2", "192.168.1.12"),
    ]


def test_l3_hosts_install_no_peer_routes() -> None:
    engine, _ = tracked(with_routing(racks_topology(2), "prefix-announce-bgp"))
    engine.allocate("a", "r1h1")
    engine.allocate("b", "r1h2")
    assert prefixes(host_routes(engine.state, "r1h1")) == [("10.1.0.0/18", "local", None)]
    assert len(group_routes(engine.state, "rack-1").routes) == 2


def test_a_block_outside_areas_gets_its_own_route_and_l3_owners_a_hole() -> None:
    """A block given out of place (a pinned IP inside another host's area) is routed with a
    more specific route; an L3-to-host area owner sends it to its router (a hole)."""
    for mode, l2 in (("block-host-routes", True), ("prefix-announce-bgp", False)):
        engine, _ = tracked(with_routing(racks_topology(2), mode))
        engine.allocate("a", "r1h1")
        engine.allocate("b", "r1h2")  # r1h1: 10.1.0.0/18, r1h2: 10.1.64.0/18 ...
        engine.allocate_ip("pinned", "r1h1", "10.1.100.1")  # ... inside r1h2's area
        tor = prefixes(group_routes(engine.state, "rack-1"))
        assert ("10.1.100.0/29", "host:r1h1", "192.168.1.11") in tor
        own = prefixes(host_routes(engine.state, "r1h2"))
        if l2:
            assert ("10.1.100.0/29", "host:r1h1", "192.168.1.11") in own
        else:
            assert own == [("10.1.64.0/18", "local", None), ("10.1.100.0/29", "group:rack-1", None)]


def test_a_group_with_one_host_is_one_route_for_its_whole_cidr() -> None:
    engine, _ = tracked(racks_topology(2), hosts_per_rack=1)
    engine.allocate("a", "r1h1")
    assert prefixes(group_routes(engine.state, "rack-1")) == [
        ("10.1.0.0/17", "host:r1h1", "192.168.1.11")
    ]


def test_nested_groups_route_by_child_group_and_inherit_routing() -> None:
    doc = {
        "networks": [{"name": "n", "cidr": "10.1.0.0/16"}],
        "topologies": [
            {
                "networks": ["n"],
                "map": [
                    {
                        "name": "zone-a",
                        "routing": "l3-to-host",
                        "groups": [
                            {"name": "rack-1", "groups": []},
                            {"name": "rack-2", "groups": []},
                        ],
                    }
                ],
            }
        ],
    }
    engine = Engine()
    engine.apply_topology(doc)
    for i in range(4):
        engine.add_host(f"h{i}", f"192.168.0.{i + 1}")
        engine.allocate(f"a{i}", f"h{i}")
    assert prefixes(group_routes(engine.state, "/")) == [("10.1.0.0/16", "group:zone-a", None)]
    assert prefixes(group_routes(engine.state, "zone-a")) == [
        ("10.1.0.0/17", "group:zone-a/rack-1", None),
        ("10.1.128.0/17", "group:zone-a/rack-2", None),
    ]
    assert group_routes(engine.state, "/zone-a/rack-2/").vantage == "group:zone-a/rack-2"
    # rack-1 inherits zone-a's L3 routing: its hosts carry only their own blocks.
    assert [r.via for r in host_routes(engine.state, "h0").routes] == ["local"]


def test_unknown_devices_are_not_found() -> None:
    engine, _ = tracked(racks_topology(2))
    with pytest.raises(NotFound, match='no host "nope"'):
        host_routes(engine.state, "nope")
    with pytest.raises(NotFound, match='no group "rack-9"'):
        group_routes(engine.state, "rack-9")


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 3)), max_size=40))
def test_collapse_covers_exactly_the_same_addresses_with_no_mergeable_pair(
    picks: list[tuple[int, int]],
) -> None:
    blocks = [(0x0A000000 + (i >> s << s) * 8, 29 - s) for i, s in picks]
    out = collapse(blocks)
    covered = {a for b, n in blocks for a in range(b, b + (1 << (32 - n)))}
    assert {a for b, n in out for a in range(b, b + (1 << (32 - n)))} == covered
    assert sum(1 << (32 - n) for _, n in out) == len(covered)  # disjoint
    nets = [ip_network((b, n)) for b, n in out]
    for x, y in itertools.pairwise(nets):
        if x.prefixlen == y.prefixlen and x.prefixlen > 0:
            assert x.supernet() != y.supernet(), f"{x} and {y} should have merged"


# -- which devices a change touches ---------------------------------------------------------
def sets_of(tracker: RouteTracker) -> dict[str, Any]:
    return tracker.all_sets()


def test_a_new_address_in_an_existing_block_changes_no_route_anywhere() -> None:
    engine, tracker = tracked(racks_topology(4))
    engine.allocate("first", "r1h1")
    before, stats = sets_of(tracker), {k: v.updates for k, v in tracker.stats.items()}
    for i in range(7):
        engine.allocate(f"more{i}", "r1h1")  # fills the /29
    assert sets_of(tracker) == before
    assert {k: v.updates for k, v in tracker.stats.items()} == stats


@pytest.mark.parametrize("mode", ["block-host-routes", "prefix-announce-bgp"])
def test_a_new_block_inside_its_hosts_area_changes_no_route_anywhere(mode: str) -> None:
    engine, tracker = tracked(with_routing(racks_topology(4), mode))
    for host in ("r1h1", "r1h2", "r2h1", "r3h1", "r4h1"):
        engine.allocate(f"seed-{host}", host)
    before, stats = sets_of(tracker), {k: v.updates for k, v in tracker.stats.items()}
    for i in range(20):  # twenty new blocks (other owners), all inside r1h1's area
        engine.allocate(f"new-block-{i}", "r1h1", tenant=f"other-{i}")
    assert len(engine.state.hosts["r1h1"].blocks) == 21
    assert sets_of(tracker) == before
    assert {k: v.updates for k, v in tracker.stats.items()} == stats


@pytest.mark.parametrize(
    ("mode", "touched"),
    [
        ("block-host-routes", {"host:r1h1", "host:r1h2", "host:r1h3", "group:rack-1"}),
        ("prefix-announce-bgp", {"host:r1h1", "host:r1h3", "group:rack-1"}),
    ],
)
def test_a_new_area_changes_only_the_devices_that_need_it(mode: str, touched: set[str]) -> None:
    engine, tracker = tracked(with_routing(racks_topology(4), mode), hosts_per_rack=3)
    spine_updates = tracker.stats["group:/"].updates  # racks got hosts: 4 updates
    for host in ("r1h1", "r1h2", "r2h1", "r3h1", "r4h1"):
        engine.allocate(f"seed-{host}", host)
    before = sets_of(tracker)
    engine.allocate("newcomer", "r1h3")  # takes the unused half of r1h1's area
    after = sets_of(tracker)
    assert engine.host("r1h3").groups["net"]["areas"] == ["10.1.16.0/20"]
    assert {v for v in after if after[v] != before[v]} == touched
    assert tracker.stats["group:/"].updates == spine_updates  # areas never change the spine


def test_releasing_the_last_address_keeps_the_area_route() -> None:
    engine, tracker = tracked(racks_topology(2))
    engine.allocate("a", "r1h1")
    engine.allocate("b", "r1h2")
    assert ("10.1.0.0/18", "host:r1h1", "192.168.1.11") in prefixes(tracker.get("host:r1h2"))
    changes = tracker.stats["host:r1h2"].route_changes
    engine.release("a")  # the block goes back to the pool, the area stays r1h1's
    assert [b.cidr for b in engine.blocks()] == ["10.1.64.0/29"]
    assert ("10.1.0.0/18", "host:r1h1", "192.168.1.11") in prefixes(tracker.get("host:r1h2"))
    assert tracker.stats["host:r1h2"].route_changes == changes
    assert engine.allocate("c", "r1h1", tenant="t2").block == "10.1.0.0/29"
    # Removing the host withdraws its area: the neighbour keeps only its own.
    engine.remove_host("r1h1")
    assert prefixes(tracker.get("host:r1h2")) == [("10.1.64.0/18", "local", None)]


def test_summary_reports_routes_next_hops_and_updates() -> None:
    engine, tracker = tracked(racks_topology(2))
    for i in range(9):
        engine.allocate(f"a{i}", "r1h1")
    rows = {row["vantage"]: row for row in tracker.summary()}
    assert rows["host:r1h2"] == {
        "vantage": "host:r1h2",
        "routes": 1,
        "next_hops": 1,
        "default": "group:rack-1",
        "updates": 1,
        "route_changes": 1,
    }
    assert rows["group:/"]["routes"] == 2  # both racks have hosts
    assert IPv4Network("10.1.0.0/17") == ip_network(tracker.get("host:r1h1").routes[0].prefix)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 63)), max_size=60))
def test_buddy_absorb_and_carve_keep_the_set_equal_to_a_fresh_collapse(
    ops: list[tuple[bool, int]],
) -> None:
    held: set[int] = set()
    live: set[tuple[int, int]] = set()
    for add, index in ops:
        block = (0x0A010000 + index * 8, 29)
        if add and index not in held:
            changes = absorb(live, block)
            held.add(index)
        elif not add and index in held:
            changes = carve(live, block)
            held.discard(index)
        else:
            continue
        assert changes >= 1
        assert sorted(live) == collapse((0x0A010000 + i * 8, 29) for i in held)


def test_verify_names_every_address_that_misses_its_owner() -> None:
    engine, tracker = tracked(racks_topology(2))
    for host in ("r1h1", "r1h2", "r2h1"):
        for i in range(3):
            engine.allocate(f"{host}-{i}", host)
    sets = tracker.all_sets()
    report = verify(sets, blocks_of(engine.state), engine.revision)
    assert report.ok and report.addresses == 9 and report.sources == 4
    # Break two devices: r1h1 claims r1h2's area, rack-2's router forgets its host.
    r1h1 = sets["host:r1h1"]
    sets["host:r1h1"] = RouteSet(
        r1h1.vantage,
        r1h1.default,
        tuple(Route(r.base, r.prefixlen, "local", None) for r in r1h1.routes),
    )
    sets["group:rack-2"] = RouteSet("group:rack-2", "group:/", ())
    report = verify(sets, blocks_of(engine.state), engine.revision)
    assert not report.ok and report.failed_addresses == 6
    problems = {(f["name"], f["from"]): f["problem"] for f in report.failures}
    assert problems[("r1h2-0", "host:r1h1")] == "delivered at host:r1h1, not host:r1h2"
    loop = next(f for f in report.failures if f["name"] == "r2h1-0")
    assert loop["problem"] == "forwarding loop"
    assert loop["path"][:4] == ["host:r1h1", "group:rack-1", "group:/", "group:rack-2"]
