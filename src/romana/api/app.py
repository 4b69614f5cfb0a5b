"""The romanad REST API (paths compatible with the original Romana daemon, plus extensions)."""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from romana import __version__
from romana.api.metrics import Metrics
from romana.api.middleware import AsciiJSONResponse, LimitsAndTiming
from romana.api.models import AddressRequest, BlackoutRequest, HostRequest, Labels, ports_json
from romana.api.policy_routes import add_policy_routes
from romana.api.service import IpamService
from romana.api.watches import DEFAULT_LIMIT, RETRY_AFTER, WatchBudget, unless_gone
from romana.buildinfo import RomanadVersion, build_info
from romana.errors import (
    Compacted,
    InvalidRequest,
    NotFound,
    RomanaError,
    Unauthorized,
)
from romana.routes import blocks_of, verify
from romana.topology import Topology, check

log = logging.getLogger("romanad")


def error(
    status: int, code: str, message: str, details: list[Any] | None = None
) -> AsciiJSONResponse:
    return AsciiJSONResponse(
        {"error": {"code": code, "message": message, "details": details or []}}, status_code=status
    )


def _with_topology_schema(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            topology = Topology.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(topology.pop("$defs", {}))
            schemas["Topology"] = topology
            # The body is taken as plain JSON so the validator can report every problem at
            # once; the spec still describes the map (clients and the fuzzer send typed maps).
            spec["paths"]["/topology"]["post"]["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Topology"}}
                },
            }
            app.openapi_schema = spec
        return app.openapi_schema

    return openapi


PAGE = 1000
PageSize = Annotated[int, Query(ge=1, le=10_000, description="Items per page.")]
Cursor = Annotated[
    str | None, Query(max_length=253, description="The previous page's next; absent: first page.")
]


def create_app(
    service: IpamService, token: str | None = None, max_watches: int = DEFAULT_LIMIT
) -> FastAPI:
    """romanad's API over ``service``; ``max_watches``: long polls waiting at once at most
    (romanad's ``--max-watches``, see :mod:`romana.api.watches`)."""
    app = FastAPI(
        default_response_class=AsciiJSONResponse,
        title="romanad",
        version=__version__,
        description="Romana IPAM service: topology, hosts, blocks and addresses.",
    )
    watches = WatchBudget(max_watches)
    metrics = Metrics(
        service.engine, lambda: (service.stats, service.durable_revision), watches.to_json
    )
    engine = service.engine
    started_at, started = datetime.now(UTC), time.monotonic()
    build = build_info()  # fixed for the process's life: read once
    describe = getattr(service.store, "describe", None)
    store_kind = str(describe()["kind"]) if describe else "memory"

    async def authorize(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Unauthorized()

    mutating = [Depends(authorize)]

    def durable(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """A read answered from durable state only (see ``IpamService.durable_view``)."""

        @functools.wraps(handler)
        async def read(*args: Any, **kwargs: Any) -> Any:
            async with service.durable_view():
                return await handler(*args, **kwargs)

        return read

    @app.exception_handler(RomanaError)
    async def romana_error(_: Request, exc: RomanaError) -> AsciiJSONResponse:
        return AsciiJSONResponse(exc.to_json(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> AsciiJSONResponse:
        codes = {400: "invalid", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        return error(exc.status_code, codes.get(exc.status_code, "error"), str(exc.detail))

    @app.exception_handler(RecursionError)
    async def nested_too_deep(_: Request, exc: RecursionError) -> AsciiJSONResponse:
        return error(400, "invalid", "request body nested too deeply")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> AsciiJSONResponse:
        details = [
            {"path": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        malformed = any(e["type"] == "json_invalid" for e in exc.errors())
        message = "malformed JSON body" if malformed else "invalid request"
        return error(400 if malformed else 422, "invalid", message, details)

    app.add_middleware(LimitsAndTiming, metrics=metrics)
    app.openapi = _with_topology_schema(app)  # type: ignore[method-assign]

    # -- topology ---------------------------------------------------------------------
    @app.get("/topology")
    @durable
    async def get_topology() -> Any:
        document = engine.topology_document()
        if document is None:
            raise NotFound("no topology applied yet")
        return document

    @app.post("/topology", dependencies=mutating)
    async def post_topology(document: Annotated[dict[str, Any], Body()]) -> Any:
        # Validation is the heavy part of a large map: off the event loop, so allocations go
        # on meanwhile; the engine then only plans the already typed map.
        checked = await asyncio.to_thread(check, document)

        def apply() -> dict[str, Any]:
            warnings = engine.apply_topology(document, checked=checked)
            return {
                "revision": engine.revision,
                "warnings": [w.to_json() for w in warnings],
                "topology": engine.topology_document(),
            }

        return await service.mutate(apply)

    # -- networks and blocks ----------------------------------------------------------
    @app.get("/networks")
    @durable
    async def networks() -> Any:
        return engine.networks()

    @app.get("/networks/{name}/blocks")
    @durable
    async def network_blocks(name: str, limit: PageSize = PAGE, after: Cursor = None) -> Any:
        views, cursor = engine.blocks_page(name, after, limit)
        return _page(engine.revision, "blocks", [b.to_json() for b in views], cursor)

    @app.get("/blocks")
    @durable
    async def blocks(limit: PageSize = PAGE, after: Cursor = None) -> Any:
        views, cursor = engine.blocks_page(None, after, limit)
        return _page(engine.revision, "blocks", [b.to_json() for b in views], cursor)

    @app.get("/networks/{name}/blackout")
    @durable
    async def get_blackouts(name: str) -> Any:
        return {"network": name, "blackouts": engine.blackouts(name)}

    @app.post("/networks/{name}/blackout", dependencies=mutating)
    async def add_blackout(name: str, body: BlackoutRequest) -> Any:
        def add() -> dict[str, Any]:
            engine.add_blackout(name, body.cidr)
            return {"network": name, "blackouts": engine.blackouts(name)}

        return await service.mutate(add)

    @app.delete("/networks/{name}/blackout", dependencies=mutating)
    async def remove_blackout(name: str, body: BlackoutRequest) -> Any:
        def remove() -> dict[str, Any]:
            engine.remove_blackout(name, body.cidr)
            return {"network": name, "blackouts": engine.blackouts(name)}

        return await service.mutate(remove)

    # -- hosts ------------------------------------------------------------------------
    @app.get("/hosts")
    @durable
    async def hosts(limit: PageSize = PAGE, after: Cursor = None) -> Any:
        views, cursor = engine.hosts_page(after, limit)
        return _page(engine.revision, "hosts", [h.to_json() for h in views], cursor)

    @app.post("/hosts", dependencies=mutating, status_code=200)
    async def add_host(body: HostRequest) -> Any:
        view = await service.mutate(lambda: engine.add_host(body.name, body.ip, body.tags))
        return view.to_json()

    @app.get("/hosts/{name}")
    @durable
    async def get_host(name: str) -> Any:
        return engine.host(name).to_json()

    @app.delete("/hosts/{name}", dependencies=mutating)
    async def remove_host(name: str) -> Any:
        def remove() -> dict[str, Any]:
            view = engine.host(name).to_json()
            engine.remove_host(name)
            return view

        return await service.mutate(remove)

    @app.put("/hosts/{name}/tags", dependencies=mutating)
    async def put_tags(name: str, tags: Annotated[Labels, Body()]) -> Any:
        view = await service.mutate(lambda: engine.update_labels(name, tags))
        return view.to_json()

    # -- addresses --------------------------------------------------------------------
    @app.post("/address", dependencies=mutating)
    async def allocate(body: AddressRequest) -> Any:
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
        metrics.allocations.inc()
        return view.to_json()

    @app.get("/address/{name}")
    @durable
    async def get_address(name: str) -> Any:
        return engine.address(name).to_json()

    @app.delete("/address", dependencies=mutating)
    async def release(
        name: Annotated[str | None, Query()] = None,
        address_name: Annotated[str | None, Query(alias="addressName")] = None,
    ) -> Any:
        target = name or address_name
        if not target:
            raise InvalidRequest("give ?name=NAME (or addressName=NAME, or an IP)")
        view = await service.mutate(lambda: engine.release(target))
        metrics.releases.inc()
        return view.to_json()

    @app.get("/addresses")
    @durable
    async def addresses(
        host: str | None = None,
        tenant: str | None = None,
        limit: PageSize = PAGE,
        after: Cursor = None,
    ) -> Any:
        views, cursor = engine.addresses_page(host, tenant, after, limit)
        return _page(engine.revision, "addresses", [a.to_json() for a in views], cursor)

    # -- routes -----------------------------------------------------------------------
    @app.get("/routes")
    @durable
    async def routes(host: str | None = None, group: str | None = None) -> Any:
        """A device's route set: ``?host=NAME`` or ``?group=PATH`` (``/`` is the root)."""
        if (host is None) == (group is None):
            raise InvalidRequest(
                "give exactly one of ?host=NAME or ?group=PATH",
                ["e.g. /routes?host=node-1 or /routes?group=zone-a/rack-3"],
            )
        vantage = f"host:{host}" if host is not None else f"group:{_group_path(group or '')}"
        return {
            **service.routes.get(vantage).to_json(),
            "revision": engine.revision,
            "store_id": service.store_id,
        }

    @app.get("/routes/summary")
    @durable
    async def routes_summary() -> Any:
        """Per device: routes, distinct next hops, and route updates caused since start."""
        return {"revision": engine.revision, "devices": service.routes.summary()}

    @app.get("/routes/verify")
    async def routes_verify() -> Any:
        """Forward every allocated address from every host over the served route sets, hop by
        hop with longest-prefix match; list any address that does not reach its owner."""
        # Inputs are read on the loop (one durable revision), the walk runs in a thread.
        async with service.durable_view():
            revision, sets = engine.revision, service.routes.all_sets()
            blocks = blocks_of(engine.state)
            devices = [
                {k: row[k] for k in ("vantage", "routes", "next_hops")}
                for row in service.routes.summary()
            ]
        report = await asyncio.to_thread(verify, sets, blocks, revision)
        return report.to_json(devices)

    add_policy_routes(app, service, mutating, durable)

    # -- operations -------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> Any:
        """Durable revisions only (``applied_revision`` is memory ahead of the store); 503
        while a loop is failed, restarting or stuck, or romanad is stopping."""
        ok, answer = service.health()
        answer["watches"] = watches.to_json()  # a full budget is load, not ill health
        answer["version"] = build["version"]  # which build answers, seen by every probe
        return AsciiJSONResponse(answer, status_code=200 if ok else 503)

    # response_model=None: the answer's type is a typing.TypedDict (romana.buildinfo stays
    # stdlib-only for the CLI), which pydantic refuses as a model before Python 3.12.
    @app.get("/version", response_model=None)
    async def version() -> RomanadVersion:
        """This romanad's build (version, Python, the commit when the build recorded one),
        its store's kind and since when it serves."""
        return {
            **build,
            "store": store_kind,
            "started_at": started_at.isoformat(timespec="seconds"),
            "uptime_seconds": round(time.monotonic() - started, 3),
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/watch")
    async def watch(
        request: Request,
        since: Annotated[int, Query(ge=0)] = 0,
        timeout: Annotated[float, Query(ge=0, le=300)] = 30.0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> Any:
        """Long-poll the changes feed: facts after ``since`` (410 "resync" if compacted;
        503 with Retry-After when ``--max-watches`` long polls are open already)."""
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
            return AsciiJSONResponse(
                {
                    **exc.to_json(),
                    "revision": service.durable_revision,
                    "store_id": service.store_id,
                },
                status_code=410,
            )
        if found is None:  # the client is gone: nobody reads an answer
            return Response(status_code=204)
        revision, changes = found
        return {"revision": revision, "store_id": service.store_id, "changes": changes}

    return app


def _page(revision: int, key: str, items: list[dict[str, Any]], cursor: str | None) -> Response:
    """A list page, serialised directly: FastAPI's generic encoder would cost ~20 ms for
    1,000 items on the event loop; these are plain JSON values already."""
    return AsciiJSONResponse({"revision": revision, key: items, "next": cursor})


def _group_path(text: str) -> str:
    return text.strip("/") or "/"
