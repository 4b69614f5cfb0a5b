"""Operating romanad: health, version, metrics and the changes feed (``/watch``)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from romana.api.context import ERRORS, State
from romana.api.middleware import AsciiJSONResponse
from romana.api.watches import RETRY_AFTER, unless_gone
from romana.errors import Compacted
from romana.responses import Changes, ErrorBody, Health, Resync, RomanadVersion

router = APIRouter(tags=["operations"], responses=ERRORS)


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(romanad: State) -> Response:
    """Durable revisions only (``applied_revision`` is memory ahead of the store); 503
    while a loop is failed, restarting or stuck, or romanad is stopping."""
    ok, health = romanad.service.health()
    health["watches"] = romanad.watches.to_json()  # a full budget is load, not ill health
    health["version"] = romanad.build["version"]  # which build answers, seen by every probe
    return AsciiJSONResponse(health, status_code=200 if ok else 503)


@router.get("/version")
async def version(romanad: State) -> RomanadVersion:
    """This romanad's build (version, Python, the commit when the build recorded one),
    its store's kind and since when it serves."""
    build = romanad.build
    return {
        "version": build["version"],
        "python": build["python"],
        "implementation": build["implementation"],
        "platform": build["platform"],
        "commit": build["commit"],
        "store": romanad.store_kind,
        "started_at": romanad.started_at.isoformat(timespec="seconds"),
        "uptime_seconds": round(time.monotonic() - romanad.started, 3),
    }


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def prometheus(romanad: State) -> Response:
    """Prometheus text exposition (not JSON)."""
    return Response(generate_latest(romanad.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/watch",
    response_model=Changes,
    responses={
        204: {"description": "the client went away before anything changed"},
        410: {"model": Resync},
        503: {"model": ErrorBody, "description": "--max-watches long polls are open"},
    },
)
async def watch(
    request: Request,
    romanad: State,
    since: Annotated[int, Query(ge=0)] = 0,
    timeout: Annotated[float, Query(ge=0, le=300)] = 30.0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Any:
    """Long-poll the changes feed: facts after ``since`` (410 "resync" if compacted;
    503 with Retry-After when ``--max-watches`` long polls are open already)."""
    watches, service = romanad.watches, romanad.service
    busy = watches.refusal()
    if busy is not None:  # closed, so a refused watcher holds no connection either
        return AsciiJSONResponse(
            busy.to_json(),
            status_code=busy.status,
            headers={"retry-after": str(RETRY_AFTER), "connection": "close"},
        )
    try:
        with watches.held():
            found = await unless_gone(request, service.changes(since, timeout, limit))
    except Compacted as exc:
        gone: Resync = {
            "error": exc.to_json()["error"],
            "revision": service.durable_revision,
            "store_id": service.store_id,
        }
        return AsciiJSONResponse(gone, status_code=410)
    if found is None:  # the client is gone: nobody reads an answer
        return Response(status_code=204)
    revision, changes = found
    answer: Changes = {"revision": revision, "store_id": service.store_id, "changes": changes}
    return answer
