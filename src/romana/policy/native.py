"""Romana's own policy JSON (the 2.0 form, and the older ``securitypolicies`` wrapper),
validated and translated to :class:`romana.policy.model.Policy`.

Canonical form::

    {"id": "web", "direction": "ingress", "description": "...",
     "applied_to": [{"tenant_id": "shop", "segment_id": "web"}],
     "ingress": [{"peers": [{"peer": "any"}],
                  "rules": [{"protocol": "tcp", "ports": [80], "port_ranges": [[8000, 8080]]}]}]}

An endpoint is one of: ``peer`` ("any": every address; "host": the cluster's hosts;
"local": endpoints on the same host as the protected one), ``cidr``, ``dest`` (one endpoint
by its address name), or ``tenant_id`` with an optional ``segment_id``. For an ingress
policy ``applied_to`` are the destinations and ``peers`` the sources; for egress the other
way round (the list is called ``ingress`` in both, as in the original; ``egress`` is taken
as its alias).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from romana import names
from romana.policy.model import (
    SEGMENT_LABEL,
    Allow,
    Block,
    Endpoints,
    Hosts,
    Peer,
    Policy,
    Port,
    Selector,
)

PolicyId = Annotated[str, AfterValidator(names.POLICY.check)]
TenantName = Annotated[str, AfterValidator(names.TENANT.check)]
SegmentName = Annotated[str, AfterValidator(names.SEGMENT.check)]
AddressName = Annotated[str, AfterValidator(names.ADDRESS.check)]
PortNumber = Annotated[int, Field(ge=1, le=65535)]

# ICMP types whose codes are defined (RFC 792, 950, 1256, 1812): type -> highest code.
ICMP_CODES = {0: 0, 3: 15, 4: 0, 5: 3, 8: 0, 9: 16, 10: 0, 11: 1, 12: 2, 13: 0, 14: 0}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class Endpoint(_Strict):
    peer: Literal["any", "host", "local"] | None = None
    cidr: str | None = Field(default=None, max_length=18)
    dest: AddressName | None = None
    tenant_id: TenantName | None = None
    segment_id: SegmentName | None = None

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.IPv4Network(value, strict=False))
        except ValueError as exc:
            raise ValueError(f"cidr: not an IPv4 CIDR ({exc})") from None

    @model_validator(mode="after")
    def _one_kind(self) -> Endpoint:
        kinds = [k for k in ("peer", "cidr", "dest", "tenant_id") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "an endpoint is exactly one of peer, cidr, dest or tenant_id "
                f"(with an optional segment_id); got {kinds or 'none'}"
            )
        if self.segment_id is not None and self.tenant_id is None:
            raise ValueError("segment_id needs tenant_id")
        return self

    def target(self) -> Endpoints:
        """As ``applied_to``: the endpoints protected."""
        if self.peer == "host":
            raise ValueError('applied_to: peer "host" is not an endpoint')
        return self._endpoints()

    def source(self) -> Peer:
        """As a peer."""
        if self.peer == "any":
            return Block("0.0.0.0/0")
        if self.peer == "host":
            return Hosts()
        if self.cidr is not None:
            return Block(self.cidr)
        return self._endpoints()

    def _endpoints(self) -> Endpoints:
        if self.tenant_id is not None:
            labels = {SEGMENT_LABEL: self.segment_id} if self.segment_id else {}
            return Endpoints(Selector.equal(labels), tenant=self.tenant_id)
        every = Selector()
        if self.peer == "local":
            return Endpoints(tenants=every, same_host=True)
        return Endpoints(tenants=every, cidr=self.cidr, name=self.dest)


class Rule(_Strict):
    protocol: Literal["tcp", "udp", "icmp", "any"]
    ports: list[PortNumber] = Field(default_factory=list, max_length=1000)
    port_ranges: list[tuple[PortNumber, PortNumber]] = Field(default_factory=list, max_length=1000)
    icmp_type: int | None = Field(default=None, ge=0, le=255)
    icmp_code: int | None = Field(default=None, ge=0, le=255)
    is_stateful: bool = True

    @field_validator("protocol", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if self.protocol in ("icmp", "any") and (self.ports or self.port_ranges):
            raise ValueError(f"ports and port_ranges are only for tcp and udp, not {self.protocol}")
        if self.protocol != "icmp" and (self.icmp_type is not None or self.icmp_code is not None):
            raise ValueError(f"icmp_type and icmp_code are only for icmp, not {self.protocol}")
        for lo, hi in self.port_ranges:
            if lo > hi:
                raise ValueError(f"port_ranges: [{lo}, {hi}] is reversed (first must be <= last)")
        if self.icmp_code is not None:
            if self.icmp_type is None:
                raise ValueError("icmp_code needs icmp_type")
            highest = ICMP_CODES.get(self.icmp_type)
            if highest is not None and self.icmp_code > highest:
                raise ValueError(
                    f"icmp_code {self.icmp_code} is not defined for icmp_type {self.icmp_type} "
                    f"(codes 0-{highest})"
                )
        return self

    def matches(self) -> list[Port] | None:
        """The ports this rule opens; None: every protocol and port."""
        if self.protocol == "any":
            return None
        if self.protocol == "icmp":
            return [Port("icmp", icmp_type=self.icmp_type, icmp_code=self.icmp_code)]
        if not self.ports and not self.port_ranges:
            return [Port(self.protocol)]
        out = [Port(self.protocol, p) for p in sorted(set(self.ports))]
        out += [Port(self.protocol, lo, hi) for lo, hi in sorted(set(self.port_ranges))]
        return out


class Ingress(_Strict):
    peers: list[Endpoint] = Field(min_length=1, max_length=1000)
    rules: list[Rule] = Field(min_length=1, max_length=1000)


class RomanaPolicy(_Strict):
    id: PolicyId
    direction: Literal["ingress", "egress"]
    description: str = Field(default="", max_length=1024)
    applied_to: list[Endpoint] = Field(min_length=1, max_length=1000)
    ingress: list[Ingress] = Field(max_length=1000)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if isinstance(data.get("id"), int) and not isinstance(data.get("id"), bool):
                data["id"] = str(data["id"])  # the original's numeric ids
            if isinstance(data.get("direction"), str):
                data["direction"] = data["direction"].lower()
            if "egress" in data and "ingress" not in data:
                data["ingress"] = data.pop("egress")
        return data

    @field_validator("description")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable() or not value.isascii():
            raise ValueError("description: printable ASCII only")
        return value

    @model_validator(mode="after")
    def _targets(self) -> RomanaPolicy:
        for endpoint in self.applied_to:
            endpoint.target()  # raises for a peer that cannot be protected
        return self

    def translate(self) -> Policy:
        allows = []
        for entry in self.ingress:
            ports: list[Port] | None = []
            for rule in entry.rules:
                opened = rule.matches()
                if opened is None:
                    ports = None
                    break
                assert ports is not None
                ports += opened
            allows.append(
                Allow(
                    tuple(dict.fromkeys(p.source() for p in entry.peers)),
                    None if ports is None else tuple(dict.fromkeys(ports)),
                )
            )
        targets = tuple(dict.fromkeys(e.target() for e in self.applied_to))
        if self.direction == "ingress":
            return Policy(self.id, targets, ingress=tuple(allows))
        return Policy(self.id, targets, egress=tuple(allows))

    def source(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class LegacyTarget(_Strict):
    tenant: TenantName
    segment: SegmentName | None = None


class LegacyPeer(_Strict):
    peer: Literal["any", "host", "local"] | None = None
    cidr: str | None = None
    tenant: TenantName | None = None
    segment: SegmentName | None = None


class LegacyPolicy(_Strict):
    name: PolicyId
    description: str = Field(default="", max_length=1024)
    direction: Literal["ingress", "egress"]
    applied_to: list[LegacyTarget] = Field(min_length=1, max_length=1000)
    peers: list[LegacyPeer] = Field(min_length=1, max_length=1000)
    rules: list[Rule] = Field(min_length=1, max_length=1000)

    @field_validator("direction", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    def canonical(self) -> RomanaPolicy:
        def endpoint(tenant: str | None, segment: str | None, **rest: Any) -> dict[str, Any]:
            out = {k: v for k, v in rest.items() if v is not None}
            if tenant is not None:
                out["tenant_id"] = tenant
                if segment is not None:
                    out["segment_id"] = segment
            return out

        return RomanaPolicy.model_validate(
            {
                "id": self.name,
                "direction": self.direction,
                "description": self.description,
                "applied_to": [endpoint(t.tenant, t.segment) for t in self.applied_to],
                "ingress": [
                    {
                        "peers": [
                            endpoint(p.tenant, p.segment, peer=p.peer, cidr=p.cidr)
                            for p in self.peers
                        ],
                        "rules": [r.model_dump() for r in self.rules],
                    }
                ],
            }
        )


class LegacyDocument(_Strict):
    securitypolicies: list[LegacyPolicy] = Field(min_length=1, max_length=1000)


__all__ = ["LegacyDocument", "RomanaPolicy"]
