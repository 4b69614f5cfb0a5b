"""The JSON bodies romanad answers with, written once.

romanad's handlers declare them (they become the OpenAPI spec's response schemas, and FastAPI
checks every answer it builds against them, extra fields refused), the IPAM and route views
build them (mypy checks the fields), and both clients return them: :mod:`romana.api.client`
(CLI, agent, publisher, listener) and the CNI's :mod:`romana.cni.lean_client`.
``tests/test_api_contract.py`` ties each client method's return type to its endpoint's schema.

``typing_extensions.TypedDict`` because pydantic refuses ``typing.TypedDict`` before Python
3.12. At run time they are plain dicts, so a client pays nothing to read one; this module
imports nothing else, as the CLI loads it on every remote command.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired

from typing_extensions import TypedDict

# -- errors --------------------------------------------------------------------------------


class ErrorInfo(TypedDict):
    code: str  # romana.errors: the class's wire code ("not_found", "exhausted", ...)
    message: str
    details: list[Any]  # strings or {path, message, hint, severity} problems


class ErrorBody(TypedDict):
    """Every error answer (4xx, 5xx): decoded by :func:`romana.errors.from_wire`."""

    error: ErrorInfo


class Resync(ErrorBody):
    """``GET /watch`` 410: the facts after ``since`` are compacted; reload, then follow."""

    revision: int
    store_id: str


# -- topology ------------------------------------------------------------------------------

# The canonical map, as ``romana.topology.model.Topology`` describes it (its schema is the
# spec's "Topology"); kept a mapping here so clients need not import pydantic models.
TopologyDocument = dict[str, Any]


class ProblemJson(TypedDict):
    path: str
    message: str
    hint: str
    severity: str  # "error" or "warning"


class TopologyApplied(TypedDict):
    revision: int
    warnings: list[ProblemJson]
    topology: TopologyDocument


# -- networks and blocks -------------------------------------------------------------------


class NetworkJson(TypedDict):
    name: str
    cidr: str
    block_mask: int
    tenants: list[str] | None  # None: any tenant
    blocks: int
    allocated: int
    free: int


class Blackouts(TypedDict):
    network: str
    blackouts: list[str]


class BlockJson(TypedDict):
    cidr: str
    network: str
    group: str
    host: str
    tenant: str
    segment: str
    allocated_ip_count: int


class BlockList(TypedDict):
    revision: int
    blocks: list[BlockJson]
    next: str | None  # the next page's cursor (the client reads them all)


# -- hosts ---------------------------------------------------------------------------------


class HostGroupJson(TypedDict):
    group: str  # the prefix group's path
    cidr: str  # the group's CIDR in this network
    areas: list[str]  # the host's area CIDRs in the group


class HostJson(TypedDict):
    name: str
    ip: str
    labels: dict[str, str]
    groups: dict[str, HostGroupJson]  # by network
    block_count: int


class HostList(TypedDict):
    revision: int
    hosts: list[HostJson]
    next: str | None


# -- addresses -----------------------------------------------------------------------------


class NamedPortJson(TypedDict):
    name: str
    port: int
    protocol: str


class PodJson(TypedDict):
    namespace: str
    name: str
    uid: str


class AddressJson(TypedDict):
    name: str
    ip: str
    network: str
    host: str
    tenant: str
    segment: str
    block: str
    labels: NotRequired[dict[str, str]]  # endpoint metadata, when it has any
    ports: NotRequired[list[NamedPortJson] | None]
    pod: NotRequired[PodJson]  # the pod it is for, when known


class AddressList(TypedDict):
    revision: int
    addresses: list[AddressJson]
    next: str | None


# -- tenants and policies ------------------------------------------------------------------


class TenantJson(TypedDict):
    name: str
    labels: dict[str, str]  # set by an operator
    effective_labels: dict[str, str]  # with the ones every tenant has


class TenantList(TypedDict):
    revision: int
    tenants: list[TenantJson]


class PolicyJson(TypedDict):
    id: str
    kind: Literal["kubernetes", "romana"]
    policy: dict[str, Any]  # the canonical form agents compile (romana.policy.model)
    source: dict[str, Any]  # the document as given


class PolicyList(TypedDict):
    revision: int
    policies: list[PolicyJson]


class NetworkPolicyList(TypedDict):
    revision: int
    items: list[dict[str, Any]]  # Kubernetes NetworkPolicy objects, as given


class PolicyState(TypedDict):
    """What agents compile from (``romana.policy.inputs.PolicyInputs``), then follow."""

    revision: int
    store_id: str | None
    tenants: dict[str, dict[str, str]]
    hosts: dict[str, str]  # name -> IP
    endpoints: list[dict[str, Any]]
    blocks: list[list[str]]  # [cidr, host, tenant, segment]
    policies: list[dict[str, Any]]


# -- routes --------------------------------------------------------------------------------


class RouteJson(TypedDict):
    prefix: str
    via: str  # "host:NAME", "group:PATH" or "local" (romana.wire.LOCAL_VIA)
    gateway: str | None


class DeviceRouteSet(TypedDict):
    vantage: str  # "host:NAME" or "group:PATH"
    default: str | None  # where everything else goes: the parent group's router
    routes: list[RouteJson]


class RouteSetJson(DeviceRouteSet):
    revision: int
    store_id: str


class DeviceRoutes(TypedDict):
    vantage: str
    routes: int
    next_hops: int
    default: str | None
    updates: int
    route_changes: int


class RouteSummary(TypedDict):
    revision: int
    devices: list[DeviceRoutes]


class VerifiedDevice(TypedDict):
    vantage: str
    routes: int
    next_hops: int


class RouteVerifyReport(TypedDict):
    revision: int
    ok: bool
    addresses: int
    blocks: int
    sources: int
    walks: int
    failed_addresses: int
    failures: list[dict[str, Any]]  # at most romana.routes.verify.MAX_LISTED
    seconds: float
    devices: list[VerifiedDevice]


# -- operations ----------------------------------------------------------------------------


class WatchesJson(TypedDict):
    open: int
    limit: int
    refused: int


class Health(TypedDict):
    status: Literal["ok", "degraded"]
    store_id: str
    revision: int  # durable: what a crash cannot take back
    durable_revision: int
    applied_revision: int  # applied in memory, possibly not yet on disk
    store: dict[str, Any]  # the store's own figures (kind, appends, conflicts, ...)
    loops: dict[str, Any]  # each supervised loop's state
    watches: NotRequired[WatchesJson]
    version: NotRequired[str]  # romanad's version (an older romanad sends none)


class RomanadVersion(TypedDict):
    """``GET /version``: romanad's build (``romana.buildinfo.BuildInfo``), what it stores
    in, and since when it serves."""

    version: str
    python: str
    implementation: str
    platform: str
    commit: str | None
    store: str  # "sqlite", "etcd", ...
    started_at: str  # ISO 8601, UTC
    uptime_seconds: float


class Changes(TypedDict):
    revision: int
    changes: list[dict[str, Any]]  # facts (romana.ipam.facts), kinds in romana.wire
    store_id: str


# Every shape refuses fields it does not declare, so an answer that grew a field without
# its shape fails romanad's own response check (and the tests) instead of passing unseen.
for _shape in list(globals().values()):
    if isinstance(_shape, type) and issubclass(_shape, dict) and _shape is not dict:
        _shape.__pydantic_config__ = {"extra": "forbid"}  # type: ignore[attr-defined]
del _shape
