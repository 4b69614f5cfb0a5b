"""The agent's HTTP face: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from romana.agent.follow import RouteAgent
from romana.agent.metrics import AgentMetrics


def create_app(agent: RouteAgent, metrics: AgentMetrics) -> Starlette:
    started = time.time()

    async def healthz(_: Request) -> JSONResponse:
        """Alive; also says whether routes are synced and romanad answers (a romanad outage
        is no reason to restart the agent: the kernel keeps its routes)."""
        return JSONResponse({
            "status": "ok", "host": agent.host, "synced": agent.synced.is_set(),
            "romanad": "up" if agent.romanad_up else "unreachable",
            "revision": agent.revision, "uptime_s": round(time.time() - started, 1)})

    async def readyz(_: Request) -> JSONResponse:
        ready = agent.synced.is_set()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def prometheus(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz),
                             Route("/metrics", prometheus)])
