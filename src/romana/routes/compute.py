"""Route sets as a pure function of the IPAM state, for every vantage point.

The rules (ARCHITECTURE.md, "Routes"):
1. a prefix group whose hosts all sit behind one next hop gets one route for its whole
   CIDR: a parent router routes each populated child group's CIDR to that child's router,
   and a leaf's router routes the whole leaf to its host when the host is alone there;
2. otherwise per-block routes, with the blocks behind one next hop collapsed exactly;
3. never a route covering addresses owned behind another next hop (hence *exact*
   collapsing: free blocks are not swallowed, because another host may get them).

A host routes its own blocks ``local`` (the agent makes them ``unreachable``: the pods'
/32s are more specific, unused addresses are dropped instead of looping). In a group with
``block-host-routes`` (L2-to-host) it routes each neighbour's blocks to the neighbour's IP;
otherwise (L3-to-host) it relies on its default route to the group's router.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from romana.errors import NotFound
from romana.ipam.groups import GroupNode
from romana.ipam.state import IpamState
from romana.routes.aggregate import Prefix, collapse
from romana.routes.model import LOCAL, Route, RouteSet, group_vantage, host_vantage
from romana.topology import routing


def routing_mode(node: GroupNode) -> routing.RoutingMode:
    """The group's own ``routing``, else the nearest ancestor's, else the default."""
    for ancestor in node.lineage():
        if ancestor.routing is not None:
            return routing.parse(ancestor.routing)
    return routing.parse(routing.DEFAULT)


def blocks_by_host(leaf: GroupNode) -> dict[str, list[Prefix]]:
    owned: dict[str, list[Prefix]] = defaultdict(list)
    for block in leaf.blocks.values():
        owned[block.host].append((block.base, block.tree.block_mask))
    return owned


def host_routes(state: IpamState, name: str) -> RouteSet:
    record = state.hosts.get(name)
    if record is None:
        raise NotFound(f'no host "{name}"', ["list hosts with GET /hosts"])
    routes: list[Route] = []
    default: str | None = None
    for tree in state.trees.values():  # network definition order: the first names the default
        leaf = record.placements.get(tree.name)
        if leaf is None:
            continue
        default = default or group_vantage(leaf.path)
        owned = blocks_by_host(leaf)
        routes += [Route(b, n, LOCAL, None) for b, n in collapse(owned.get(name, ()))]
        if routing_mode(leaf).host_routes:
            for neighbour in leaf.hosts:
                if neighbour != name:
                    gateway = state.hosts[neighbour].ip
                    via = host_vantage(neighbour)
                    routes += [Route(b, n, via, gateway)
                               for b, n in collapse(owned.get(neighbour, ()))]
    return RouteSet(host_vantage(name), default, tuple(sorted(routes)))


def group_nodes(state: IpamState, path: str) -> list[GroupNode]:
    """The group at ``path`` in every network whose map has it."""
    nodes = [n for tree in state.trees.values() if (n := tree.group(path)) is not None]
    if not nodes:
        known = sorted({p for tree in state.trees.values() for p in tree.nodes})
        raise NotFound(f'no group "{path}"', ["groups: " + ", ".join(known[:20])
                                              + (" ..." if len(known) > 20 else "")])
    return nodes


def group_routes(state: IpamState, path: str) -> RouteSet:
    nodes = group_nodes(state, path)
    routes: list[Route] = []
    for node in nodes:
        if not node.is_leaf:
            routes += [Route(c.base, c.prefixlen, group_vantage(c.path), None)
                       for c in node.children if c.host_count > 0]
        elif len(node.hosts) == 1:
            (only,) = node.hosts
            routes.append(Route(node.base, node.prefixlen, host_vantage(only),
                                state.hosts[only].ip))
        else:
            for host, owned in blocks_by_host(node).items():
                gateway = state.hosts[host].ip
                routes += [Route(b, n, host_vantage(host), gateway) for b, n in collapse(owned)]
    parent = nodes[0].parent
    default = group_vantage(parent.path) if parent is not None else None
    return RouteSet(group_vantage(nodes[0].path), default, tuple(sorted(routes)))


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
    kind, _, name = vantage.partition(":")
    if kind == "host":
        return host_routes(state, name)
    if kind == "group":
        return group_routes(state, name)
    raise NotFound(f'no vantage "{vantage}"', ['use "host:NAME" or "group:PATH"'])
