"""Reading what the publisher needs from romanad, and which feed changes matter to it.

The publisher never keeps its own copy of the IPAM state: it re-reads the few small answers
it needs (a host, its route set; or a group, its hosts and route set) when the changes feed
says something relevant happened. romanad computes the routes (``GET /routes``), so the
host's ``networks`` are exactly romanad's ``via: local`` routes and a router's strict
filters exactly its ``via: host:NAME`` routes: one definition of "a host's blocks,
collapsed" in the whole system.

Addresses allocated or released inside a block change no route, so ``address_*`` facts
are ignored; only block, area, host and topology facts cause a re-read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from romana import wire
from romana.api.client import RomanaClient
from romana.publisher.announce import Placement
from romana.publisher.router import GroupInfo, group_info

HOST_FACTS = frozenset({wire.HOST_ADDED, wire.HOST_LABELS_UPDATED, wire.HOST_REMOVED})


@dataclass(frozen=True, slots=True)
class HostInputs:
    name: str
    ip: str
    labels: Mapping[str, str]
    placements: Mapping[str, Placement]  # network -> leaf group and its CIDR
    local: tuple[str, ...]  # the host's own blocks, collapsed (romanad's "local" routes)
    group_sizes: Mapping[str, int]  # network -> hosts in this host's leaf (group policy)


@dataclass(frozen=True, slots=True)
class RouterInputs:
    group: GroupInfo
    hosts: tuple[Mapping[str, Any], ...]  # romanad's host objects placed in the group
    routes: tuple[Mapping[str, Any], ...]  # romanad's route set of the group


def start_revision(client: RomanaClient) -> tuple[str | None, int]:
    """The store id and durable revision, read before the state: watching from there can
    repeat a change, never miss one."""
    health = client.health()
    return health.get("store_id"), int(health["revision"])


def local_networks(client: RomanaClient, host: str) -> list[str]:
    """The host's own blocks, collapsed: romanad's ``via: local`` routes for the host."""
    answer = client.routes(host=host)
    return [str(r["prefix"]) for r in answer["routes"] if r["via"] == wire.LOCAL_VIA]


def read_host(client: RomanaClient, name: str, group_sizes: bool) -> HostInputs:
    host = client.host(name)
    placements = {
        net: Placement(str(p["group"]), str(p["cidr"]))
        for net, p in (host.get("groups") or {}).items()
    }
    sizes: dict[str, int] = {}
    if group_sizes:
        for other in client.hosts()["hosts"]:
            for net, p in (other.get("groups") or {}).items():
                if net in placements and p.get("group") == placements[net].group:
                    sizes[net] = sizes.get(net, 0) + 1
    return HostInputs(
        str(host["name"]),
        str(host["ip"]),
        dict(host.get("labels") or {}),
        placements,
        tuple(local_networks(client, name)),
        sizes,
    )


def read_router(client: RomanaClient, path: str, strict: bool) -> RouterInputs:
    group = group_info(client.topology(), path)
    hosts: tuple[Mapping[str, Any], ...] = ()
    routes: tuple[Mapping[str, Any], ...] = ()
    if group.leaf:
        hosts = tuple(
            h
            for h in client.hosts()["hosts"]
            if any(p.get("group") == group.path for p in (h.get("groups") or {}).values())
        )
        if strict:
            routes = tuple(client.routes(group=group.path)["routes"])
    return RouterInputs(group, hosts, routes)


def _inside(cidr: object, prefixes: Iterable[str]) -> bool:
    try:
        net = ipaddress.IPv4Network(str(cidr))
    except ValueError:
        return True  # cannot tell: re-read rather than miss it
    return any(net.overlaps(ipaddress.IPv4Network(p)) for p in prefixes)


def host_cares(change: Mapping[str, Any], inputs: HostInputs, group_policy: bool) -> bool:
    """Whether ``change`` can alter what this host announces."""
    kind = change.get("kind")
    if kind == wire.TOPOLOGY_APPLIED:
        return True
    if kind in HOST_FACTS:
        return change.get("name") == inputs.name or group_policy
    if kind == wire.BLOCK_ASSIGNED:
        return change.get("host") == inputs.name
    if kind == wire.BLOCK_FREED:
        return _inside(change.get("cidr"), inputs.local)
    if kind in wire.AREA_FACTS:  # its own area, or one whose change moves its stray blocks
        return change.get("host") == inputs.name or _inside(
            change.get("cidr"), [p.cidr for p in inputs.placements.values()]
        )
    return False


def router_cares(change: Mapping[str, Any], inputs: RouterInputs, strict: bool) -> bool:
    """Whether ``change`` can alter the router configuration of the group."""
    kind = change.get("kind")
    if kind == wire.TOPOLOGY_APPLIED:
        return True
    if not inputs.group.leaf:
        return False  # a parent's peers and filters follow the map only
    if kind in HOST_FACTS:
        placements = change.get("placements") or {}
        return (
            change.get("name") in {h.get("name") for h in inputs.hosts}
            or inputs.group.path in placements.values()
        )
    if kind in wire.BLOCK_FACTS or kind in wire.AREA_FACTS:
        return strict and _inside(change.get("cidr"), inputs.group.cidrs.values())
    return False
