"""``/topology``: the map romanad carves networks by."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body

from romana.api.context import ERRORS, DurableEngine, Writer
from romana.errors import NotFound
from romana.responses import TopologyApplied, TopologyDocument
from romana.topology import check

router = APIRouter(tags=["topology"], responses=ERRORS)


# The answer's schema is the spec's "Topology" (create_app's OpenAPI hook puts it there).
@router.get("/topology")
async def get_topology(engine: DurableEngine) -> TopologyDocument:
    document = engine.topology_document()
    if document is None:
        raise NotFound("no topology applied yet")
    return document


@router.post("/topology")
async def post_topology(
    document: Annotated[dict[str, Any], Body()], service: Writer
) -> TopologyApplied:
    # Validation is the heavy part of a large map: off the event loop, so allocations go on
    # meanwhile; the engine then only plans the already typed map.
    checked = await asyncio.to_thread(check, document)
    engine = service.engine

    def apply() -> TopologyApplied:
        warnings = engine.apply_topology(document, checked=checked)
        applied = engine.topology_document()
        assert applied is not None  # just applied
        return {
            "revision": engine.revision,
            "warnings": [w.to_json() for w in warnings],
            "topology": applied,
        }

    return await service.mutate(apply)
