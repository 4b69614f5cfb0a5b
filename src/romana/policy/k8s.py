"""Kubernetes NetworkPolicy (networking.k8s.io/v1), validated as the API server would and
translated to :class:`romana.policy.model.Policy` with the full v1 semantics.

- ``podSelector`` selects the protected pods of the policy's namespace (``{}``: all).
- ``policyTypes`` when given is exact; otherwise Ingress, plus Egress when ``egress`` has
  rules (the API server's defaulting: ``len(spec.egress) != 0``).
- A missing or empty rule list of an affected direction allows nothing; a rule ``{}``
  allows everything; a rule's missing or empty ``from``/``to`` is any peer and its missing
  or empty ``ports`` any port.
- A peer with ``podSelector`` only is the policy's namespace; ``namespaceSelector`` only is
  every pod of the matching namespaces (``{}``: all); both in one peer is their AND;
  ``ipBlock`` matches addresses (pod IPs included) in ``cidr`` but no ``except``.
- Named ports are resolved on the destination pod by name and protocol; ``endPort`` makes
  a range. IPv6 blocks are accepted and match nothing (pods here are IPv4).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from romana import names
from romana.policy.model import Allow, Block, Endpoints, Peer, Policy, Port, Requirement, Selector

ObjectName = Annotated[str, AfterValidator(names.OBJECT.check)]
Namespace = Annotated[str, AfterValidator(names.TENANT.check)]
LabelKey = Annotated[str, AfterValidator(names.LABEL_NAME.check)]
LabelValue = Annotated[str, AfterValidator(names.LABEL_VALUE.check)]
Labels = Annotated[dict[str, str], AfterValidator(names.check_labels)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Expression(_Strict):
    key: LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[LabelValue] | None = Field(default=None, max_length=1000)

    @model_validator(mode="after")
    def _values(self) -> Expression:
        given = bool(self.values)
        if self.operator in ("In", "NotIn") and not given:
            raise ValueError(f"values: must be non-empty for operator {self.operator}")
        if self.operator in ("Exists", "DoesNotExist") and given:
            raise ValueError(f"values: must be empty for operator {self.operator}")
        return self


class LabelSelector(_Strict):
    match_labels: Labels = Field(default_factory=dict, alias="matchLabels")
    match_expressions: list[Expression] = Field(
        default_factory=list, alias="matchExpressions", max_length=1000
    )

    def selector(self) -> Selector:
        found = {Requirement(k, "In", (v,)) for k, v in self.match_labels.items()}
        found |= {
            Requirement(e.key, e.operator, tuple(sorted(set(e.values or ()))))
            for e in self.match_expressions
        }
        return Selector(tuple(sorted(found, key=lambda r: (r.key, r.operator, r.values))))


class IPBlock(_Strict):
    cidr: str = Field(max_length=43)
    excluded: list[str] = Field(default_factory=list, alias="except", max_length=1000)

    @model_validator(mode="after")
    def _nested(self) -> IPBlock:
        outer = _network(self.cidr, "cidr")
        for i, text in enumerate(self.excluded):
            inner = _network(text, f"except[{i}]")
            inside = inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]
            if not inside or inner == outer:
                raise ValueError(f"except[{i}]: {inner} must be strictly inside cidr {outer}")
        return self

    def peer(self) -> Block | None:
        outer = ipaddress.ip_network(self.cidr, strict=False)
        if outer.version != 4:
            return None
        inner = ipaddress.collapse_addresses(
            ipaddress.IPv4Network(t, strict=False) for t in self.excluded
        )
        return Block(str(outer), tuple(str(n) for n in inner))


class PolicyPeer(_Strict):
    pod_selector: LabelSelector | None = Field(default=None, alias="podSelector")
    namespace_selector: LabelSelector | None = Field(default=None, alias="namespaceSelector")
    ip_block: IPBlock | None = Field(default=None, alias="ipBlock")

    @model_validator(mode="after")
    def _kind(self) -> PolicyPeer:
        selectors = self.pod_selector is not None or self.namespace_selector is not None
        if self.ip_block is not None and selectors:
            raise ValueError("ipBlock cannot be combined with podSelector or namespaceSelector")
        if self.ip_block is None and not selectors:
            raise ValueError("a peer needs podSelector, namespaceSelector or ipBlock")
        return self

    def peer(self, namespace: str) -> Peer | None:
        if self.ip_block is not None:
            return self.ip_block.peer()
        pods = self.pod_selector.selector() if self.pod_selector else Selector()
        if self.namespace_selector is None:
            return Endpoints(pods, tenant=namespace)
        return Endpoints(pods, tenants=self.namespace_selector.selector())


class PolicyPort(_Strict):
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: int | str | None = None
    end_port: int | None = Field(default=None, alias="endPort", ge=1, le=65535)

    @field_validator("port", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("port: a number or a port name, not true/false")
        return value

    @model_validator(mode="after")
    def _port(self) -> PolicyPort:
        if isinstance(self.port, int) and not 1 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} is not in 1-65535")
        if isinstance(self.port, str):
            names.PORT_NAME.check(self.port)
        if self.end_port is not None:
            if not isinstance(self.port, int):
                raise ValueError("endPort needs a numeric port")
            if self.end_port < self.port:
                raise ValueError(f"endPort {self.end_port} is below port {self.port}")
        return self

    def match(self) -> Port:
        protocol = self.protocol.lower()
        if isinstance(self.port, str):
            return Port(protocol, name=self.port)
        return Port(protocol, self.port, self.end_port)


class IngressRule(_Strict):
    peers: list[PolicyPeer] | None = Field(default=None, alias="from", max_length=1000)
    ports: list[PolicyPort] | None = Field(default=None, max_length=1000)


class EgressRule(_Strict):
    peers: list[PolicyPeer] | None = Field(default=None, alias="to", max_length=1000)
    ports: list[PolicyPort] | None = Field(default=None, max_length=1000)


class Spec(_Strict):
    pod_selector: LabelSelector = Field(default_factory=LabelSelector, alias="podSelector")
    policy_types: list[Literal["Ingress", "Egress"]] | None = Field(
        default=None, alias="policyTypes", max_length=2
    )
    ingress: list[IngressRule] | None = Field(default=None, max_length=1000)
    egress: list[EgressRule] | None = Field(default=None, max_length=1000)


class Metadata(BaseModel):
    model_config = ConfigDict(extra="ignore")  # uid, resourceVersion, annotations...
    name: ObjectName
    namespace: Namespace = "default"


class NetworkPolicy(BaseModel):
    model_config = ConfigDict(extra="ignore")  # status
    api_version: Literal["networking.k8s.io/v1"] = Field(alias="apiVersion")
    kind: Literal["NetworkPolicy"]
    metadata: Metadata
    spec: Spec = Field(default_factory=Spec)

    @property
    def key(self) -> str:
        return policy_key(self.metadata.namespace, self.metadata.name)

    def translate(self) -> Policy:
        spec, namespace = self.spec, self.metadata.namespace
        types = spec.policy_types
        if not types:  # missing or [] (the API server defaults both)
            types = ["Ingress", "Egress"] if spec.egress else ["Ingress"]
        ingress = egress = None
        if "Ingress" in types:
            ingress = tuple(_allow(r.peers, r.ports, namespace) for r in spec.ingress or ())
        if "Egress" in types:
            egress = tuple(_allow(r.peers, r.ports, namespace) for r in spec.egress or ())
        target = Endpoints(spec.pod_selector.selector(), tenant=namespace)
        return Policy(self.key, (target,), ingress, egress)

    def source(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def policy_key(namespace: str, name: str) -> str:
    """``k8s:NAMESPACE:NAME``: ':' is in no Kubernetes name nor in any Romana policy id."""
    return f"k8s:{namespace}:{name}"


def _allow(peers: list[PolicyPeer] | None, ports: list[PolicyPort] | None, namespace: str) -> Allow:
    translated: tuple[Peer, ...] | None = None
    if peers:
        # An IPv6-only peer list matches nothing here: () is "no peer", None "any peer".
        translated = tuple(dict.fromkeys(p for p in (x.peer(namespace) for x in peers) if p))
    matched = tuple(dict.fromkeys(p.match() for p in ports)) if ports else None
    return Allow(translated, matched)


def _network(text: str, field: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"{field}: {text!r} is not a CIDR ({exc})") from None


__all__ = ["NetworkPolicy", "policy_key"]
