"""Compile the policies that protect one host's endpoints into an nftables ruleset.

Shape (one table of the agent's own, ``inet romana``)::

    chain egress  (forward hook)   ct established,related accept; ip saddr vmap @egress_of
    chain ingress (forward hook)   ct established,related accept; ip daddr vmap @ingress_of
    map ingress_of  local endpoint IP -> jump in_<S>   (only endpoints some policy isolates)
    chain in_<S>    jump p_<P>_in for each policy P of the set S ...; drop
    chain p_<P>_in  per allow entry: one rule per kind of peer and kind of port ... accept

Egress and ingress are two base chains on the forward hook, so an ``accept`` of the
source's egress does not skip the destination's ingress when both are on this host.
Endpoints selected by the same set of policies share one verdict chain: a new pod, or a
relabelled one, whose set of policies already has a chain is one map element.

Nothing multiplies. An allow entry's ports become at most two matches plus one per ICMP
entry (numbered ports and ranges as one ``protocol . port`` interval set ``t_*``, named
ports as one ``ip . protocol . port`` set ``n_*`` resolved on the destination), and its
peers one match per pod selector (a set of IPs ``e_*``), one for all its address blocks
(an interval set ``c_*`` with every ``except`` cut out) and one for the hosts: an entry
costs (peer matches x port matches) rules, linear in what it lists: 1,000 blocks x 1,000
ports is one rule and two sets of 1,000 elements, not 1,000,000 rules. A match with one
element is written inline instead of as a set. Sets are named by their content, so
policies that say the same thing share them, and selector changes are set updates, not
rule changes. Traffic from the host itself (output hook) is never filtered.

Size is still bounded: a policy whose rules plus the elements of the sets they use exceed
``Budget.policy`` on this host, or that would take the table past ``Budget.table``, is
refused here (fail closed: it isolates its endpoints and allows nothing) and reported
with the reason, so one namespace's policy cannot stall every other one's on the node.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from romana.policy.inputs import PolicyInputs
from romana.policy.model import (
    Allow,
    Block,
    Endpoint,
    Endpoints,
    Hosts,
    NamedPort,
    Policy,
    Port,
)

TABLE = "romana"
FAMILY = "inet"
TRANSPORTS = ("tcp", "udp", "sctp")  # the protocols with ports
Interval = tuple[int, int]  # inclusive bounds
NamedPorts = tuple[tuple[str, str], ...]  # ((port name, protocol), ...), sorted
SetPeer = Endpoints | Hosts  # a peer whose members are IPs in a set


@dataclass(frozen=True, slots=True)
class NftSet:
    name: str
    type: str  # "ipv4_addr", "ipv4_addr . inet_proto . inet_service", "ipv4_addr : verdict"
    elements: frozenset[str]  # rendered: "10.1.0.3", "10.1.0.3 . tcp . 80", "10.1.0.3 : jump x"
    flags: str = ""  # "interval" for ranges and prefixes

    @property
    def is_map(self) -> bool:
        return ":" in self.type

    def key(self, element: str) -> str:
        return element.split(" : ", 1)[0]


@dataclass(frozen=True, slots=True)
class Budget:
    """Upper bounds on what the policies of one host may compile to, in rules plus set
    elements: ``policy`` for one policy (counting every element of every set its rules
    use), ``table`` for the whole table. nft loads 100,000 elements in ~0.8 s here and
    1,000,000 in ~8 s (docs/benchmarks.md): a policy is added within a second, and no
    load of the whole table takes much longer than a CNI ADD waits."""

    policy: int = 100_000  # romana-agent --policy-max-size
    table: int = 1_000_000  # romana-agent --policy-max-table


@dataclass
class Ruleset:
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)  # regular chains
    sets: dict[str, NftSet] = field(default_factory=dict)
    isolated: dict[str, tuple[str, ...]] = field(default_factory=dict)  # endpoint -> keys
    policies: dict[str, str] = field(default_factory=dict)  # policy key -> chain prefix
    # What :mod:`romana.policy.incremental` needs to update members without a compile:
    peer_sets: dict[str, SetPeer] = field(default_factory=dict)  # set -> its selector
    named_sets: dict[str, NamedPorts] = field(default_factory=dict)  # set -> ports it holds
    ips: dict[str, str] = field(default_factory=dict)  # every endpoint's IP, by name
    broken: frozenset[str] = frozenset()  # refused by this host's nft (see the agent)
    oversized: dict[str, str] = field(default_factory=dict)  # policy key -> why refused
    uses: dict[str, frozenset[str]] = field(default_factory=dict)  # policy key -> its sets
    budget: Budget = Budget()

    @property
    def rules(self) -> int:
        return sum(len(rules) for rules in self.chains.values()) + 6  # + the base chains

    @property
    def elements(self) -> int:
        return sum(len(s.elements) for s in self.sets.values())

    def shape(self) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, str]]]:
        """What a set update cannot change: the chains and the sets' types."""
        return self.chains, {name: (s.type, s.flags) for name, s in self.sets.items()}

    def policy_size(self, key: str) -> int:
        """Rules of ``key``'s chains plus the elements of every set they use."""
        prefix = self.policies[key]
        rules = sum(len(self.chains.get(f"{prefix}_{d}", ())) for d in ("in", "out"))
        return rules + sum(len(self.sets[name].elements) for name in self.uses.get(key, ()))

    def over_budget(self, touched: set[str] | None = None) -> bool:
        """Whether the table, or a policy using a set in ``touched`` (None: any policy),
        is now past its bound (after set updates)."""
        if self.rules + self.elements > self.budget.table:
            return True
        return any(
            self.policy_size(key) > self.budget.policy
            for key, sets in self.uses.items()
            if touched is None or not sets.isdisjoint(touched)
        )


def compile_host(
    inputs: PolicyInputs,
    host: str,
    broken: frozenset[str] = frozenset(),
    budget: Budget = Budget(),
) -> Ruleset:
    """The ruleset of ``host``; policies in ``broken`` (refused by this host's nft) and
    policies over ``budget`` keep isolating their endpoints but allow nothing: fail
    closed."""
    return _Compiler(inputs, host, broken, budget).run()


def policy_id(key: str) -> str:
    return _digest(key)


def verdict_chain(direction: str, chains: list[str]) -> str:
    """The chain shared by endpoints whose policies' chains (in order) are ``chains``."""
    return f"{direction}_{_digest('|'.join(chains))}"


@functools.lru_cache(maxsize=16384)
def peer_set_name(peer: SetPeer, host: str) -> str:
    """The set of the IPs of the endpoints (or hosts) ``peer`` selects."""
    if isinstance(peer, Hosts):
        return "hosts"
    ident = json.dumps(peer.to_json(), sort_keys=True)
    if peer.same_host:
        ident += host  # "on the protected endpoint's host" differs per host
    return f"e_{_digest(ident)}"


def named_set_name(ports: NamedPorts) -> str:
    if len(ports) == 1:  # readable: n_tcp_http ('_' is in no port name)
        name, protocol = ports[0]
        return f"n_{protocol}_{name.replace('-', '_')}"
    return f"n_{_digest('|'.join(f'{n}/{p}' for n, p in ports))}"


def named_elements(endpoint: Endpoint, wanted: NamedPorts) -> set[str]:
    """The elements ``endpoint`` puts into a named-port set holding ``wanted``."""
    pairs = set(wanted)
    return {_named_element(endpoint, p) for p in endpoint.ports if (p.name, p.protocol) in pairs}


def _named_element(endpoint: Endpoint, port: NamedPort) -> str:
    return f"{endpoint.ip} . {port.protocol} . {port.port}"


DIRECTIONS = (("in", "ingress", "ingress_of"), ("out", "egress", "egress_of"))


class _Draft:
    """One policy's rules and the sets they use, counted, until it is accepted."""

    def __init__(self) -> None:
        self.chains: dict[str, tuple[str, ...]] = {}
        self.sets: dict[str, NftSet] = {}
        self.peer_sets: dict[str, SetPeer] = {}
        self.named_sets: dict[str, NamedPorts] = {}
        self.size = 0  # rules + elements of every set used

    def use(self, nft_set: NftSet) -> None:
        if nft_set.name not in self.sets:
            self.sets[nft_set.name] = nft_set
            self.size += len(nft_set.elements)


class _Compiler:
    def __init__(
        self, inputs: PolicyInputs, host: str, broken: frozenset[str], budget: Budget
    ) -> None:
        self.inputs = inputs
        self.host = host
        self.broken = broken
        self.budget = budget
        self.out = Ruleset(broken=broken, budget=budget)
        self.index = inputs.index()
        self._index_named()

    def run(self) -> Ruleset:
        ingress_of: dict[str, list[str]] = {}
        egress_of: dict[str, list[str]] = {}
        used = 0  # rules and set elements so far (the table's budget)
        for key in sorted(self.inputs.policies):
            policy = self.inputs.policies[key]
            targets = self._targets(policy)
            if not targets:
                continue
            prefix = f"p_{policy_id(key)}"
            self.out.policies[key] = prefix
            for ep in targets:
                self.out.isolated[ep.name] = (*self.out.isolated.get(ep.name, ()), key)
            draft = _Draft()
            if key not in self.broken:
                why = self._policy(policy, draft, used)
                if why is not None:
                    draft = _Draft()
                    self.out.oversized[key] = why
            for direction, allows, chosen in (
                ("in", policy.ingress, ingress_of),
                ("out", policy.egress, egress_of),
            ):
                if allows is None:
                    continue
                self.out.chains[f"{prefix}_{direction}"] = draft.chains.get(direction, ())
                for ep in targets:
                    chosen.setdefault(ep.ip, []).append(f"{prefix}_{direction}")
            used += sum(map(len, draft.chains.values()))
            for name, nft_set in draft.sets.items():
                if name not in self.out.sets:
                    self.out.sets[name] = nft_set
                    used += len(nft_set.elements)
            self.out.peer_sets.update(draft.peer_sets)
            self.out.named_sets.update(draft.named_sets)
            self.out.uses[key] = frozenset(draft.sets)
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

    # -- one policy ---------------------------------------------------------------------
    def _policy(self, policy: Policy, draft: _Draft, used: int) -> str | None:
        """Fill ``draft`` with the policy's rules and sets; or say why it is refused."""
        for direction, allows in (("in", policy.ingress), ("out", policy.egress)):
            rules: list[str] = []
            for allow in allows or ():
                added = self._rules(allow, direction, draft)
                rules += added
                draft.size += len(added)
                if draft.size > self.budget.policy:
                    return (
                        f"compiles to more than {self.budget.policy:,} rules and set elements "
                        "on this host (romana-agent --policy-max-size)"
                    )
            draft.chains[direction] = tuple(rules)
        fresh = sum(len(s.elements) for n, s in draft.sets.items() if n not in self.out.sets)
        if used + sum(map(len, draft.chains.values())) + fresh > self.budget.table:
            return (
                f"would take this host's table past {self.budget.table:,} rules and set "
                "elements (romana-agent --policy-max-table)"
            )
        return None

    def _rules(self, allow: Allow, direction: str, draft: _Draft) -> list[str]:
        side = "saddr" if direction == "in" else "daddr"
        peers = [""] if allow.peers is None else self._peer_matches(allow.peers, side, draft)
        ports = [""] if allow.ports is None else self._port_matches(allow.ports, draft)
        return [" ".join(filter(None, (peer, port, "accept"))) for peer in peers for port in ports]

    def _peer_matches(
        self, peers: Sequence[Endpoints | Block | Hosts], side: str, draft: _Draft
    ) -> list[str]:
        blocks = tuple(p for p in peers if isinstance(p, Block))
        matches = []
        if blocks:
            elements = block_elements(blocks)
            if elements is None:
                return [""]  # any address: the other peers add nothing
            if len(elements) == 1:
                matches.append(f"ip {side} {elements[0]}")
            else:
                name = f"c_{_digest('|'.join(elements))}"
                draft.use(self._shared(name, "ipv4_addr", elements, "interval"))
                matches.append(f"ip {side} @{name}")
        # One set per selector, not one per entry: the same selector recurs across a
        # cluster's policies (shared sets), while unions of selectors rarely do.
        for selector in dict.fromkeys(p for p in peers if isinstance(p, Endpoints)):
            matches.append(f"ip {side} @{self._ip_set(selector, draft)}")
        if any(isinstance(p, Hosts) for p in peers):
            matches.append(f"ip {side} @{self._ip_set(Hosts(), draft)}")
        return matches

    def _ip_set(self, peer: SetPeer, draft: _Draft) -> str:
        name = peer_set_name(peer, self.host)
        if name not in draft.sets:
            found = self.out.sets.get(name)
            if found is None:  # a selector used by several policies: one set
                found = NftSet(name, "ipv4_addr", frozenset(self.index.peer_ips(peer, self.host)))
                draft.peer_sets[name] = peer
            draft.use(found)
        return name

    def _port_matches(self, ports: tuple[Port, ...], draft: _Draft) -> list[str]:
        plan = port_plan(ports)
        matches = list(plan.inline)
        if plan.elements:
            name = f"t_{_digest('|'.join(plan.elements))}"
            draft.use(self._shared(name, "inet_proto . inet_service", plan.elements, "interval"))
            matches.append(f"meta l4proto . th dport @{name}")
        if plan.named:
            name = self._named_set(plan.named, draft)
            matches.append(f"ip daddr . meta l4proto . th dport @{name}")
        return matches

    def _shared(self, name: str, type_: str, elements: Sequence[str], flags: str) -> NftSet:
        """A set whose elements are its name's content (address blocks, port ranges)."""
        return self.out.sets.get(name) or NftSet(name, type_, frozenset(elements), flags)

    # -- named ports ----------------------------------------------------------------------
    def _index_named(self) -> None:
        self.by_name: dict[tuple[str, str], set[str]] = {}
        for ep in self.inputs.endpoints.values():
            for p in ep.ports:
                self.by_name.setdefault((p.name, p.protocol), set()).add(_named_element(ep, p))

    def _named_set(self, ports: NamedPorts, draft: _Draft) -> str:
        name = named_set_name(ports)
        if name not in draft.sets:
            found = self.out.sets.get(name)
            if found is None:
                elements: set[str] = set()
                for pair in ports:
                    elements |= self.by_name.get(pair, set())
                found = NftSet(name, "ipv4_addr . inet_proto . inet_service", frozenset(elements))
                draft.named_sets[name] = ports
            draft.use(found)
        return name


# -- what an allow entry's ports and blocks compile to (cached: policies repeat them, and a
# compile that parses them again makes garbage the collector then walks the inputs for) ---
@dataclass(frozen=True, slots=True)
class PortPlan:
    inline: tuple[str, ...]  # matches written in the rule (ICMP; a single span)
    elements: tuple[str, ...]  # "tcp . 80-90" of a port set, if more than one span
    named: NamedPorts  # named ports, for an ip . protocol . port set


@functools.lru_cache(maxsize=4096)
def port_plan(ports: tuple[Port, ...]) -> PortPlan:
    inline = [_icmp(p) for p in ports if p.protocol == "icmp"]
    numbered: dict[str, list[Interval]] = {}
    for port in ports:
        if port.protocol != "icmp" and port.name is None:
            low = 0 if port.port is None else port.port
            high = 65535 if port.port is None else (port.end_port or port.port)
            numbered.setdefault(port.protocol, []).append((low, high))
    spans = [
        (protocol, low, high)
        for protocol in TRANSPORTS
        if protocol in numbered
        for low, high in _merge(numbered[protocol])
    ]
    elements: list[str] = []
    if len(spans) == 1:
        protocol, low, high = spans[0]
        match = f"meta l4proto {protocol}"
        inline.append(
            match if (low, high) == (0, 65535) else f"{match} th dport {_span(low, high)}"
        )
    else:
        elements = [f"{protocol} . {_span(low, high)}" for protocol, low, high in spans]
    named = tuple(sorted({(p.name, p.protocol) for p in ports if p.name is not None}))
    return PortPlan(tuple(inline), tuple(elements), named)


@functools.lru_cache(maxsize=4096)
def block_elements(blocks: tuple[Block, ...]) -> tuple[str, ...] | None:
    """The elements of an interval set holding ``blocks``; None: every address."""
    intervals = block_intervals(blocks)
    if intervals == [(0, ALL_IPV4)]:
        return None
    return tuple(_render_interval(low, high) for low, high in intervals)


# -- address blocks as intervals ---------------------------------------------------------------
ALL_IPV4 = (1 << 32) - 1


def block_intervals(blocks: Iterable[Block]) -> list[Interval]:
    """The addresses in any of ``blocks`` (each its CIDR minus its excepts), as sorted,
    disjoint, non-adjacent inclusive intervals."""
    found: list[Interval] = []
    for block in blocks:
        net = ipaddress.IPv4Network(block.cidr)
        holes = _merge(_bounds(ipaddress.IPv4Network(e)) for e in block.excluded)
        low, high = _bounds(net)
        for hole_low, hole_high in holes:
            if hole_low > low:
                found.append((low, hole_low - 1))
            low = max(low, hole_high + 1)
        if low <= high:
            found.append((low, high))
    return _merge(found)


def _bounds(net: ipaddress.IPv4Network) -> Interval:
    return int(net.network_address), int(net.broadcast_address)


def _merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, overlapping or touching intervals joined (nft refuses overlaps in a set)."""
    out: list[Interval] = []
    for low, high in sorted(intervals):
        if out and low <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out


def _render_interval(low: int, high: int) -> str:
    first = ipaddress.IPv4Address(low)
    if low == high:
        return str(first)
    size = high - low + 1
    if size & (size - 1) == 0 and low % size == 0:  # an aligned prefix: its CIDR
        return f"{first}/{32 - size.bit_length() + 1}"
    return f"{first}-{ipaddress.IPv4Address(high)}"


def _span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def _icmp(port: Port) -> str:
    match = "meta l4proto icmp"
    if port.icmp_type is not None:
        match += f" icmp type {port.icmp_type}"
    if port.icmp_code is not None:
        match += f" icmp code {port.icmp_code}"
    return match


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


__all__ = [
    "DIRECTIONS",
    "FAMILY",
    "TABLE",
    "Budget",
    "NftSet",
    "Ruleset",
    "block_intervals",
    "compile_host",
    "named_elements",
    "named_set_name",
    "peer_set_name",
    "policy_id",
    "verdict_chain",
]
