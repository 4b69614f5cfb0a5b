"""Route sets as a pure function of the IPAM state, for every vantage point.

The rules (docs/architecture.md):
1. a prefix group whose hosts all sit behind one next hop gets one route for its whole
   CIDR: a parent router routes each populated child group's CIDR to that child's router,
   and a leaf's router routes the whole leaf to its host when the host is alone there;
2. inside a leaf, one route per host *prefix* (:mod:`romana.routes.prefixes`): each of its
   areas, which may cover free blocks of the area, and its stray blocks collapsed exactly;
3. the longest matching route of every allocated address names its owner: a route covers
   another host's addresses only beneath a more specific route to that host (a loan).

A host routes its own prefixes ``local`` (the agent makes them ``unreachable``: the pods'
/32s are more specific, unused addresses are dropped instead of looping). In a group with
``block-host-routes`` (L2-to-host) it routes each neighbour's prefixes to the neighbour's
IP; otherwise (L3-to-host) it relies on its default route to the group's router, and routes
its *holes* (others' prefixes inside its own) to that router explicitly, since its ``local``
routes would otherwise swallow them (the agent programs them as ``throw``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

from romana.errors import NotFound
from romana.ipam.groups import GroupNode
from romana.ipam.state import IpamState
from romana.routes.aggregate import Prefix
from romana.routes.model import Route, RouteSet, group_vantage, host_vantage
from romana.routes.prefixes import HostPrefixes, holes, leaf_prefixes
from romana.topology import routing_modes
from romana.wire import LOCAL_VIA


def routing_mode(node: GroupNode) -> routing_modes.RoutingMode:
    """The group's own ``routing``, else the nearest ancestor's, else the default."""
    for ancestor in node.lineage():
        if ancestor.routing is not None:
            return routing_modes.parse(ancestor.routing)
    return routing_modes.parse(routing_modes.DEFAULT)


# A device's route set is a disjoint union of *segments*, each behind one next hop: a
# host's own prefixes (``local``), one neighbour's prefixes, one child group's CIDR. A segment
# holds its prefixes by reference, so the tracker can share one live collection between
# every device that carries it (a host's prefixes: the host, its L2 neighbours, its router).
@dataclass(frozen=True, slots=True, eq=False)
class Segment:
    via: str
    gateway: str | None
    prefixes: Collection[Prefix]


SegmentKey = tuple[str, ...]
Segments = dict[SegmentKey, Segment]
# (network, host) -> the host's prefixes there, and its holes (L3-to-host groups only).
Prefixes = Callable[[str, str], Collection[Prefix]]


class FromState:
    """Hosts' prefixes and holes computed from the state, one leaf group at a time."""

    def __init__(self, state: IpamState) -> None:
        self.state = state
        self._leaves: dict[tuple[str, str], dict[str, HostPrefixes]] = {}
        self._holes: dict[tuple[str, str], dict[str, set[Prefix]]] = {}

    def _leaf(self, network: str, host: str) -> tuple[str, str] | None:
        record = self.state.hosts.get(host)
        leaf = record.placements.get(network) if record else None
        if leaf is None:
            return None
        key = (network, leaf.path)
        if key not in self._leaves:
            self._leaves[key] = leaf_prefixes(self.state.trees[network], leaf)
        return key

    def prefixes(self, network: str, host: str) -> Collection[Prefix]:
        key = self._leaf(network, host)
        return self._leaves[key].get(host, HostPrefixes()) if key else ()

    def holes(self, network: str, host: str) -> Collection[Prefix]:
        key = self._leaf(network, host)
        if key is None:
            return ()
        if key not in self._holes:
            leaf = self.state.trees[network].nodes[key[1]]
            self._holes[key] = holes(self._leaves[key].items(), leaf.prefixlen)
        return self._holes[key].get(host, ())


def host_segments(
    state: IpamState, name: str, prefixes: Prefixes, hole_prefixes: Prefixes
) -> Segments:
    record = state.hosts.get(name)
    if record is None:
        raise NotFound(f'no host "{name}"', ["list hosts with GET /hosts"])
    segments: Segments = {}
    for net, leaf in record.placements.items():
        segments[(LOCAL_VIA, net)] = Segment(LOCAL_VIA, None, prefixes(net, name))
        if routing_mode(leaf).host_routes:
            for neighbour in leaf.hosts:
                if neighbour != name:
                    segments[("host", net, neighbour)] = Segment(
                        host_vantage(neighbour), state.hosts[neighbour].ip, prefixes(net, neighbour)
                    )
        else:
            segments[("holes", net)] = Segment(
                group_vantage(leaf.path), None, hole_prefixes(net, name)
            )
    return segments


def host_default(state: IpamState, name: str) -> str | None:
    """The router of the host's leaf group in the first network (definition order)."""
    record = state.hosts[name]
    for tree in state.trees.values():
        leaf = record.placements.get(tree.name)
        if leaf is not None:
            return group_vantage(leaf.path)
    return None


def group_nodes(state: IpamState, path: str) -> list[GroupNode]:
    """The group at ``path`` in every network whose map has it."""
    nodes = [n for tree in state.trees.values() if (n := tree.group(path)) is not None]
    if not nodes:
        known = sorted({p for tree in state.trees.values() for p in tree.nodes})
        raise NotFound(
            f'no group "{path}"',
            ["groups: " + ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")],
        )
    return nodes


def group_segments(state: IpamState, path: str, prefixes: Prefixes) -> Segments:
    segments: Segments = {}
    for tree, node in ((t, n) for t in state.trees.values() if (n := t.group(path)) is not None):
        net = tree.name
        if not node.is_leaf:
            for child in node.children:
                if child.host_count > 0:
                    segments[("child", net, child.path)] = Segment(
                        group_vantage(child.path), None, ((child.base, child.prefixlen),)
                    )
        elif len(node.hosts) == 1:
            (only,) = node.hosts
            segments[("leaf", net)] = Segment(
                host_vantage(only), state.hosts[only].ip, ((node.base, node.prefixlen),)
            )
        else:
            for host in node.hosts:
                segments[("host", net, host)] = Segment(
                    host_vantage(host), state.hosts[host].ip, prefixes(net, host)
                )
    return segments


def group_default(state: IpamState, path: str) -> str | None:
    parent = group_nodes(state, path)[0].parent
    return group_vantage(parent.path) if parent is not None else None


def canonical(state: IpamState, vantage: str) -> str:
    """``group:/zone-a/rack-1/`` -> ``group:zone-a/rack-1``; raises NotFound if unknown."""
    kind, _, name = vantage.partition(":")
    if kind == "group":
        return group_vantage(group_nodes(state, name)[0].path)
    if kind == "host":
        if name not in state.hosts:
            raise NotFound(f'no host "{name}"', ["list hosts with GET /hosts"])
        return vantage
    raise NotFound(f'no vantage "{vantage}"', ['use "host:NAME" or "group:PATH"'])


def segments_of(
    state: IpamState, vantage: str, prefixes: Prefixes, hole_prefixes: Prefixes
) -> Segments:
    kind, _, name = vantage.partition(":")
    if kind == "host":
        return host_segments(state, name, prefixes, hole_prefixes)
    return group_segments(state, name, prefixes)


def default_of(state: IpamState, vantage: str) -> str | None:
    kind, _, name = vantage.partition(":")
    return host_default(state, name) if kind == "host" else group_default(state, name)


def assemble(state: IpamState, vantage: str, segments: Segments) -> RouteSet:
    default = default_of(state, vantage)
    # Sorting plain tuples compares in C; sorting Route dataclasses would call __lt__.
    rows = sorted(
        (base, length, segment.via, segment.gateway)
        for segment in segments.values()
        for base, length in segment.prefixes
    )
    routes = [Route(*row) for row in rows]
    return RouteSet(vantage, default, tuple(routes))


def host_routes(state: IpamState, name: str) -> RouteSet:
    return route_set(state, host_vantage(name))


def group_routes(state: IpamState, path: str) -> RouteSet:
    return route_set(state, f"group:{path}")


def vantages(state: IpamState) -> Iterator[str]:
    """Every device that forwards pod traffic: hosts, then group routers (root first)."""
    for name in state.hosts:
        yield host_vantage(name)
    seen: set[str] = set()
    for tree in state.trees.values():
        for path in tree.nodes:
            if path not in seen:
                seen.add(path)
                yield group_vantage(path)


def route_set(state: IpamState, vantage: str) -> RouteSet:
    """A device's routes computed from scratch (the reference the tracker must match)."""
    vantage = canonical(state, vantage)
    source = FromState(state)
    return assemble(state, vantage, segments_of(state, vantage, source.prefixes, source.holes))
