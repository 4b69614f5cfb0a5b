"""``/hosts``: hosts join prefix groups by their labels."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body
from fastapi.responses import Response

from romana.api.context import ERRORS, PAGE, Cursor, DurableEngine, PageSize, Writer, page
from romana.api.models import HostRequest, Labels
from romana.responses import HostJson, HostList

router = APIRouter(tags=["hosts"], responses=ERRORS)


@router.get("/hosts", response_model=HostList)
async def hosts(engine: DurableEngine, limit: PageSize = PAGE, after: Cursor = None) -> Response:
    views, cursor = engine.hosts_page(after, limit)
    return page(engine.revision, "hosts", [h.to_json() for h in views], cursor)


@router.post("/hosts", status_code=200)
async def add_host(body: HostRequest, service: Writer) -> HostJson:
    engine = service.engine
    view = await service.mutate(lambda: engine.add_host(body.name, body.ip, body.tags))
    return view.to_json()


@router.get("/hosts/{name}")
async def get_host(name: str, engine: DurableEngine) -> HostJson:
    return engine.host(name).to_json()


@router.delete("/hosts/{name}")
async def remove_host(name: str, service: Writer) -> HostJson:
    engine = service.engine

    def remove() -> HostJson:
        view = engine.host(name).to_json()
        engine.remove_host(name)
        return view

    return await service.mutate(remove)


@router.put("/hosts/{name}/tags")
async def put_tags(name: str, tags: Annotated[Labels, Body()], service: Writer) -> HostJson:
    engine = service.engine
    view = await service.mutate(lambda: engine.update_labels(name, tags))
    return view.to_json()
