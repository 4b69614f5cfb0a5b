"""Policies in their one internal form: what both Romana policies and Kubernetes
NetworkPolicies translate to, what the log stores and what every agent enforces.

The form is an allow-list per direction. An endpoint selected by a policy whose
``ingress`` is not None is isolated for ingress: only what one of the ``Allow`` entries of
the policies selecting it admits reaches it (the union over policies). Egress likewise.
``Allow.peers is None`` means any peer, ``Allow.ports is None`` any port and protocol.

Standard library only: the agent loads it and must not pull in pydantic. Everything here
was validated when it was made (``romana.policy.k8s`` / ``romana.policy.native``), so
``from_json`` trusts its input (it only reads what the log wrote).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Labels every tenant and endpoint carries implicitly: a namespace's name, as Kubernetes
# sets it, and an endpoint's segment, so that Romana's tenant/segment peers are selectors.
TENANT_NAME_LABEL = "kubernetes.io/metadata.name"
SEGMENT_LABEL = "romana.io/segment"


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present  # DoesNotExist


@dataclass(frozen=True, slots=True)
class Selector:
    """A label selector: every requirement holds (no requirement: everything matches)."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @classmethod
    def equal(cls, labels: Mapping[str, str]) -> Selector:
        return cls(tuple(Requirement(k, "In", (v,)) for k, v in sorted(labels.items())))

    def to_json(self) -> list[list[Any]]:
        return [[r.key, r.operator, list(r.values)] for r in self.requirements]

    @classmethod
    def from_json(cls, data: list[list[Any]]) -> Selector:
        return cls(tuple(Requirement(k, op, tuple(v)) for k, op, v in data))


@dataclass(frozen=True, slots=True)
class Endpoints:
    """A set of endpoints (pods): those in ``tenant`` (or, if None, in every tenant whose
    labels match ``tenants``) whose labels match ``labels``; narrowed to one address name
    (``name``), to addresses inside ``cidr``, or to endpoints on the same host as the
    endpoint being protected (``same_host``)."""

    labels: Selector = Selector()
    tenant: str | None = None
    tenants: Selector | None = None  # used only when ``tenant`` is None
    cidr: str | None = None
    name: str | None = None
    same_host: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"labels": self.labels.to_json()}
        if self.tenant is not None:
            out["tenant"] = self.tenant
        if self.tenants is not None:
            out["tenants"] = self.tenants.to_json()
        if self.cidr is not None:
            out["cidr"] = self.cidr
        if self.name is not None:
            out["name"] = self.name
        if self.same_host:
            out["same_host"] = True
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Endpoints:
        tenants = d.get("tenants")
        return cls(
            Selector.from_json(d.get("labels", [])),
            d.get("tenant"),
            None if tenants is None else Selector.from_json(tenants),
            d.get("cidr"),
            d.get("name"),
            bool(d.get("same_host", False)),
        )


@dataclass(frozen=True, slots=True)
class Block:
    """Addresses inside ``cidr`` but in none of ``excluded`` (endpoint IPs included)."""

    cidr: str
    excluded: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"cidr": self.cidr, "except": list(self.excluded)}


@dataclass(frozen=True, slots=True)
class Hosts:
    """The cluster's hosts (node IPs): Romana's ``host`` peer."""

    def to_json(self) -> dict[str, Any]:
        return {"hosts": True}


Peer = Endpoints | Block | Hosts


def peer_from_json(d: dict[str, Any]) -> Peer:
    if "hosts" in d:
        return Hosts()
    if "except" in d:
        return Block(d["cidr"], tuple(d["except"]))
    return Endpoints.from_json(d)


@dataclass(frozen=True, slots=True)
class Port:
    """``protocol`` with a destination port: ``port`` (to ``end_port``), a named container
    port (resolved on the destination endpoint by name and protocol), or all of them when
    neither is given; ICMP matches ``icmp_type``/``icmp_code`` when given."""

    protocol: str
    port: int | None = None
    end_port: int | None = None
    name: str | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"protocol": self.protocol}
        for key in ("port", "end_port", "name", "icmp_type", "icmp_code"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Port:
        return cls(
            d["protocol"],
            d.get("port"),
            d.get("end_port"),
            d.get("name"),
            d.get("icmp_type"),
            d.get("icmp_code"),
        )


@dataclass(frozen=True, slots=True)
class Allow:
    peers: tuple[Peer, ...] | None = None
    ports: tuple[Port, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.peers is not None:
            out["peers"] = [p.to_json() for p in self.peers]
        if self.ports is not None:
            out["ports"] = [p.to_json() for p in self.ports]
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Allow:
        peers = d.get("peers")
        ports = d.get("ports")
        return cls(
            None if peers is None else tuple(peer_from_json(p) for p in peers),
            None if ports is None else tuple(Port.from_json(p) for p in ports),
        )


@dataclass(frozen=True, slots=True)
class Policy:
    """One policy: ``key`` is ``romana:ID`` or ``k8s:NAMESPACE:NAME``."""

    key: str
    applied_to: tuple[Endpoints, ...]
    ingress: tuple[Allow, ...] | None = None
    egress: tuple[Allow, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "applied_to": [e.to_json() for e in self.applied_to],
        }
        if self.ingress is not None:
            out["ingress"] = [a.to_json() for a in self.ingress]
        if self.egress is not None:
            out["egress"] = [a.to_json() for a in self.egress]
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Policy:
        def allows(key: str) -> tuple[Allow, ...] | None:
            value = d.get(key)
            return None if value is None else tuple(Allow.from_json(a) for a in value)

        return cls(
            d["key"],
            tuple(Endpoints.from_json(e) for e in d["applied_to"]),
            allows("ingress"),
            allows("egress"),
        )


@dataclass(frozen=True, slots=True)
class NamedPort:
    name: str
    port: int
    protocol: str  # tcp, udp, sctp

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "port": self.port, "protocol": self.protocol}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a policy can know of one endpoint (an allocated address)."""

    name: str
    ip: str
    host: str
    tenant: str
    segment: str
    labels: Mapping[str, str]
    ports: tuple[NamedPort, ...] = ()

    def selector_labels(self) -> dict[str, str]:
        """Labels with the implied segment label (set only when there is a segment)."""
        if not self.segment:
            return dict(self.labels)
        return {**self.labels, SEGMENT_LABEL: self.segment}


def tenant_labels(name: str, labels: Mapping[str, str]) -> dict[str, str]:
    """A tenant's labels with the implied ``kubernetes.io/metadata.name``."""
    return {**labels, TENANT_NAME_LABEL: name}


__all__ = [
    "SEGMENT_LABEL",
    "TENANT_NAME_LABEL",
    "Allow",
    "Block",
    "Endpoint",
    "Endpoints",
    "Hosts",
    "NamedPort",
    "Peer",
    "Policy",
    "Port",
    "Requirement",
    "Selector",
    "peer_from_json",
    "tenant_labels",
]
