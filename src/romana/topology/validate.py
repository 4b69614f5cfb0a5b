"""Validation of topology map documents.

The validator walks the raw document (not the typed model) so it can report *every*
problem in one pass, each with its JSON path and a hint, instead of stopping at the first.
Documents it accepts always build a :class:`~romana.topology.model.Topology`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from ipaddress import AddressValueError, IPv4Address, IPv4Network
from typing import Any

from romana import names
from romana.errors import InvalidTopology, Problem
from romana.topology import routing_modes
from romana.topology.carving import child_prefix_bits
from romana.topology.limits import MAX_GROUP_DEPTH, limit_problems
from romana.topology.model import (
    Host,
    HostGroup,
    Topology,
    TopologyMapping,
    canonical_ip,
)
from romana.topology.networks import NetworkChecks
from romana.topology.shape import describe


class _Walker(NetworkChecks):
    def __init__(self, service_cidr: IPv4Network | None) -> None:
        super().__init__(service_cidr)
        self.used_networks: dict[str, str] = {}  # network name -> path of first use
        self.host_names: dict[str, tuple[str, str]] = {}  # name -> (ip, path)
        self.host_ips: dict[str, tuple[str, str]] = {}  # ip -> (name, path)

    # -- topologies -----------------------------------------------------------------
    def topologies_section(self, doc: dict[str, Any]) -> None:
        topologies = self.required_list(doc, "topologies", "", "topology mappings")
        for i, topo in enumerate(topologies):
            path = f"topologies[{i}]"
            if not self.check_object(topo, path, TopologyMapping):
                continue
            names = self.topology_networks(topo, path)
            groups = self.required_list(topo, "map", path, "host groups")
            own_hosts: dict[str, str] = {}
            self.group_list(groups, f"{path}.map", own_hosts)
            for name in names:
                cidr, mask = self.networks[name]
                self.check_carving(groups, f"{path}.map", cidr.prefixlen, name, cidr, mask)

    def topology_networks(self, topo: dict[str, Any], path: str) -> list[str]:
        usable: list[str] = []
        for j, name in enumerate(self.required_list(topo, "networks", path, "network names")):
            where = f"{path}.networks[{j}]"
            if not isinstance(name, str):
                self.problems.error(where, f"expected a network name, got {describe(name)}")
                continue
            if name in self.used_networks:
                first = self.used_networks[name]
                same = first.rsplit(".networks", 1)[0] == path
                self.problems.error(
                    where,
                    f'network "{name}" listed twice'
                    if same
                    else f'network "{name}" is already used by {first}',
                    "a network belongs to exactly one topology",
                )
                continue
            self.used_networks[name] = where
            if name not in self.networks:
                # Only report undefined names; a defined but invalid network has its own error.
                if not any(
                    isinstance(n, dict) and n.get("name") == name for n in self.raw_networks
                ):
                    close = difflib.get_close_matches(name, [str(k) for k in self.defined], n=1)
                    hint = f'did you mean "{close[0]}"?' if close else "define it under networks"
                    self.problems.error(where, f'network "{name}" is not defined', hint)
                continue
            usable.append(name)
        return usable

    def group_list(
        self, groups: Iterable[Any], path: str, own_hosts: dict[str, str], depth: int = 1
    ) -> None:
        if depth > MAX_GROUP_DEPTH:
            self.problems.error(
                path,
                f"groups nested more than {MAX_GROUP_DEPTH} levels deep",
                "a datacenter map has a few levels (zone, row, rack): flatten the map",
            )
            return
        sibling_names: dict[str, int] = {}
        for k, group in enumerate(groups):
            where = f"{path}[{k}]"
            if not self.check_object(group, where, HostGroup):
                continue
            name = group.get("name")
            if name is not None:
                if (reason := names.GROUP.problem(name)) is not None:
                    self.problems.error(
                        f"{where}.name", reason, "names form group paths like zone-a/rack-3"
                    )
                elif name in sibling_names:
                    self.problems.error(
                        f"{where}.name",
                        f'duplicate group name "{name}" among siblings',
                        f"{path}[{sibling_names[name]}] has it too; group "
                        "paths must be unambiguous",
                    )
                else:
                    sibling_names[name] = k
            self.assignment(group, where)
            routing = group.get("routing")
            if routing is not None and not isinstance(routing, str):
                self.problems.error(
                    f"{where}.routing",
                    f"expected a string, got {describe(routing)}",
                    'e.g. "block-host-routes"',
                )
            elif routing is not None:
                for token in routing_modes.unknown_tokens(routing):
                    self.problems.error(
                        f"{where}.routing",
                        f'unknown routing mode "{token}"',
                        "known: " + ", ".join(routing_modes.KNOWN),
                    )
                if not routing_modes.tokens(routing):
                    self.problems.error(
                        f"{where}.routing",
                        "empty routing value",
                        'omit the field to inherit, or e.g. "block-host-routes"',
                    )
            has_hosts, has_groups = group.get("hosts") is not None, group.get("groups") is not None
            if has_hosts and has_groups:
                self.problems.error(
                    where, 'both "hosts" and "groups" given', "a host group has one or the other"
                )
            elif not has_hosts and not has_groups:
                self.problems.error(
                    where,
                    'neither "hosts" nor "groups" given',
                    'use "groups": [] for a leaf group that receives hosts',
                )
            if has_hosts:
                self.hosts(group["hosts"], f"{where}.hosts", own_hosts)
            if has_groups:
                sub = group["groups"]
                if not isinstance(sub, list):
                    self.problems.error(
                        f"{where}.groups", f"expected a list of host groups, got {describe(sub)}"
                    )
                else:
                    self.group_list(sub, f"{where}.groups", own_hosts, depth + 1)

    def assignment(self, group: dict[str, Any], where: str) -> None:
        value = group.get("assignment")
        if value is None:
            return
        if not isinstance(value, dict):
            self.problems.error(
                f"{where}.assignment", f"expected an object of label: value, got {describe(value)}"
            )
            return
        for key, label in value.items():
            if not isinstance(label, str):
                self.problems.error(
                    f"{where}.assignment.{_key_text(key)}",
                    f"expected a string label value, got {describe(label)}",
                    'quote numbers, e.g. "1"',
                )
        for _key, reason in names.label_problems(
            {k: v for k, v in value.items() if isinstance(v, str)}
        ):
            self.problems.error(f"{where}.assignment", reason)

    def hosts(self, hosts: Any, path: str, own_hosts: dict[str, str]) -> None:
        if not isinstance(hosts, list):
            self.problems.error(path, f"expected a list of hosts, got {describe(hosts)}")
            return
        for h, host in enumerate(hosts):
            where = f"{path}[{h}]"
            if not self.check_object(host, where, Host):
                continue
            name = self.named(host, "name", where, names.HOST)
            ip = self.host_ip(host, where)
            if name is None:
                continue
            if name in own_hosts:
                self.problems.error(
                    f"{where}.name",
                    f'duplicate host name "{name}"',
                    f"already listed at {own_hosts[name]}",
                )
                continue
            own_hosts[name] = where
            if ip is None:
                continue
            known = self.host_names.get(name)
            if known is not None and known[0] != ip:
                self.problems.error(
                    f"{where}.ip",
                    f'host "{name}" has IP {ip} here but {known[0]} at {known[1]}',
                    "a host has one IP",
                )
            by_ip = self.host_ips.get(ip)
            if by_ip is not None and by_ip[0] != name:
                self.problems.error(
                    f"{where}.ip",
                    f"duplicate host IP {ip}",
                    f'already used by host "{by_ip[0]}" at {by_ip[1]}',
                )
            self.host_names.setdefault(name, (ip, where))
            self.host_ips.setdefault(ip, (name, where))

    def host_ip(self, host: dict[str, Any], where: str) -> str | None:
        text = self.required_string(host, "ip", where)
        if text is None:
            return None
        try:
            ip = IPv4Address(canonical_ip(text))
        except AddressValueError:
            self.problems.error(
                f"{where}.ip",
                f'"{text}" is not an IPv4 address',
                'write it like "192.168.1.10" (no prefix length)',
            )
            return None
        for net_name, (cidr, _) in self.networks.items():
            if ip in cidr:
                self.problems.error(
                    f"{where}.ip",
                    f'host IP {ip} lies inside pod network "{net_name}" ({cidr})',
                    "host and pod ranges must differ",
                )
        return str(ip)

    def check_carving(
        self, groups: list[Any], path: str, prefix: int, net_name: str, cidr: IPv4Network, mask: int
    ) -> None:
        child_prefix = prefix + child_prefix_bits(len(groups))
        for k, group in enumerate(groups):
            if not isinstance(group, dict):
                continue
            where = f"{path}[{k}]"
            sub = group.get("groups")
            if group.get("hosts") is None and isinstance(sub, list) and sub:
                self.check_carving(sub, f"{where}.groups", child_prefix, net_name, cidr, mask)
            elif child_prefix > mask:
                self.problems.error(
                    where,
                    f'leaf group gets a /{child_prefix} of network "{net_name}" ({cidr}), '
                    f"smaller than one /{mask} block",
                    "use a larger network CIDR, fewer groups, or a longer block_mask",
                )
                return  # siblings share the same size: one report per level is enough

    # -- whole document -------------------------------------------------------------
    def document(self, doc: Any) -> None:
        if not self.check_object(doc, "", Topology):
            return
        for path, message in limit_problems(doc):
            self.problems.error(path, message)
        if self.problems.errors:
            return
        raw = doc.get("networks")
        self.raw_networks = raw if isinstance(raw, list) else []
        self.defined = [
            n.get("name")
            for n in self.raw_networks
            if isinstance(n, dict) and isinstance(n.get("name"), str)
        ]
        self.networks_section(doc)
        self.cluster_ranges_section(doc)
        self.topologies_section(doc)
        for i, net in enumerate(self.raw_networks):
            name = net.get("name") if isinstance(net, dict) else None
            if isinstance(name, str) and name not in self.used_networks:
                self.problems.warning(
                    f"networks[{i}]",
                    f'network "{name}" is in no topology',
                    "no host can get addresses from it",
                )


def validate(doc: Any, service_cidr: str | IPv4Network | None = None) -> list[Problem]:
    """Every problem of ``doc`` (errors and warnings), in document order."""
    svc = IPv4Network(service_cidr) if isinstance(service_cidr, str) else service_cidr
    walker = _Walker(svc)
    walker.document(doc)
    return walker.problems.items


def check(
    doc: Any, service_cidr: str | IPv4Network | None = None
) -> tuple[Topology, list[Problem]]:
    """The typed topology and its warnings, or :class:`InvalidTopology` with every error."""
    problems = validate(doc, service_cidr)
    if any(p.severity == "error" for p in problems):
        raise InvalidTopology(problems)
    return Topology.model_validate(doc), [p for p in problems if p.severity == "warning"]


def _key_text(key: str) -> str:
    """A document key for a problem's path: as it is when harmless, escaped otherwise."""
    return key if names.LABEL_NAME.problem(key) is None else names.show(key)
