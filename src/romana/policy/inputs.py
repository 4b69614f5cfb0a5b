"""Everything policies are evaluated over: endpoints, tenant labels, host IPs, policies.

romanad serves it as one document (``GET /policy/state``); an agent loads that, then keeps
it current from the changes feed (:meth:`PolicyInputs.follow`) and compiles its host's
rules from it. Which endpoints a selector picks is decided here, once, for both.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from romana import wire
from romana.policy.model import (
    Block,
    Endpoint,
    Endpoints,
    Hosts,
    NamedPort,
    Peer,
    Policy,
    tenant_labels,
)

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

    # -- selection ------------------------------------------------------------------------
    def tenant_of(self, name: str) -> dict[str, str]:
        return tenant_labels(name, self.tenants.get(name, {}))

    def selects(self, chosen: Endpoints, ep: Endpoint, host: str | None = None) -> bool:
        """Whether ``chosen`` contains ``ep``; ``host`` is where the protected endpoint is
        (for ``same_host``)."""
        if chosen.tenant is not None:
            if ep.tenant != chosen.tenant:
                return False
        elif chosen.tenants is not None and not chosen.tenants.matches(self.tenant_of(ep.tenant)):
            return False
        if chosen.name is not None and ep.name != chosen.name:
            return False
        if chosen.same_host and ep.host != host:
            return False
        if chosen.cidr is not None and ipaddress.IPv4Address(ep.ip) not in _net(chosen.cidr):
            return False
        return chosen.labels.matches(ep.selector_labels())

    def members(self, chosen: Endpoints, host: str | None = None) -> list[Endpoint]:
        return [ep for ep in self.endpoints.values() if self.selects(chosen, ep, host)]

    def peer_ips(self, peer: Peer, host: str | None = None) -> list[str]:
        """IPs a pod or host peer stands for (blocks are matched as prefixes instead)."""
        if isinstance(peer, Hosts):
            return sorted(set(self.hosts.values()))
        if isinstance(peer, Block):
            raise TypeError("blocks are prefixes")
        return [ep.ip for ep in self.members(peer, host)]

    # -- the wire -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
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
            inputs.endpoints[e["name"]] = endpoint_from_json(e)
        for cidr, host, tenant, segment in d.get("blocks", ()):
            inputs.blocks[_key(cidr)] = (host, tenant, segment)
        for p in d.get("policies", ()):
            policy = Policy.from_json(p)
            inputs.policies[policy.key] = policy
        return inputs

    # -- following the feed ---------------------------------------------------------------
    def follow(self, changes: Iterable[Mapping[str, Any]]) -> bool:
        """Apply feed changes; True if any of them can change a rule or set."""
        changed = False
        for c in changes:
            kind = c.get("kind")
            if kind not in POLICY_FACTS:
                continue
            changed = True
            self._apply(kind, c)
        return changed

    def _apply(self, kind: str, c: Mapping[str, Any]) -> None:
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
                self.endpoints[c["name"]] = Endpoint(
                    c["name"], c["ip"], host, tenant, segment, labels, ports
                )
        elif kind == wire.ADDRESS_RELEASED:
            self.endpoints.pop(c["name"], None)
        elif kind == wire.TOPOLOGY_APPLIED:
            self.hosts = {h["name"]: h["ip"] for h in c["hosts"]}
        elif kind == wire.HOST_ADDED:
            self.hosts[c["name"]] = c["ip"]
        elif kind == wire.HOST_REMOVED:
            self.hosts.pop(c["name"], None)
        elif kind == wire.ENDPOINT_LABELED:
            old = self.endpoints.get(c["name"])
            if old is not None:
                self.endpoints[c["name"]] = Endpoint(
                    old.name,
                    old.ip,
                    old.host,
                    old.tenant,
                    old.segment,
                    dict(c["labels"]),
                    ports_from_json(c.get("ports", ())),
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

    def _owner(self, ip: str) -> tuple[str, str, str] | None:
        value = int(ipaddress.IPv4Address(ip))
        for prefixlen in {p for _, p in self.blocks}:
            base = value & ~((1 << (32 - prefixlen)) - 1)
            owner = self.blocks.get((base, prefixlen))
            if owner is not None:
                return owner
        return None

    def add_endpoint(self, ep: Endpoint) -> None:
        """An endpoint this host is starting (CNI ADD), known before the feed says so."""
        self.endpoints[ep.name] = ep


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


__all__ = ["POLICY_FACTS", "PolicyInputs", "endpoint_from_json", "endpoint_json"]
