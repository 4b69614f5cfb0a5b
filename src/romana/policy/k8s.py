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

Accepted as the API server accepts it, so that a policy it holds is never left
unenforced for want of a translation: no count limit on rules, peers, ports, ``except``
or selector values (the API server has none; romanad's 1 MiB body limit bounds the
total); CIDRs read as Go's parser read them before Go 1.17, leading zeros as decimal
(the API server keeps such stored CIDRs valid on update); selector values any string
(it keeps values stored under older rules valid too: a value no label can have matches
nothing). What would make the translation wrong is still refused. A policy that cannot
be translated all the same is replaced, by the listener, with :meth:`NetworkPolicy.isolating`:
the pods it selects are isolated and nothing is allowed (fail closed).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from romana import names
from romana.policy.model import Allow, Block, Endpoints, Peer, Policy, Port, Requirement, Selector

ObjectName = Annotated[str, AfterValidator(names.OBJECT.check)]
Namespace = Annotated[str, AfterValidator(names.TENANT.check)]
# The annotation that marks the fail-closed stand-in of a policy (its value says why); the
# only annotation a stored source keeps.
NOT_ENFORCED = "romana.io/not-enforced"


def _selector_key(key: str) -> str:
    problems = names.label_problems({key: ""})  # "" is a valid value: only the key is checked
    if problems:
        raise ValueError(problems[0][1])
    return key


def _selector_value(value: str) -> str:
    """Any string the API server could have stored (UTF-8): older API servers took values
    today's rules refuse, and it keeps them valid; a value no label has matches nothing."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"label value {names.show(value)} is not valid UTF-8") from None
    return value


def _selector_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        _selector_key(key)
        _selector_value(value)
    return labels


LabelKey = Annotated[str, AfterValidator(_selector_key)]
SelectorValue = Annotated[str, AfterValidator(_selector_value)]
SelectorLabels = Annotated[dict[str, str], AfterValidator(_selector_labels)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Expression(_Strict):
    key: LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[SelectorValue] | None = None

    @model_validator(mode="after")
    def _values(self) -> Expression:
        given = bool(self.values)
        if self.operator in ("In", "NotIn") and not given:
            raise ValueError(f"values: must be non-empty for operator {self.operator}")
        if self.operator in ("Exists", "DoesNotExist") and given:
            raise ValueError(f"values: must be empty for operator {self.operator}")
        return self


class LabelSelector(_Strict):
    match_labels: SelectorLabels = Field(default_factory=dict, alias="matchLabels")
    match_expressions: list[Expression] = Field(default_factory=list, alias="matchExpressions")

    def selector(self) -> Selector:
        found = {Requirement(k, "In", (v,)) for k, v in self.match_labels.items()}
        found |= {
            Requirement(e.key, e.operator, tuple(sorted(set(e.values or ()))))
            for e in self.match_expressions
        }
        return Selector(tuple(sorted(found, key=lambda r: (r.key, r.operator, r.values))))


class IPBlock(_Strict):
    cidr: str
    excluded: list[str] = Field(default_factory=list, alias="except")

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
        outer = go_cidr(self.cidr)
        if not isinstance(outer, ipaddress.IPv4Network):
            return None
        inner = ipaddress.collapse_addresses(
            n for n in map(go_cidr, self.excluded) if isinstance(n, ipaddress.IPv4Network)
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
    peers: list[PolicyPeer] | None = Field(default=None, alias="from")
    ports: list[PolicyPort] | None = None


class EgressRule(_Strict):
    peers: list[PolicyPeer] | None = Field(default=None, alias="to")
    ports: list[PolicyPort] | None = None


class Spec(_Strict):
    pod_selector: LabelSelector = Field(default_factory=LabelSelector, alias="podSelector")
    policy_types: list[Literal["Ingress", "Egress"]] | None = Field(
        default=None, alias="policyTypes", max_length=2
    )
    ingress: list[IngressRule] | None = None
    egress: list[EgressRule] | None = None


class Metadata(BaseModel):
    model_config = ConfigDict(extra="ignore")  # uid, resourceVersion, labels...
    name: ObjectName
    namespace: Namespace = "default"
    annotations: dict[str, str] | None = None  # NOT_ENFORCED only (see _kept)

    @field_validator("annotations", mode="before")
    @classmethod
    def _kept(cls, value: Any) -> dict[str, str] | None:
        """Only the fail-closed marker: other annotations (kubectl's last-applied copy of
        the whole object, say) are not the policy and would only fatten the log."""
        if not isinstance(value, Mapping) or not isinstance(value.get(NOT_ENFORCED), str):
            return None
        return {NOT_ENFORCED: value[NOT_ENFORCED]}


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

    @classmethod
    def isolating(cls, document: Mapping[str, Any], reason: str) -> NetworkPolicy:
        """The fail-closed stand-in for ``document``, a policy that cannot be enforced as
        written: under its namespace and name, it isolates the pods it selects (all pods
        of the namespace if even its podSelector cannot be read) in the directions of its
        policyTypes as the API server defaults them (both if they cannot be read) and
        allows nothing. Marked with the annotation :data:`NOT_ENFORCED` giving ``reason``.

        Raises ValidationError only if the name or namespace themselves are invalid."""
        meta = _mapping(document.get("metadata"))
        spec = _mapping(document.get("spec"))
        try:
            selector = LabelSelector.model_validate(spec.get("podSelector") or {})
        except ValidationError:
            selector = LabelSelector()
        return cls.model_validate(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {
                    "name": meta.get("name"),
                    "namespace": meta.get("namespace") or "default",
                    "annotations": {NOT_ENFORCED: reason[:1024]},
                },
                "spec": {
                    "podSelector": selector.model_dump(by_alias=True),
                    "policyTypes": _defaulted_types(document.get("spec")),
                },
            }
        )


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


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _defaulted_types(spec: Any) -> list[str]:
    """policyTypes as the API server defaults them; both when ``spec`` is unreadable."""
    both = ["Ingress", "Egress"]
    if not isinstance(spec, Mapping):
        return both
    given, egress = spec.get("policyTypes"), spec.get("egress")
    if given:
        if not isinstance(given, list) or not set(given) <= set(both):
            return both
        return [t for t in both if t in given]
    if egress is None or egress == []:
        return ["Ingress"]
    return both  # egress rules given (or something unreadable there): isolate egress too


_DECIMAL = re.compile(r"[0-9]+\Z")
_HEX = re.compile(r"[0-9A-Fa-f]+\Z")


def go_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR as Go's ``net.ParseCIDR`` read it before Go 1.17 (Kubernetes keeps that
    reading for CIDRs stored by older versions): ADDRESS/PREFIX with a decimal prefix,
    IPv4 parts in decimal whatever their leading zeros (``010.0.0.0/8`` is 10.0.0.0/8),
    IPv6 groups of any length up to 0xffff; host bits are masked. ValueError otherwise."""
    address, slash, prefix = text.partition("/")
    if not slash or not _DECIMAL.match(prefix) or "%" in address:
        raise ValueError("expected ADDRESS/PREFIX with a decimal prefix length")
    if ":" in address:
        head, _, last = address.rpartition(":")
        groups = [_hex_group(g) for g in head.split(":")]
        address = ":".join([*groups, _dotted_quad(last) if "." in last else _hex_group(last)])
    else:
        address = _dotted_quad(address)
    return ipaddress.ip_network(f"{address}/{int(prefix)}", strict=False)


def _dotted_quad(text: str) -> str:
    parts = text.split(".")
    if len(parts) != 4 or not all(_DECIMAL.match(p) and int(p) <= 255 for p in parts):
        raise ValueError(f"{text!r} is not an IPv4 address")
    return ".".join(str(int(p)) for p in parts)


def _hex_group(text: str) -> str:
    if text == "":  # either side of "::"
        return text
    if not _HEX.match(text) or int(text, 16) > 0xFFFF:
        raise ValueError(f"{text!r} is not an IPv6 group")
    return f"{int(text, 16):x}"


def _network(text: str, field: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return go_cidr(text)
    except ValueError as exc:
        raise ValueError(f"{field}: {text!r} is not a CIDR ({exc})") from None


__all__ = ["NOT_ENFORCED", "NetworkPolicy", "go_cidr", "policy_key"]
