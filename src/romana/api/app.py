"""The romanad REST API (paths compatible with the original Romana daemon, plus extensions)."""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from romana.api.metrics import Metrics
from romana.api.models import AddressRequest, BlackoutRequest, HostRequest
from romana.api.service import IpamService
from romana.errors import InvalidRequest, NotFound, RomanaError
from romana.routes import blocks_of, verify
from romana.store.base import Compacted

MAX_BODY = 1 << 20


def error(status: int, code: str, message: str, details: list[Any] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details or []}},
                        status_code=status)


def create_app(service: IpamService, token: str | None = None) -> FastAPI:
    app = FastAPI(title="romanad", version="0.1.0",
                  description="Romana IPAM service: topology, hosts, blocks and addresses.")
    metrics = Metrics(service.engine)
    engine = service.engine

    async def authorize(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Unauthorized()

    mutating = [Depends(authorize)]

    @app.exception_handler(RomanaError)
    async def romana_error(_: Request, exc: RomanaError) -> JSONResponse:
        return JSONResponse(exc.to_json(), status_code=exc.http_status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "invalid", 404: "not_found", 405: "method_not_allowed",
                 413: "too_large"}
        return error(exc.status_code, codes.get(exc.status_code, "error"), str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"path": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                   for e in exc.errors()]
        malformed = any(e["type"] == "json_invalid" for e in exc.errors())
        message = "malformed JSON body" if malformed else "invalid request"
        return error(400 if malformed else 422, "invalid", message, details)

    app.add_middleware(LimitsAndTiming, metrics=metrics)

    # -- topology ---------------------------------------------------------------------
    @app.get("/topology")
    async def get_topology() -> Any:
        document = engine.topology_document()
        if document is None:
            raise NotFound("no topology applied yet")
        return document

    @app.post("/topology", dependencies=mutating)
    async def post_topology(document: Annotated[dict[str, Any], Body()]) -> Any:
        warnings = await service.run(lambda: engine.apply_topology(document))
        return {"revision": engine.revision, "warnings": [w.to_json() for w in warnings],
                "topology": engine.topology_document()}

    # -- networks and blocks ----------------------------------------------------------
    @app.get("/networks")
    async def networks() -> Any:
        return engine.networks()

    @app.get("/networks/{name}/blocks")
    async def network_blocks(name: str) -> Any:
        return {"revision": engine.revision,
                "blocks": [b.to_json() for b in engine.blocks(name)]}

    @app.get("/blocks")
    async def blocks() -> Any:
        return {"revision": engine.revision, "blocks": [b.to_json() for b in engine.blocks()]}

    @app.get("/networks/{name}/blackout")
    async def get_blackouts(name: str) -> Any:
        return {"network": name, "blackouts": engine.blackouts(name)}

    @app.post("/networks/{name}/blackout", dependencies=mutating)
    async def add_blackout(name: str, body: BlackoutRequest) -> Any:
        await service.run(lambda: engine.add_blackout(name, body.cidr))
        return {"network": name, "blackouts": engine.blackouts(name)}

    @app.delete("/networks/{name}/blackout", dependencies=mutating)
    async def remove_blackout(name: str, body: BlackoutRequest) -> Any:
        await service.run(lambda: engine.remove_blackout(name, body.cidr))
        return {"network": name, "blackouts": engine.blackouts(name)}

    # -- hosts ------------------------------------------------------------------------
    @app.get("/hosts")
    async def hosts() -> Any:
        return {"revision": engine.revision, "hosts": [h.to_json() for h in engine.hosts()]}

    @app.post("/hosts", dependencies=mutating, status_code=200)
    async def add_host(body: HostRequest) -> Any:
        view = await service.run(lambda: engine.add_host(body.name, body.ip, body.tags))
        return view.to_json()

    @app.get("/hosts/{name}")
    async def get_host(name: str) -> Any:
        return engine.host(name).to_json()

    @app.delete("/hosts/{name}", dependencies=mutating)
    async def remove_host(name: str) -> Any:
        view = engine.host(name)
        await service.run(lambda: engine.remove_host(name))
        return view.to_json()

    @app.put("/hosts/{name}/tags", dependencies=mutating)
    async def put_tags(name: str, tags: Annotated[dict[str, str], Body()]) -> Any:
        view = await service.run(lambda: engine.update_labels(name, tags))
        return view.to_json()

    # -- addresses --------------------------------------------------------------------
    @app.post("/address", dependencies=mutating)
    async def allocate(body: AddressRequest) -> Any:
        if body.ip is not None:
            ip = body.ip
            view = await service.run(lambda: engine.allocate_ip(body.name, body.host, ip,
                                                                body.tenant, body.segment))
        else:
            view = await service.run(lambda: engine.allocate(body.name, body.host, body.tenant,
                                                             body.segment))
        metrics.allocations.inc()
        return view.to_json()

    @app.get("/address/{name}")
    async def get_address(name: str) -> Any:
        return engine.address(name).to_json()

    @app.delete("/address", dependencies=mutating)
    async def release(name: Annotated[str | None, Query()] = None,
                      address_name: Annotated[str | None, Query(alias="addressName")] = None,
                      ) -> Any:
        target = name or address_name
        if not target:
            raise InvalidRequest("give ?name=NAME (or addressName=NAME, or an IP)")
        view = await service.run(lambda: engine.release(target))
        metrics.releases.inc()
        return view.to_json()

    @app.get("/addresses")
    async def addresses(host: str | None = None, tenant: str | None = None) -> Any:
        return {"revision": engine.revision,
                "addresses": [a.to_json() for a in engine.addresses(host, tenant)]}

    # -- routes -----------------------------------------------------------------------
    @app.get("/routes")
    async def routes(host: str | None = None, group: str | None = None) -> Any:
        """A device's route set: ``?host=NAME`` or ``?group=PATH`` (``/`` is the root)."""
        if (host is None) == (group is None):
            raise InvalidRequest("give exactly one of ?host=NAME or ?group=PATH",
                                 ["e.g. /routes?host=node-1 or /routes?group=zone-a/rack-3"])
        vantage = f"host:{host}" if host is not None else f"group:{_group_path(group or '')}"
        return {**service.routes.get(vantage).to_json(), "revision": engine.revision}

    @app.get("/routes/summary")
    async def routes_summary() -> Any:
        """Per device: routes, distinct next hops, and route updates caused since start."""
        return {"revision": engine.revision, "devices": service.routes.summary()}

    @app.get("/routes/verify")
    async def routes_verify() -> Any:
        """Forward every allocated address from every host over the served route sets, hop by
        hop with longest-prefix match; list any address that does not reach its owner."""
        # Inputs are read on the loop (one consistent revision), the walk runs in a thread.
        revision, sets = engine.revision, service.routes.all_sets()
        blocks = blocks_of(engine.state)
        devices = [{k: row[k] for k in ("vantage", "routes", "next_hops")}
                   for row in service.routes.summary()]
        report = await asyncio.to_thread(verify, sets, blocks, revision)
        return report.to_json(devices)

    # -- operations -------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok", "revision": engine.revision,
                "durable_revision": service.durable_revision}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/watch")
    async def watch(since: Annotated[int, Query(ge=0)] = 0,
                    timeout: Annotated[float, Query(ge=0, le=300)] = 30.0,
                    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> Any:
        """Long-poll the changes feed: facts after ``since`` (410 "resync" if compacted)."""
        try:
            revision, changes = await service.changes(since, timeout, limit)
        except Compacted as exc:
            return JSONResponse({**exc.to_json(), "revision": service.durable_revision},
                                status_code=410)
        return {"revision": revision, "changes": changes}

    return app


def _group_path(text: str) -> str:
    return text.strip("/") or "/"


class LimitsAndTiming:
    """Refuses oversized bodies up front and times every request (pure ASGI: cheap)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length" and (not value.isdigit() or int(value) > MAX_BODY):
                response = error(413, "too_large", f"request body over {MAX_BODY} bytes")
                await response(scope, receive, send)
                return
        started = time.perf_counter()
        try:
            body = await _read_body(receive)
            if body is None:
                response = error(413, "too_large", f"request body over {MAX_BODY} bytes")
                await response(scope, receive, send)
                return
            await self.app(scope, _replay(body, receive), send)
        finally:
            route = scope.get("route")
            self.metrics.observe(scope["method"], getattr(route, "path", "unmatched"),
                                 time.perf_counter() - started)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, or None past MAX_BODY (Content-Length may be absent: chunked)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # e.g. http.disconnect
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class Unauthorized(RomanaError):
    code = "unauthorized"
    http_status = 401

    def __init__(self) -> None:
        super().__init__("missing or wrong bearer token", ["send Authorization: Bearer TOKEN"])
