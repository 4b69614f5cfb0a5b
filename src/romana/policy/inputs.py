"""Everything policies are evaluated over: endpoints, tenant labels, host IPs, policies.

romanad serves it as one document (``GET /policy/state``); an agent loads that, then keeps
it current from the changes feed (:meth:`PolicyInputs.follow`) and compiles its host's
rules from it. Which endpoints a selector picks is decided here, once
(:class:`Selection`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from romana import wire
from romana.policy.model import (
    Endpoint,
    Endpoints,
    Hosts,
    NamedPort,
    Policy,
    Selector,
    tenant_labels,
)
from romana.responses import PolicyState

# Facts that change what policies see (``follow`` applies them; the rest are ignored).
POLICY_FACTS = frozenset(
    {
        wire.BLOCK_ASSIGNED,
        wire.BLOCK_FREED,
        wire.ADDRESS_ALLOCATED,
        wire.ADDRESS_RELEASED,
        wire.TOPOLOGY_APPLIED,
        wire.HOST_ADDED,
        wire.HOST_REMOVED,
        wire.ENDPOINT_LABELED,
        wire.TENANT_LABELED,
        wire.POLICY_ADDED,
        wire.POLICY_REMOVED,
    }
)


ENDPOINT_FACTS = frozenset({wire.ADDRESS_ALLOCATED, wire.ADDRESS_RELEASED, wire.ENDPOINT_LABELED})


@dataclass
class Changed:
    """What feed changes (or a CNI command) changed: endpoints by name, tenants whose labels
    changed, and whether anything else did (policies, hosts)."""

    endpoints: set[str] = field(default_factory=set)
    tenants: set[str] = field(default_factory=set)
    structural: bool = False

    def __bool__(self) -> bool:
        return self.structural or bool(self.endpoints or self.tenants)

    def merge(self, other: Changed) -> None:
        self.endpoints |= other.endpoints
        self.tenants |= other.tenants
        self.structural = self.structural or other.structural


@dataclass
class PolicyInputs:
    revision: int = 0
    store_id: str | None = None
    endpoints: dict[str, Endpoint] = field(default_factory=dict)  # by address name
    tenants: dict[str, dict[str, str]] = field(default_factory=dict)  # explicit labels
    hosts: dict[str, str] = field(default_factory=dict)  # name -> IP
    policies: dict[str, Policy] = field(default_factory=dict)
    # Feed bookkeeping: block owners, to know an allocated address's host and tenant.
    blocks: dict[tuple[int, int], tuple[str, str, str]] = field(default_factory=dict)
    # Which endpoint holds each IP: never two (a second would merge their policies).
    ip_owners: dict[str, str] = field(default_factory=dict)

    # -- selection ------------------------------------------------------------------------
    def tenant_of(self, name: str) -> dict[str, str]:
        return tenant_labels(name, self.tenants.get(name, {}))

    def index(self) -> Selection:
        """A selection index over the inputs as they are now (rebuild after a change)."""
        return Selection(self)

    # -- the wire -------------------------------------------------------------------------
    def to_json(self) -> PolicyState:
        return {
            "revision": self.revision,
            "store_id": self.store_id,
            "tenants": self.tenants,
            "hosts": self.hosts,
            "endpoints": [endpoint_json(ep) for ep in self.endpoints.values()],
            "blocks": [[_cidr(b, p), *owner] for (b, p), owner in sorted(self.blocks.items())],
            "policies": [p.to_json() for p in self.policies.values()],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PolicyInputs:
        inputs = cls(int(d.get("revision", 0)), d.get("store_id"))
        inputs.tenants = {k: dict(v) for k, v in d.get("tenants", {}).items()}
        inputs.hosts = dict(d.get("hosts", {}))
        for e in d.get("endpoints", ()):
            inputs.put_endpoint(endpoint_from_json(e))
        for cidr, host, tenant, segment in d.get("blocks", ()):
            inputs.blocks[_key(cidr)] = (host, tenant, segment)
        for p in d.get("policies", ()):
            policy = Policy.from_json(p)
            inputs.policies[policy.key] = policy
        return inputs

    # -- following the feed ---------------------------------------------------------------
    def follow(self, changes: Iterable[Mapping[str, Any]]) -> Changed:
        """Apply feed changes; what they changed (false if nothing a rule depends on)."""
        changed = Changed()
        for c in changes:
            kind = c.get("kind")
            if kind not in POLICY_FACTS:
                continue
            displaced = self._apply(kind, c)
            if kind in ENDPOINT_FACTS:
                changed.endpoints.add(c["name"])
                changed.endpoints |= displaced
            elif kind == wire.TENANT_LABELED:
                changed.tenants.add(c["tenant"])
            elif kind not in (wire.BLOCK_ASSIGNED, wire.BLOCK_FREED):
                changed.structural = True  # policies, hosts: recompile whole
        return changed

    def _apply(self, kind: str, c: Mapping[str, Any]) -> set[str]:
        """Apply one change; the endpoints it displaced (that held its IP before)."""
        if kind == wire.BLOCK_ASSIGNED:
            self.blocks[_key(c["cidr"])] = (c["host"], c["tenant"], c["segment"])
        elif kind == wire.BLOCK_FREED:
            self.blocks.pop(_key(c["cidr"]), None)
        elif kind == wire.ADDRESS_ALLOCATED:
            owner = self._owner(c["ip"])
            if owner is not None:
                old = self.endpoints.get(c["name"])
                host, tenant, segment = owner
                labels, ports = (old.labels, old.ports) if old else ({}, ())
                return self.put_endpoint(
                    Endpoint(c["name"], c["ip"], host, tenant, segment, labels, ports)
                )
        elif kind == wire.ADDRESS_RELEASED:
            self.drop_endpoint(c["name"])
        elif kind == wire.TOPOLOGY_APPLIED:
            self.hosts = {h["name"]: h["ip"] for h in c["hosts"]}
        elif kind == wire.HOST_ADDED:
            self.hosts[c["name"]] = c["ip"]
        elif kind == wire.HOST_REMOVED:
            self.hosts.pop(c["name"], None)
        elif kind == wire.ENDPOINT_LABELED:
            old = self.endpoints.get(c["name"])
            if old is not None:
                labels, ports = dict(c["labels"]), ports_from_json(c.get("ports", ()))
                self.put_endpoint(
                    Endpoint(old.name, old.ip, old.host, old.tenant, old.segment, labels, ports)
                )
        elif kind == wire.TENANT_LABELED:
            if c["labels"]:
                self.tenants[c["tenant"]] = dict(c["labels"])
            else:
                self.tenants.pop(c["tenant"], None)
        elif kind == wire.POLICY_ADDED:
            policy = Policy.from_json(c["policy"])
            self.policies[policy.key] = policy
        elif kind == wire.POLICY_REMOVED:
            self.policies.pop(c["key"], None)
        return set()

    def _owner(self, ip: str) -> tuple[str, str, str] | None:
        value = int(ipaddress.IPv4Address(ip))
        for prefixlen in {p for _, p in self.blocks}:
            base = value & ~((1 << (32 - prefixlen)) - 1)
            owner = self.blocks.get((base, prefixlen))
            if owner is not None:
                return owner
        return None

    def put_endpoint(self, ep: Endpoint) -> set[str]:
        """Add or replace an endpoint; returns the endpoints it displaced: one that held
        its IP is stale (romanad gave the IP to ``ep``, so it was released), and is
        dropped, never kept beside it."""
        old = self.endpoints.get(ep.name)
        if old is not None and old.ip != ep.ip and self.ip_owners.get(old.ip) == ep.name:
            del self.ip_owners[old.ip]
        displaced = set()
        holder = self.ip_owners.get(ep.ip)
        if holder is not None and holder != ep.name:
            self.endpoints.pop(holder, None)
            displaced.add(holder)
        self.endpoints[ep.name] = ep
        self.ip_owners[ep.ip] = ep.name
        return displaced

    def drop_endpoint(self, name: str) -> Endpoint | None:
        ep = self.endpoints.pop(name, None)
        if ep is not None and self.ip_owners.get(ep.ip) == name:
            del self.ip_owners[ep.ip]
        return ep


class Selection:
    """Which endpoints a selector picks, with what a compile asks thousands of times
    computed once, on first use: endpoints by tenant (all, and those of one host), tenant
    labels, and selector verdicts per distinct label set (pods share few label sets).
    Valid for the inputs as they were when it was made."""

    def __init__(self, inputs: PolicyInputs) -> None:
        self.inputs = inputs
        self._by_tenant: dict[str | None, dict[str, list[Endpoint]]] = {}
        self._tenant_labels: dict[str, dict[str, str]] = {}
        self._label_ids: dict[str, int] = {}  # endpoint -> id of its selector labels
        self._label_sets: dict[frozenset[tuple[str, str]], int] = {}
        self._label_values: list[dict[str, str]] = []
        self._verdicts: dict[tuple[int, int], bool] = {}  # (id(selector), label id)
        self._tenant_verdicts: dict[tuple[int, str], bool] = {}

    def by_tenant(self, host: str | None = None) -> dict[str, list[Endpoint]]:
        """Endpoints by tenant: all of them, or those on ``host``."""
        found = self._by_tenant.get(host)
        if found is None:
            found = self._by_tenant[host] = {}
            for ep in self.inputs.endpoints.values():
                if host is None or ep.host == host:
                    found.setdefault(ep.tenant, []).append(ep)
        return found

    def tenant_labels(self, tenant: str) -> dict[str, str]:
        found = self._tenant_labels.get(tenant)
        if found is None:
            found = self._tenant_labels[tenant] = self.inputs.tenant_of(tenant)
        return found

    def _tenant_matches(self, selector: Selector, tenant: str) -> bool:
        key = (id(selector), tenant)
        found = self._tenant_verdicts.get(key)
        if found is None:
            found = self._tenant_verdicts[key] = selector.matches(self.tenant_labels(tenant))
        return found

    def _labels_match(self, selector: Selector, ep: Endpoint) -> bool:
        label_id = self._label_ids.get(ep.name)
        if label_id is None:
            labels = ep.selector_labels()
            label_id = self._label_sets.setdefault(frozenset(labels.items()), len(self._label_sets))
            if label_id == len(self._label_values):
                self._label_values.append(labels)
            self._label_ids[ep.name] = label_id
        key = (id(selector), label_id)
        found = self._verdicts.get(key)
        if found is None:
            found = self._verdicts[key] = selector.matches(self._label_values[label_id])
        return found

    def contains(self, chosen: Endpoints, ep: Endpoint, host: str | None = None) -> bool:
        """Whether ``chosen`` contains ``ep``; ``host`` is where the protected endpoint is
        (for ``same_host``)."""
        if chosen.tenant is not None:
            if ep.tenant != chosen.tenant:
                return False
        elif chosen.tenants is not None and not self._tenant_matches(chosen.tenants, ep.tenant):
            return False
        if chosen.name is not None and ep.name != chosen.name:
            return False
        if chosen.same_host and ep.host != host:
            return False
        if chosen.cidr is not None and ipaddress.IPv4Address(ep.ip) not in _net(chosen.cidr):
            return False
        return self._labels_match(chosen.labels, ep)

    def candidates(self, chosen: Endpoints, on: str | None = None) -> list[Endpoint]:
        """A superset of ``chosen``'s members (on host ``on`` only, if given)."""
        if chosen.name is not None:
            ep = self.inputs.endpoints.get(chosen.name)
            return [] if ep is None or (on is not None and ep.host != on) else [ep]
        by_tenant = self.by_tenant(on)
        if chosen.tenant is not None:
            return by_tenant.get(chosen.tenant, [])
        tenants = chosen.tenants
        return [
            ep
            for tenant, eps in by_tenant.items()
            if tenants is None or self._tenant_matches(tenants, tenant)
            for ep in eps
        ]

    def members(
        self, chosen: Endpoints, host: str | None = None, on: str | None = None
    ) -> list[Endpoint]:
        """The endpoints ``chosen`` contains (those on host ``on`` only, if given);
        ``host`` is the protected endpoint's host."""
        return [ep for ep in self.candidates(chosen, on) if self.contains(chosen, ep, host)]

    def peer_ips(self, peer: Endpoints | Hosts, host: str | None = None) -> list[str]:
        """IPs a pod or host peer stands for (blocks are matched as prefixes instead)."""
        if isinstance(peer, Hosts):
            return sorted(set(self.inputs.hosts.values()))
        return [ep.ip for ep in self.members(peer, host)]


def endpoint_json(ep: Endpoint) -> dict[str, Any]:
    return {
        "name": ep.name,
        "ip": ep.ip,
        "host": ep.host,
        "tenant": ep.tenant,
        "segment": ep.segment,
        "labels": dict(ep.labels),
        "ports": [p.to_json() for p in ep.ports],
    }


def endpoint_from_json(e: Mapping[str, Any]) -> Endpoint:
    return Endpoint(
        e["name"],
        e["ip"],
        e["host"],
        e["tenant"],
        e["segment"],
        dict(e.get("labels", {})),
        ports_from_json(e.get("ports", ())),
    )


def ports_from_json(ports: Iterable[Mapping[str, Any]]) -> tuple[NamedPort, ...]:
    return tuple(NamedPort(p["name"], int(p["port"]), p["protocol"]) for p in ports)


def _net(cidr: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(cidr)


def _key(cidr: str) -> tuple[int, int]:
    net = ipaddress.IPv4Network(cidr)
    return int(net.network_address), net.prefixlen


def _cidr(base: int, prefixlen: int) -> str:
    return f"{ipaddress.IPv4Address(base)}/{prefixlen}"


__all__ = [
    "POLICY_FACTS",
    "Changed",
    "PolicyInputs",
    "Selection",
    "endpoint_from_json",
    "endpoint_json",
]
