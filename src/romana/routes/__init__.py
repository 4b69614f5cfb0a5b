"""Routes: per-device route sets computed from the IPAM state, aggregated by prefix group."""

from romana.routes.compute import group_routes, host_routes, route_set, vantages
from romana.routes.model import Route, RouteSet
from romana.routes.tracker import RouteTracker

__all__ = ["Route", "RouteSet", "RouteTracker", "group_routes", "host_routes", "route_set",
           "vantages"]
