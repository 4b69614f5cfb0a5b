"""``/networks``, ``/blocks`` and blackouts: address space and how it is used."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from romana.api.context import ERRORS, PAGE, Cursor, DurableEngine, PageSize, Writer, page
from romana.api.models import BlackoutRequest
from romana.responses import Blackouts, BlockList, NetworkJson

router = APIRouter(tags=["networks"], responses=ERRORS)


@router.get("/networks")
async def networks(engine: DurableEngine) -> list[NetworkJson]:
    return engine.networks()


@router.get("/networks/{name}/blocks", response_model=BlockList)
async def network_blocks(
    name: str, engine: DurableEngine, limit: PageSize = PAGE, after: Cursor = None
) -> Response:
    views, cursor = engine.blocks_page(name, after, limit)
    return page(engine.revision, "blocks", [b.to_json() for b in views], cursor)


@router.get("/blocks", response_model=BlockList)
async def blocks(engine: DurableEngine, limit: PageSize = PAGE, after: Cursor = None) -> Response:
    views, cursor = engine.blocks_page(None, after, limit)
    return page(engine.revision, "blocks", [b.to_json() for b in views], cursor)


@router.get("/networks/{name}/blackout")
async def get_blackouts(name: str, engine: DurableEngine) -> Blackouts:
    return {"network": name, "blackouts": engine.blackouts(name)}


@router.post("/networks/{name}/blackout")
async def add_blackout(name: str, body: BlackoutRequest, service: Writer) -> Blackouts:
    engine = service.engine

    def add() -> Blackouts:
        engine.add_blackout(name, body.cidr)
        return {"network": name, "blackouts": engine.blackouts(name)}

    return await service.mutate(add)


@router.delete("/networks/{name}/blackout")
async def remove_blackout(name: str, body: BlackoutRequest, service: Writer) -> Blackouts:
    engine = service.engine

    def remove() -> Blackouts:
        engine.remove_blackout(name, body.cidr)
        return {"network": name, "blackouts": engine.blackouts(name)}

    return await service.mutate(remove)
