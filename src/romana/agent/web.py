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
from romana.agent.nat import NatKeeper
from romana.agent.policy import PolicyEnforcer
from romana.supervise import Supervisor


def create_app(
    agent: RouteAgent,
    metrics: AgentMetrics,
    supervisor: Supervisor,
    enforcer: PolicyEnforcer | None = None,
    nat: NatKeeper | None = None,
) -> Starlette:
    started = time.time()

    async def healthz(_: Request) -> JSONResponse:
        """Alive (503 if a loop is failed, restarting or stuck); also says whether routes
        are synced, romanad answers and its feed is followed (a romanad outage is no reason
        to restart the agent: the kernel keeps its routes)."""
        ok, loops = supervisor.health()
        return JSONResponse(
            {
                "status": "ok" if ok else "degraded",
                "host": agent.host,
                "synced": agent.synced.is_set(),
                "romanad": "up" if agent.romanad_up else "unreachable",
                "feed": "rewound" if agent.rewound else "followed",
                "feed_problem": agent.rewound,
                "store_id": agent.store_id,
                "revision": agent.revision,
                "policy": enforcer.health() if enforcer is not None else None,
                "nat": nat.health() if nat is not None else None,
                "loops": loops,
                "uptime_s": round(time.time() - started, 1),
            },
            status_code=200 if ok else 503,
        )

    async def readyz(_: Request) -> JSONResponse:
        ready = agent.synced.is_set() and (
            enforcer is None or (enforcer.enforced.is_set() and enforcer.table_problem is None)
        )
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def prometheus(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", prometheus)]
    )
