"""``/address`` and ``/addresses``: allocating, releasing and listing endpoint addresses."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from romana.api.context import ERRORS, PAGE, Cursor, DurableEngine, PageSize, State, Writer, page
from romana.api.models import AddressRequest, ports_json
from romana.errors import InvalidRequest
from romana.responses import AddressJson, AddressList

router = APIRouter(tags=["addresses"], responses=ERRORS)


@router.post("/address")
async def allocate(body: AddressRequest, service: Writer, romanad: State) -> AddressJson:
    engine = service.engine
    ports = ports_json(body.ports)
    pod = None if body.pod is None else body.pod.model_dump()
    if body.ip is not None:
        ip = body.ip
        view = await service.mutate(
            lambda: engine.allocate_ip(
                body.name, body.host, ip, body.tenant, body.segment, body.labels, ports, pod
            )
        )
    else:
        view = await service.mutate(
            lambda: engine.allocate(
                body.name, body.host, body.tenant, body.segment, body.labels, ports, pod
            )
        )
    romanad.metrics.allocations.inc()
    return view.to_json()


@router.get("/address/{name}")
async def get_address(name: str, engine: DurableEngine) -> AddressJson:
    return engine.address(name).to_json()


@router.delete("/address")
async def release(
    service: Writer,
    romanad: State,
    name: Annotated[str | None, Query()] = None,
    address_name: Annotated[str | None, Query(alias="addressName")] = None,
) -> AddressJson:
    target = name or address_name
    if not target:
        raise InvalidRequest("give ?name=NAME (or addressName=NAME, or an IP)")
    engine = service.engine
    view = await service.mutate(lambda: engine.release(target))
    romanad.metrics.releases.inc()
    return view.to_json()


@router.get("/addresses", response_model=AddressList)
async def addresses(
    engine: DurableEngine,
    host: str | None = None,
    tenant: str | None = None,
    limit: PageSize = PAGE,
    after: Cursor = None,
) -> Response:
    views, cursor = engine.addresses_page(host, tenant, after, limit)
    return page(engine.revision, "addresses", [a.to_json() for a in views], cursor)
