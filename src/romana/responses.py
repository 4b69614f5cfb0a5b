"""The JSON bodies romanad answers with, written once.

romanad's handlers declare them (they become the OpenAPI spec's response schemas, and FastAPI
checks every answer against them), the IPAM views build them (mypy checks the fields), and
the clients return them: :mod:`romana.api.client` (CLI, agent, publisher, listener) and the
CNI's lean client. ``typing_extensions.TypedDict`` because pydantic refuses
``typing.TypedDict`` before Python 3.12; plain dicts at run time, so reading one costs nothing.
"""

from __future__ import annotations

from typing import Any, NotRequired

from typing_extensions import TypedDict


class HostJson(TypedDict):
    name: str
    ip: str
    labels: dict[str, str]
    groups: dict[str, dict[str, str]]  # network -> {"group": path, "cidr": cidr}
    block_count: int


class HostList(TypedDict):
    revision: int
    hosts: list[HostJson]
    next: NotRequired[str | None]  # the next page's cursor (the client reads them all)


class AddressJson(TypedDict):
    name: str
    ip: str
    network: str
    host: str
    tenant: str
    segment: str
    block: str
    labels: NotRequired[dict[str, str]]  # endpoint metadata, when it has any
    ports: NotRequired[list[dict[str, Any]]]
    pod: NotRequired[dict[str, str]]  # {namespace, name, uid} of its pod, when known


class AddressList(TypedDict):
    revision: int
    addresses: list[AddressJson]
    next: NotRequired[str | None]  # the next page's cursor (the client reads them all)


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
    next: NotRequired[str | None]  # the next page's cursor (the client reads them all)


class NetworkJson(TypedDict):
    name: str
    cidr: str
    block_mask: int
    tenants: list[str] | None
    blocks: int
    allocated: int
    free: int


class Blackouts(TypedDict):
    network: str
    blackouts: list[str]


class TopologyApplied(TypedDict):
    revision: int
    warnings: list[dict[str, str]]
    topology: dict[str, Any]


class Health(TypedDict):
    status: str
    store_id: str
    revision: int  # durable: what a crash cannot take back
    durable_revision: int
    applied_revision: int  # applied in memory, possibly not yet on disk
    loops: dict[str, Any]
    version: NotRequired[str]  # romanad's version (an older romanad sends none)


class RouteJson(TypedDict):
    prefix: str
    via: str
    gateway: str | None


class RouteSetJson(TypedDict):
    vantage: str
    default: str | None
    routes: list[RouteJson]
    revision: int
    store_id: NotRequired[str]


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


class Changes(TypedDict):
    revision: int
    changes: list[dict[str, Any]]
    store_id: NotRequired[str]
