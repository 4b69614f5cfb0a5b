"""romanad's HTTP application: the routers (:mod:`romana.api.routers`), the error answers
(one shape, :class:`romana.responses.ErrorBody`, for every error) and the OpenAPI spec."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException

from romana import __version__
from romana.api.context import Romanad
from romana.api.metrics import Metrics
from romana.api.middleware import AsciiJSONResponse, LimitsAndTiming
from romana.api.routers import ROUTERS
from romana.api.service import IpamService
from romana.api.watches import DEFAULT_LIMIT, WatchBudget
from romana.buildinfo import build_info
from romana.errors import RomanaError
from romana.responses import ErrorBody
from romana.topology import Topology

log = logging.getLogger("romanad")


def error(
    status: int, code: str, message: str, details: list[Any] | None = None
) -> AsciiJSONResponse:
    body: ErrorBody = {"error": {"code": code, "message": message, "details": details or []}}
    return AsciiJSONResponse(body, status_code=status)


def create_app(
    service: IpamService, token: str | None = None, max_watches: int = DEFAULT_LIMIT
) -> FastAPI:
    """romanad's API over ``service``; ``token``: the bearer token writes need (None: open);
    ``max_watches``: long polls waiting at once at most (see :mod:`romana.api.watches`)."""
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
    app.state.romanad = Romanad(
        service=service,
        metrics=metrics,
        watches=watches,
        token=token,
        build=build_info(),  # fixed for the process's life: read once
        store_kind=str(service.store.describe()["kind"]),
    )

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
    # The routers' routes go straight into the app's list: include_router would nest them
    # (FastAPI >= 0.12x), and matching through the nesting cost ~0.2 ms per request.
    for router in ROUTERS:
        app.router.routes.extend(router.routes)
    app.openapi = _with_topology_schema(app)  # type: ignore[method-assign]
    return app


def _with_topology_schema(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The spec, with the map's own schema where a topology goes in or comes out: the body
    is taken as plain JSON so the validator can report every problem at once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            topology = Topology.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(topology.pop("$defs", {}))
            schemas["Topology"] = topology
            as_map = {"application/json": {"schema": {"$ref": "#/components/schemas/Topology"}}}
            operations = spec["paths"]["/topology"]
            operations["post"]["requestBody"] = {"required": True, "content": as_map}
            operations["get"]["responses"]["200"]["content"] = as_map
            schemas["TopologyApplied"]["properties"]["topology"] = as_map["application/json"][
                "schema"
            ]
            app.openapi_schema = spec
        return app.openapi_schema

    return openapi
