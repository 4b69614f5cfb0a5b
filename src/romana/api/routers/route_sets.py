"""``/routes``: the route set of every device (hosts and groups' routers), and a check
that they deliver every allocated address."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from romana.api.context import ERRORS, DurableEngine, State
from romana.errors import InvalidRequest
from romana.responses import RouteSetJson, RouteSummary, RouteVerifyReport, VerifiedDevice
from romana.routes import blocks_of, verify

router = APIRouter(tags=["routes"], responses=ERRORS)


@router.get("/routes")
async def routes(
    engine: DurableEngine, romanad: State, host: str | None = None, group: str | None = None
) -> RouteSetJson:
    """A device's route set: ``?host=NAME`` or ``?group=PATH`` (``/`` is the root)."""
    if (host is None) == (group is None):
        raise InvalidRequest(
            "give exactly one of ?host=NAME or ?group=PATH",
            ["e.g. /routes?host=node-1 or /routes?group=zone-a/rack-3"],
        )
    vantage = f"host:{host}" if host is not None else f"group:{_group_path(group or '')}"
    service = romanad.service
    routes = service.routes.get(vantage).to_json()
    return {**routes, "revision": engine.revision, "store_id": service.store_id}


@router.get("/routes/summary")
async def routes_summary(engine: DurableEngine, romanad: State) -> RouteSummary:
    """Per device: routes, distinct next hops, and route updates caused since start."""
    return {"revision": engine.revision, "devices": romanad.service.routes.summary()}


@router.get("/routes/verify")
async def routes_verify(romanad: State) -> RouteVerifyReport:
    """Forward every allocated address from every host over the served route sets, hop by
    hop with longest-prefix match; list any address that does not reach its owner."""
    service = romanad.service
    # Inputs are read on the loop (one durable revision), the walk runs in a thread.
    async with service.durable_view():
        engine = service.engine
        revision, sets = engine.revision, service.routes.all_sets()
        blocks = blocks_of(engine.state)
        devices: list[VerifiedDevice] = [
            {"vantage": row["vantage"], "routes": row["routes"], "next_hops": row["next_hops"]}
            for row in service.routes.summary()
        ]
    report = await asyncio.to_thread(verify, sets, blocks, revision)
    return report.to_json(devices)


def _group_path(text: str) -> str:
    return text.strip("/") or "/"
