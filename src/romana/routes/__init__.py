"""Routes: per-device route sets computed from the IPAM state, aggregated by prefix group."""

from romana.routes.compute import group_routes, host_routes, route_set, vantages
from romana.routes.model import Route, RouteSet
from romana.routes.tracker import RouteTracker
from romana.routes.verify import blocks_of, verify

__all__ = [
    "Route",
    "RouteSet",
    "RouteTracker",
    "blocks_of",
    "group_routes",
    "host_routes",
    "route_set",
    "vantages",
    "verify",
]
