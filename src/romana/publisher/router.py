"""What a group's router needs to know: its BGP neighbours and what each may announce.

A pure function of romanad's topology, hosts and route set for the group. It exists so
that route filtering follows the prefix groups (the source documents: prefix groups allow
route filtering that prevents route injection):

- a **leaf group**'s router peers with every host placed in the group. A host's import
  filter accepts only prefixes inside the group's CIDR (``C{len,32}``): a host cannot
  attract traffic for another rack. In **strict** mode it accepts only what romanad
  assigned to that host: the host's blocks, collapsed (romanad's ``via: host:NAME``
  routes for the group), or the whole leaf when the host is alone in it. Strict mode
  matters where hosts share a leaf group: without it, a host could announce a more
  specific prefix inside a neighbour's block and take its traffic.
- a **parent group**'s router (a spine) peers with the routers of its child groups whose
  addresses the operator gives (``--peer CHILD=IP[@AS]``: the map has no router IPs), and
  accepts from each only prefixes inside that child's CIDR.

In both cases the group's own CIDR is what the router announces upward, aggregated: the
parent learns one route per group however many blocks and hosts are inside.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from romana.errors import RouterError
from romana.publisher.templates import BirdText


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A group of the applied map, merged over every topology that has it."""

    path: str
    cidrs: Mapping[str, str]  # network -> the group's CIDR there
    leaf: bool
    children: tuple[GroupInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """An operator's ``--peer NAME=IP[@AS]``: a child router's address, or an override."""

    ip: str | None = None
    asn: int | None = None

    @classmethod
    def parse(cls, text: str) -> tuple[str, PeerSpec]:
        name, sep, rest = text.partition("=")
        if not sep or not name:
            raise RouterError(f"--peer {text!r}: expected NAME=IP[@AS] or NAME=@AS")
        ip, _, asn_text = rest.partition("@")
        try:
            address = str(ipaddress.IPv4Address(ip)) if ip else None
            asn = int(asn_text) if asn_text else None
        except ValueError as exc:
            raise RouterError(f"--peer {text!r}: {exc}") from exc
        if asn is not None and not 0 < asn < 1 << 32:
            raise RouterError(f"--peer {text!r}: AS number out of range")
        return name, cls(address, asn)


@dataclass(frozen=True, slots=True)
class Peer:
    """One BGP neighbour of the router, with what its import filter accepts."""

    name: str  # host name, or child group path
    kind: str  # "host" or "group"
    ip: str
    asn: int | None
    proto: str  # a BIRD identifier, unique in the config
    cidrs: tuple[str, ...]  # the peer's group CIDR(s) (leaf of a host, or the child group)
    prefixes: tuple[str, ...]  # what it may announce: strict blocks, else its CIDR(s)
    allowed: tuple[str, ...]  # the same as BIRD prefix patterns, e.g. "10.1.0.0/28{28,32}"


@dataclass(frozen=True, slots=True)
class RouterData:
    group: str
    cidrs: tuple[str, ...]  # the group's own prefixes: the aggregate announced upward
    leaf: bool
    strict: bool
    peers: tuple[Peer, ...]
    unpeered: tuple[str, ...] = field(default=())  # child groups without a --peer address


def group_info(topology: Mapping[str, Any], path: str) -> GroupInfo:
    """The group at ``path`` (``/`` is the root) in romanad's annotated map."""
    groups = index_groups(topology)
    wanted = path.strip("/") or "/"
    if wanted not in groups:
        known = ", ".join(sorted(groups)[:30])
        raise RouterError(f'no group "{wanted}" in the topology; groups: {known}')
    return groups[wanted]


def index_groups(topology: Mapping[str, Any]) -> dict[str, GroupInfo]:
    """Every group by path, CIDRs merged across topologies; ``/`` holds the networks."""
    cidrs: dict[str, dict[str, str]] = {}
    leaf: dict[str, bool] = {}
    children: dict[str, list[str]] = {}
    network_cidrs = {n["name"]: n["cidr"] for n in topology.get("networks", [])}
    cidrs["/"], leaf["/"], children["/"] = {}, False, []

    def visit(group: Mapping[str, Any], path: str, parent: str, nets: Sequence[str]) -> None:
        cidr = group.get("cidr")
        by_net = (
            dict(cidr)
            if isinstance(cidr, Mapping)
            else ({nets[0]: cidr} if isinstance(cidr, str) and nets else {})
        )
        cidrs.setdefault(path, {}).update(by_net)
        subgroups = group.get("groups") or []
        leaf[path] = leaf.get(path, True) and not subgroups
        kids = children.setdefault(parent, [])
        if path not in kids:
            kids.append(path)
        for i, sub in enumerate(subgroups):
            visit(sub, f"{path}/{sub.get('name') or i}", path, nets)

    for topo in topology.get("topologies", []):
        nets = list(topo.get("networks", []))
        cidrs["/"].update({n: network_cidrs[n] for n in nets if n in network_cidrs})
        for i, group in enumerate(topo.get("map", [])):
            visit(group, str(group.get("name") or i), "/", nets)

    built: dict[str, GroupInfo] = {}

    def build(path: str) -> GroupInfo:
        if path not in built:
            built[path] = GroupInfo(
                path,
                dict(cidrs.get(path, {})),
                leaf.get(path, True),
                tuple(build(c) for c in children.get(path, [])),
            )
        return built[path]

    for path in list(cidrs):
        build(path)
    return built


def pattern(cidr: str) -> str:
    """A BIRD prefix pattern: the CIDR itself and anything more specific inside it."""
    net = ipaddress.IPv4Network(cidr)
    return BirdText(f"{net}{{{net.prefixlen},32}}")  # braces: safe here, built from a CIDR


def router_data(
    group: GroupInfo,
    hosts: Iterable[Mapping[str, Any]],
    routes: Iterable[Mapping[str, Any]] = (),
    *,
    strict: bool = False,
    peers: Mapping[str, PeerSpec] | None = None,
    peer_as: int | None = None,
) -> RouterData:
    """The router configuration data of ``group``.

    ``hosts``: romanad's host objects (``name``, ``ip``, ``groups``); ``routes``: romanad's
    route set for the group (only read in strict mode); ``peers``: the operator's
    ``--peer`` addresses and AS overrides; ``peer_as``: the AS of peers without one.
    """
    overrides = dict(peers or {})
    own = tuple(_sorted(group.cidrs.values()))
    names = _Names()
    out: list[Peer] = []
    unpeered: list[str] = []
    if group.leaf:
        owned: dict[str, list[str]] = {}
        for route in routes:
            via = str(route.get("via", ""))
            if via.startswith("host:"):
                owned.setdefault(via.removeprefix("host:"), []).append(str(route["prefix"]))
        for host in sorted(hosts, key=lambda h: str(h["name"])):
            placed = [
                str(p["cidr"])
                for p in (host.get("groups") or {}).values()
                if p.get("group") == group.path
            ]
            if not placed:
                continue
            name = str(host["name"])
            spec = overrides.get(name, PeerSpec())
            cidrs = tuple(_sorted(placed))
            prefixes = tuple(_sorted(owned.get(name, ()))) if strict else cidrs
            out.append(
                Peer(
                    name,
                    "host",
                    spec.ip or str(host["ip"]),
                    spec.asn or peer_as,
                    names.make("host", name),
                    cidrs,
                    prefixes,
                    tuple(pattern(p) for p in prefixes),
                )
            )
    else:
        for child in group.children:
            given = overrides.get(child.path) or overrides.get(child.path.rsplit("/", 1)[-1])
            if given is None or given.ip is None:
                unpeered.append(child.path)
                continue
            cidrs = tuple(_sorted(child.cidrs.values()))
            out.append(
                Peer(
                    child.path,
                    "group",
                    given.ip,
                    given.asn or peer_as,
                    names.make("group", child.path.rsplit("/", 1)[-1]),
                    cidrs,
                    cidrs,
                    tuple(pattern(c) for c in cidrs),
                )
            )
    return RouterData(group.path, own, group.leaf, strict, tuple(out), tuple(unpeered))


def missing_as(data: RouterData) -> list[str]:
    """Peers without an AS number (a BGP template needs one for each)."""
    return [p.name for p in data.peers if p.asn is None]


def _sorted(cidrs: Iterable[str]) -> list[str]:
    nets = {ipaddress.IPv4Network(c) for c in cidrs}
    return [str(n) for n in sorted(nets, key=lambda n: (n.network_address, n.prefixlen))]


class _Names:
    """BIRD protocol names: identifiers, unique, stable for a given name."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    # Templates derive more symbols from a protocol name (``NAME_import`` for its filter):
    # each derived name is reserved with it, and every one fits BIRD's 64 characters.
    DERIVED = ("_import",)
    MAX = 64 - max(len(d) for d in DERIVED)

    def make(self, kind: str, name: str) -> str:
        base = f"{kind}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"[: self.MAX - 6]
        candidate, n = base, 1
        while self._taken(candidate):
            n += 1
            candidate = f"{base}_{n}"
        self.used.add(candidate)
        self.used.update(candidate + d for d in self.DERIVED)
        return candidate

    def _taken(self, candidate: str) -> bool:
        return candidate in self.used or any(candidate + d in self.used for d in self.DERIVED)
