"""Compile the policies that protect one host's endpoints into an nftables ruleset.

Shape (one table of the agent's own, ``inet romana``)::

    chain egress  (forward hook)   ct established,related accept; ip saddr vmap @egress_of
    chain ingress (forward hook)   ct established,related accept; ip daddr vmap @ingress_of
    map ingress_of  local endpoint IP -> jump in_<S>   (only endpoints some policy isolates)
    chain in_<S>    jump p_<P>_in for each policy P of the set S ...; drop
    chain p_<P>_in  one rule per (peer, port) of P: ... accept

Egress and ingress are two base chains on the forward hook, so an ``accept`` of the
source's egress does not skip the destination's ingress when both are on this host.
Endpoints selected by the same set of policies share one verdict chain: a new pod, or a
relabelled one, whose set of policies already has a chain is one map element, and peers
are sets of IPs (``e_*``), so selector changes are set updates, not rule changes. Named
ports are a set of ``ip . port`` per name and protocol, which resolves the name on the
destination endpoint. Traffic from the host itself (output hook) is never filtered.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from romana.policy.inputs import PolicyInputs
from romana.policy.model import Allow, Block, Endpoint, Endpoints, Hosts, Peer, Policy, Port

TABLE = "romana"
FAMILY = "inet"


@dataclass(frozen=True, slots=True)
class NftSet:
    name: str
    type: str  # "ipv4_addr", "ipv4_addr . inet_service", "ipv4_addr : verdict"
    elements: frozenset[str]  # rendered: "10.1.0.3", "10.1.0.3 . 80", "10.1.0.3 : jump in_x"

    @property
    def is_map(self) -> bool:
        return ":" in self.type

    def key(self, element: str) -> str:
        return element.split(" : ", 1)[0]


@dataclass
class Ruleset:
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)  # regular chains
    sets: dict[str, NftSet] = field(default_factory=dict)
    isolated: dict[str, tuple[str, ...]] = field(default_factory=dict)  # endpoint -> keys
    policies: dict[str, str] = field(default_factory=dict)  # policy key -> chain prefix
    # What :mod:`romana.policy.incremental` needs to update members without a compile:
    peer_sets: dict[str, Endpoints | Hosts] = field(default_factory=dict)  # set -> selector
    named_sets: dict[str, tuple[str, str]] = field(default_factory=dict)  # set -> name, proto
    ips: dict[str, str] = field(default_factory=dict)  # every endpoint's IP, by name
    broken: frozenset[str] = frozenset()

    @property
    def rules(self) -> int:
        return sum(len(rules) for rules in self.chains.values()) + 6  # + the base chains

    @property
    def elements(self) -> int:
        return sum(len(s.elements) for s in self.sets.values())

    def shape(self) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
        """What a set update cannot change: the chains and the sets' types."""
        return self.chains, {name: s.type for name, s in self.sets.items()}


def compile_host(inputs: PolicyInputs, host: str, broken: frozenset[str] = frozenset()) -> Ruleset:
    """The ruleset of ``host``; policies in ``broken`` (refused by this host's nft) keep
    isolating their endpoints but allow nothing: fail closed."""
    return _Compiler(inputs, host, broken).run()


def policy_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def verdict_chain(direction: str, chains: list[str]) -> str:
    """The chain shared by endpoints whose policies' chains (in order) are ``chains``."""
    return f"{direction}_{hashlib.sha256('|'.join(chains).encode()).hexdigest()[:12]}"


DIRECTIONS = (("in", "ingress", "ingress_of"), ("out", "egress", "egress_of"))


class _Compiler:
    def __init__(self, inputs: PolicyInputs, host: str, broken: frozenset[str]) -> None:
        self.inputs = inputs
        self.host = host
        self.broken = broken
        self.out = Ruleset(broken=broken)
        self.index = inputs.index()
        self._index_named()

    def run(self) -> Ruleset:
        ingress_of: dict[str, list[str]] = {}
        egress_of: dict[str, list[str]] = {}
        for key in sorted(self.inputs.policies):
            policy = self.inputs.policies[key]
            targets = self._targets(policy)
            if not targets:
                continue
            prefix = f"p_{policy_id(key)}"
            self.out.policies[key] = prefix
            for ep in targets:
                self.out.isolated[ep.name] = (*self.out.isolated.get(ep.name, ()), key)
            for direction, allows, chosen in (
                ("in", policy.ingress, ingress_of),
                ("out", policy.egress, egress_of),
            ):
                if allows is None:
                    continue
                rules: list[str] = []
                if key not in self.broken:
                    for allow in allows:
                        rules += self._rules(allow, direction)
                self.out.chains[f"{prefix}_{direction}"] = tuple(rules)
                for ep in targets:
                    chosen.setdefault(ep.ip, []).append(f"{prefix}_{direction}")
        self._verdicts("ingress_of", "in", ingress_of)
        self._verdicts("egress_of", "out", egress_of)
        self.out.ips = {name: ep.ip for name, ep in self.inputs.endpoints.items()}
        return self.out

    def _targets(self, policy: Policy) -> list[Endpoint]:
        """This host's endpoints ``policy`` protects, in a stable order."""
        found: dict[str, Endpoint] = {}
        for chosen in policy.applied_to:
            for ep in self.index.members(chosen, self.host, on=self.host):
                found[ep.name] = ep
        return [found[name] for name in sorted(found)]

    def _verdicts(self, name: str, direction: str, chains_of: dict[str, list[str]]) -> None:
        elements = set()
        for ip, chains in chains_of.items():
            chain = verdict_chain(direction, chains)
            if chain not in self.out.chains:
                self.out.chains[chain] = (*(f"jump {c}" for c in chains), "drop")
            elements.add(f"{ip} : jump {chain}")
        self.out.sets[name] = NftSet(name, "ipv4_addr : verdict", frozenset(elements))

    # -- one allow entry ------------------------------------------------------------------
    def _rules(self, allow: Allow, direction: str) -> list[str]:
        side = "saddr" if direction == "in" else "daddr"
        peers = [""] if allow.peers is None else [self._peer(p, side) for p in allow.peers]
        ports = [""] if allow.ports is None else [self._port(p) for p in allow.ports]
        return [" ".join(filter(None, (peer, port, "accept"))) for peer in peers for port in ports]

    def _peer(self, peer: Peer, side: str) -> str:
        if isinstance(peer, Block):
            match = "" if peer.cidr == "0.0.0.0/0" else f"ip {side} {peer.cidr}"
            if peer.excluded:
                match += f" ip {side} != {{ {', '.join(peer.excluded)} }}"
            return match.strip()
        if isinstance(peer, Hosts):
            return f"ip {side} @{self._ip_set('hosts', peer)}"
        assert isinstance(peer, Endpoints)
        ident = json.dumps(peer.to_json(), sort_keys=True)
        if peer.same_host:
            ident += self.host
        name = f"e_{hashlib.sha256(ident.encode()).hexdigest()[:12]}"
        return f"ip {side} @{self._ip_set(name, peer)}"

    def _ip_set(self, name: str, peer: Endpoints | Hosts) -> str:
        if name not in self.out.sets:  # a selector used by several policies: one set
            ips = self.index.peer_ips(peer, self.host)
            self.out.sets[name] = NftSet(name, "ipv4_addr", frozenset(ips))
            self.out.peer_sets[name] = peer
        return name

    def _port(self, port: Port) -> str:
        match = f"meta l4proto {port.protocol}"
        if port.protocol == "icmp":
            if port.icmp_type is not None:
                match += f" icmp type {port.icmp_type}"
            if port.icmp_code is not None:
                match += f" icmp code {port.icmp_code}"
            return match
        if port.name is not None:
            return f"{match} ip daddr . th dport @{self._named_set(port.name, port.protocol)}"
        if port.port is not None:
            span = (
                port.port if port.end_port in (None, port.port) else f"{port.port}-{port.end_port}"
            )
            match += f" th dport {span}"
        return match

    # -- named ports ----------------------------------------------------------------------
    def _index_named(self) -> None:
        self.by_name: dict[tuple[str, str], set[str]] = {}
        for ep in self.inputs.endpoints.values():
            for p in ep.ports:
                self.by_name.setdefault((p.name, p.protocol), set()).add(f"{ep.ip} . {p.port}")

    def _named_set(self, name: str, protocol: str) -> str:
        set_name = f"n_{protocol}_{name.replace('-', '_')}"  # '_' is in no port name
        if set_name not in self.out.sets:
            elements = frozenset(self.by_name.get((name, protocol), ()))
            self.out.sets[set_name] = NftSet(set_name, "ipv4_addr . inet_service", elements)
            self.out.named_sets[set_name] = (name, protocol)
        return set_name


__all__ = [
    "DIRECTIONS",
    "FAMILY",
    "TABLE",
    "NftSet",
    "Ruleset",
    "compile_host",
    "policy_id",
    "verdict_chain",
]
