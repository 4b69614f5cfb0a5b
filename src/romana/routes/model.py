"""Route sets: what one device (a host, or a group's router) needs to forward pod traffic."""

from __future__ import annotations

from dataclasses import dataclass

from romana.ipam.addr import cidr_str
from romana.responses import DeviceRouteSet, RouteJson


def host_vantage(name: str) -> str:
    return f"host:{name}"


def group_vantage(path: str) -> str:
    return f"group:{path}"


@dataclass(frozen=True, slots=True, order=True)
class Route:
    base: int
    prefixlen: int
    via: str  # "host:NAME", "group:PATH" (a child group's router) or "local"
    gateway: str | None  # next-hop IP when known (hosts' IPs); routers have none in the map

    @property
    def prefix(self) -> str:
        return cidr_str(self.base, self.prefixlen)

    def to_json(self) -> RouteJson:
        return {"prefix": self.prefix, "via": self.via, "gateway": self.gateway}


@dataclass(frozen=True, slots=True)
class RouteSet:
    vantage: str
    default: str | None  # where everything else goes: the parent group's router
    routes: tuple[Route, ...]  # sorted by address

    @property
    def next_hops(self) -> frozenset[str]:
        return frozenset(r.via for r in self.routes)

    def to_json(self) -> DeviceRouteSet:
        return {
            "vantage": self.vantage,
            "default": self.default,
            "routes": [r.to_json() for r in self.routes],
        }
