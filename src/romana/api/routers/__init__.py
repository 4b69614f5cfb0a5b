"""romanad's HTTP API, one router per resource; :func:`romana.api.app.create_app` mounts
them all. Paths are compatible with the original Romana daemon, plus extensions."""

from __future__ import annotations

from fastapi import APIRouter

from romana.api.routers import (
    addresses,
    hosts,
    networks,
    operations,
    policies,
    route_sets,
    topology,
)

ROUTERS: tuple[APIRouter, ...] = (
    topology.router,
    networks.router,
    hosts.router,
    addresses.router,
    route_sets.router,
    policies.router,
    operations.router,
)
