"""Property tests: computed routes deliver every allocated address, and stay aggregated.

The forwarding model walks a packet hop by hop with longest-prefix match over each
device's route set, the way kernels do: a host either delivers (``local``), hands the
packet to an L2 neighbour (``host:N``) or sends it to its default, the router of its
leaf group; a router hands it to a host of its group, to a child group's router, or up
to its parent. It is written here, independently of ``romana.routes``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from ipaddress import IPv4Network
from typing import Any

from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from romana.errors import RomanaError
from romana.ipam import Engine
from romana.routes import Route, RouteSet, RouteTracker, route_set, vantages
from romana.routes.compute import routing_mode

from .test_ipam_properties import LABELS, topologies

MODES = st.sampled_from(
    [
        None,
        "block-host-routes",
        "prefix-announce-bgp",
        "block-host-routes, prefix-announce-bgp",
        "l3-to-host",
    ]
)


@st.composite
def routed_topologies(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = draw(topologies())

    def annotate(groups: list[dict[str, Any]]) -> None:
        for group in groups:
            mode = draw(MODES)
            if mode is not None:
                group["routing"] = mode
            annotate(group["groups"])

    annotate(doc["topologies"][0]["map"])
    return doc


# (kind, index, tenant); kinds weighted so that addresses accumulate.
OPS = st.lists(
    st.tuples(
        st.sampled_from(["alloc"] * 7 + ["release"] * 3 + ["remove"]),
        st.integers(0, 1000),
        st.integers(0, 2),
    ),
    min_size=40,
    max_size=150,
)


def lpm_route(routes: RouteSet, ip: int) -> Route | None:
    best = None
    for route in routes.routes:
        if route.base <= ip < route.base + (1 << (32 - route.prefixlen)) and (
            best is None or route.prefixlen > best.prefixlen
        ):
            assert best is None or route.prefixlen != best.prefixlen, "equal prefixes"
            best = route
    return best


def lpm(routes: RouteSet, ip: int) -> str | None:
    best = lpm_route(routes, ip)
    return best.via if best else None


def deliver(sets: dict[str, RouteSet], source: str, ip: int) -> list[str]:
    """The devices a packet to ``ip`` visits from host ``source``; last one delivered it."""
    path = [f"host:{source}"]
    device = path[0]
    for _ in range(64):
        via = lpm(sets[device], ip)
        if via == "local":
            assert device.startswith("host:"), f"router {device} claims {ip} as local"
            return path
        nxt = via or sets[device].default
        assert nxt is not None, f"dropped at {device} (no route, no default): {path}"
        device = nxt
        path.append(device)
    raise AssertionError(f"forwarding loop: {path}")


def physically_adjacent(engine: Engine, a: str, b: str) -> bool:
    """Hops allowed by the topology: host<->its leaf router, host<->L2 neighbour (same
    leaf), router<->parent router."""
    state = engine.state
    kind_a, name_a = a.split(":", 1)
    kind_b, name_b = b.split(":", 1)
    if kind_a == "host" and kind_b == "host":  # only across a shared L2 segment
        return any(
            leaf is state.hosts[name_b].placements.get(net) and routing_mode(leaf).host_routes
            for net, leaf in state.hosts[name_a].placements.items()
        )
    if kind_a == "host" or kind_b == "host":
        host, group = (name_a, name_b) if kind_a == "host" else (name_b, name_a)
        return any(leaf.path == group for leaf in state.hosts[host].placements.values())
    parents = {
        n.parent.path
        for t in state.trees.values()
        if (n := t.group(name_a)) is not None and n.parent is not None
    }
    children = {
        n.parent.path
        for t in state.trees.values()
        if (n := t.group(name_b)) is not None and n.parent is not None
    }
    return name_b in parents or name_a in children


def add_hosts(engine: Engine, labels: list[dict[str, str]]) -> None:
    for i, host_labels in enumerate(labels):
        with contextlib.suppress(RomanaError):  # fits no group: such a host does not join
            engine.add_host(f"h{i}", f"192.168.0.{i + 1}", host_labels)


def run_ops(engine: Engine, ops: list[tuple[str, int, int]]) -> None:
    live: list[str] = []
    for n, (kind, k, tenant) in enumerate(ops):
        hosts = sorted(engine.state.hosts)
        try:
            if kind == "alloc" and hosts:
                engine.allocate(f"a{n}", hosts[k % len(hosts)], f"t{tenant}")
                live.append(f"a{n}")
            elif kind == "release" and live:
                engine.release(live.pop(k % len(live)))
            elif kind == "remove" and len(hosts) > 2:  # keep some traffic to route
                engine.remove_host(hosts[k % len(hosts)])
                live = [a for a in live if a in engine.state.addresses]
        except RomanaError:
            pass  # exhausted (small random networks fill up): not the point here


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=routed_topologies(), labels=st.lists(LABELS, min_size=8, max_size=8), ops=OPS)
def test_every_address_is_delivered_from_every_host(
    doc: dict[str, Any], labels: list[dict[str, str]], ops: list[tuple[str, int, int]]
) -> None:
    engine = Engine()
    engine.apply_topology(doc)
    tracker = RouteTracker(lambda: engine.state)
    engine.observers.append(tracker.observe)
    add_hosts(engine, labels)
    run_ops(engine, ops)

    state = engine.state
    sets = {v: route_set(state, v) for v in vantages(state)}
    # The tracker, updated fact by fact, agrees with a fresh computation.
    assert tracker.all_sets() == sets

    placed = [name for name, record in state.hosts.items() if record.placements]
    event(f"addresses: {min(len(state.addresses) // 10 * 10, 50)}+")
    event(f"hosts placed: {len(placed)}")
    for address in state.addresses.values():
        owner = address.block.host
        for source in placed:
            path = deliver(sets, source, address.ip)
            assert path[-1] == f"host:{owner}", f"{address.name} ended at {path[-1]}: {path}"
            for a, b in itertools.pairwise(path):
                assert physically_adjacent(engine, a, b), f"no link {a} -> {b} in {path}"

    # Rule 3, on every device (not only those on a path): the longest matching route of an
    # allocated address leads towards its owner; a host's route is one of its areas, or
    # covers only its own blocks (rule 2), or is the whole leaf of a lone host (rule 1).
    for vantage, routes in sets.items():
        for ip, address in state.ips.items():
            best = lpm_route(routes, ip)
            if best is not None:
                assert _behind(engine, vantage, best.via, address.block.host), (
                    f"{vantage}: {best.prefix} via {best.via} takes {address.name}"
                )
        for route in routes.routes:
            if not route.via.startswith("group:"):
                owner = (vantage if route.via == "local" else route.via).removeprefix("host:")
                assert _is_host_prefix(engine, route, owner), (
                    f"{vantage}: {route.prefix} via {route.via} is no prefix of {owner}"
                )

    # Minimality, reported: routes per device against its distinct next hops.
    total = sum(len(s.routes) for s in sets.values())
    hops = sum(len(s.next_hops) for s in sets.values())
    note(f"routes {total}, distinct next hops {hops}")
    event(f"routes per next hop <= 1.5: {total <= 1.5 * hops if hops else True}")


def _is_host_prefix(engine: Engine, route: Route, host: str) -> bool:
    for tree in engine.state.trees.values():
        if not tree.contains(route.base):
            continue
        leaf = tree.leaf_containing(route.base)
        assert leaf is not None
        if (route.base, route.prefixlen) == (leaf.base, leaf.prefixlen) and list(leaf.hosts) == [
            host
        ]:
            return True
        start, size = tree.prefix_run(leaf, route.base, route.prefixlen)
        area = leaf.areas.get(start, size)
        if area is not None:
            return area.host == host
        return all(
            (b := leaf.blocks.get(i)) is not None and b.host == host
            for i in range(start, start + size)
        )
    return False


def _behind(engine: Engine, vantage: str, via: str, owner: str) -> bool:
    if via == "local":
        return vantage == f"host:{owner}"
    if via.startswith("host:"):
        return via == f"host:{owner}"
    path = via.removeprefix("group:")
    return any(
        leaf.path == path or leaf.path.startswith(path + "/")
        for leaf in engine.state.hosts[owner].placements.values()
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=routed_topologies(), labels=st.lists(LABELS, min_size=8, max_size=8), ops=OPS)
def test_routers_above_leaves_hold_one_route_per_populated_child(
    doc: dict[str, Any], labels: list[dict[str, str]], ops: list[tuple[str, int, int]]
) -> None:
    engine = Engine()
    engine.apply_topology(doc)
    add_hosts(engine, labels)
    run_ops(engine, ops)
    for tree in engine.state.trees.values():
        for node in tree.nodes.values():
            if node.is_leaf:
                continue
            routes = route_set(engine.state, f"group:{node.path}")
            mine = [r for r in routes.routes if IPv4Network(r.prefix).subnet_of(tree.cidr)]
            populated = [c for c in node.children if c.host_count]
            assert sorted(r.prefix for r in mine) == sorted(c.cidr for c in populated)
            assert Counter(r.via for r in mine) == Counter(f"group:{c.path}" for c in populated)
