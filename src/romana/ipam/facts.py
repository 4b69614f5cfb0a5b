"""Facts: the engine's record of every change, in the order it happened.

A fact states an outcome (which block, which address, which group), never a request, so
replaying facts rebuilds the same state without re-running any decision. In memory,
addresses are ints for speed; on the wire (:func:`fact_to_json`) they are dotted strings:
an ``ip`` field becomes ``"10.1.0.3"`` and a ``base``/``prefixlen`` pair becomes
``"cidr": "10.1.0.0/29"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from romana import wire
from romana.ipam.addr import cidr_str, ip_from_str, ip_to_str


@dataclass(frozen=True, slots=True)
class HostState:
    """A host as a change leaves it: labels and leaf-group path per network."""

    name: str
    ip: str
    labels: dict[str, str]
    placements: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ip": self.ip,
            "labels": dict(self.labels),
            "placements": dict(self.placements),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HostState:
        return cls(d["name"], d["ip"], dict(d.get("labels") or {}), dict(d.get("placements") or {}))


@dataclass(frozen=True, slots=True)
class AreaState:
    """A host's area in a network (see :mod:`romana.ipam.areas`), as a CIDR."""

    network: str
    host: str
    cidr: str

    def to_json(self) -> dict[str, str]:
        return {"network": self.network, "host": self.host, "cidr": self.cidr}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AreaState:
        return cls(d["network"], d["host"], d["cidr"])


@dataclass(frozen=True, slots=True)
class TopologyApplied:
    """A topology took effect; ``hosts`` is every host's complete new placement."""

    kind: ClassVar[str] = wire.TOPOLOGY_APPLIED
    topology: dict[str, Any]
    hosts: tuple[HostState, ...]
    blackouts: dict[str, list[str]] = field(default_factory=dict)
    areas: tuple[AreaState, ...] = ()  # the host areas kept (logs before areas: none)


@dataclass(frozen=True, slots=True)
class HostAdded:
    kind: ClassVar[str] = wire.HOST_ADDED
    host: HostState


@dataclass(frozen=True, slots=True)
class HostLabelsUpdated:
    """New labels; ``host.placements`` is the complete placement (it only ever grows)."""

    kind: ClassVar[str] = wire.HOST_LABELS_UPDATED
    host: HostState


@dataclass(frozen=True, slots=True)
class HostRemoved:
    kind: ClassVar[str] = wire.HOST_REMOVED
    name: str


@dataclass(frozen=True, slots=True)
class BlockAssigned:
    kind: ClassVar[str] = wire.BLOCK_ASSIGNED
    network: str
    base: int
    prefixlen: int
    host: str
    tenant: str
    segment: str


@dataclass(frozen=True, slots=True)
class BlockFreed:
    kind: ClassVar[str] = wire.BLOCK_FREED
    network: str
    base: int
    prefixlen: int


@dataclass(frozen=True, slots=True)
class AreaReserved:
    """``host`` now holds the area ``base/prefixlen`` of its leaf group in ``network``."""

    kind: ClassVar[str] = wire.AREA_RESERVED
    network: str
    base: int
    prefixlen: int
    host: str


@dataclass(frozen=True, slots=True)
class AreaReleased:
    kind: ClassVar[str] = wire.AREA_RELEASED
    network: str
    base: int
    prefixlen: int
    host: str


@dataclass(frozen=True, slots=True)
class AddressAllocated:
    kind: ClassVar[str] = wire.ADDRESS_ALLOCATED
    name: str
    network: str
    ip: int


@dataclass(frozen=True, slots=True)
class AddressReleased:
    kind: ClassVar[str] = wire.ADDRESS_RELEASED
    name: str
    network: str
    ip: int


@dataclass(frozen=True, slots=True)
class BlackoutAdded:
    kind: ClassVar[str] = wire.BLACKOUT_ADDED
    network: str
    cidr: str


@dataclass(frozen=True, slots=True)
class BlackoutRemoved:
    kind: ClassVar[str] = wire.BLACKOUT_REMOVED
    network: str
    cidr: str


@dataclass(frozen=True, slots=True)
class PodRef:
    """The Kubernetes pod an address was allocated for: an IP is handed out again as soon
    as it is released, so whoever matches pods to addresses (the listener) goes by this,
    never by IP. ``uid`` is empty when the runtime did not give it."""

    namespace: str
    name: str
    uid: str = ""

    def to_json(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PodRef:
        return cls(d["namespace"], d["name"], d.get("uid") or "")


@dataclass(frozen=True, slots=True)
class EndpointLabeled:
    """The endpoint's (pod's) metadata an address carries, replaced whole: its labels and
    named container ports (policies select by them) and, when known, its pod."""

    kind: ClassVar[str] = wire.ENDPOINT_LABELED
    name: str
    labels: dict[str, str]
    ports: list[dict[str, Any]]  # [{name, port, protocol}], protocol tcp|udp|sctp
    pod: PodRef | None = None  # logs from before pods were recorded: none


@dataclass(frozen=True, slots=True)
class TenantLabeled:
    """A tenant's (namespace's) labels, replaced whole; empty: none."""

    kind: ClassVar[str] = wire.TENANT_LABELED
    tenant: str
    labels: dict[str, str]


@dataclass(frozen=True, slots=True)
class PolicyAdded:
    """A policy, new or replacing the one with the same key: ``policy`` is its internal
    form (:class:`romana.policy.model.Policy`), ``source`` the document as it was given."""

    kind: ClassVar[str] = wire.POLICY_ADDED
    key: str
    policy: dict[str, Any]
    source: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PolicyRemoved:
    kind: ClassVar[str] = wire.POLICY_REMOVED
    key: str


Fact = (
    TopologyApplied
    | HostAdded
    | HostLabelsUpdated
    | HostRemoved
    | BlockAssigned
    | BlockFreed
    | AreaReserved
    | AreaReleased
    | AddressAllocated
    | AddressReleased
    | BlackoutAdded
    | BlackoutRemoved
    | EndpointLabeled
    | TenantLabeled
    | PolicyAdded
    | PolicyRemoved
)

# Facts that change which hosts exist or where they sit: whoever derives something from
# the placements (the route tracker) recomputes it from the state after them.
RESTRUCTURING = (TopologyApplied, HostAdded, HostRemoved, HostLabelsUpdated)

FACT_TYPES: dict[str, Any] = {
    t.kind: t
    for t in (
        TopologyApplied,
        HostAdded,
        HostLabelsUpdated,
        HostRemoved,
        BlockAssigned,
        BlockFreed,
        AreaReserved,
        AreaReleased,
        AddressAllocated,
        AddressReleased,
        BlackoutAdded,
        BlackoutRemoved,
        EndpointLabeled,
        TenantLabeled,
        PolicyAdded,
        PolicyRemoved,
    )
}


def fact_to_json(fact: Fact) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": fact.kind}
    for f in fields(fact):
        value = getattr(fact, f.name)
        if f.name == "ip":
            out["ip"] = ip_to_str(value)
        elif f.name == "base":
            out["cidr"] = cidr_str(value, fact.prefixlen)  # type: ignore[union-attr]
        elif f.name == "prefixlen":
            continue
        elif isinstance(value, HostState):
            out.update(value.to_json())
        elif f.name == "hosts":
            out["hosts"] = [h.to_json() for h in value]
        elif f.name == "areas":
            if value:  # facts from before areas stay byte-identical
                out["areas"] = [a.to_json() for a in value]
        elif f.name == "pod":
            if value is not None:  # so do endpoint facts without a pod
                out["pod"] = value.to_json()
        else:
            out[f.name] = value
    return out


def fact_from_json(d: dict[str, Any]) -> Fact:
    kind = FACT_TYPES.get(d.get("kind", ""))
    if kind is None:
        raise ValueError(f"unknown fact kind {d.get('kind')!r}")
    args: dict[str, Any] = {}
    for f in fields(kind):
        if f.name == "ip":
            args["ip"] = ip_from_str(d["ip"])
        elif f.name == "base":
            ip, prefix = d["cidr"].split("/")
            args["base"], args["prefixlen"] = ip_from_str(ip), int(prefix)
        elif f.name == "prefixlen":
            continue
        elif f.name == "host" and kind in (HostAdded, HostLabelsUpdated):
            args["host"] = HostState.from_json(d)
        elif f.name == "hosts":
            args["hosts"] = tuple(HostState.from_json(h) for h in d["hosts"])
        elif f.name == "blackouts":
            args["blackouts"] = {k: list(v) for k, v in d.get("blackouts", {}).items()}
        elif f.name == "areas":
            args["areas"] = tuple(AreaState.from_json(a) for a in d.get("areas", ()))
        elif f.name == "pod":
            args["pod"] = PodRef.from_json(d["pod"]) if d.get("pod") else None
        else:
            args[f.name] = d[f.name]
    return kind(**args)  # type: ignore[no-any-return]
