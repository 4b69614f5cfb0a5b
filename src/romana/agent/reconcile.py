"""What the agent wants in its routing table, and how that differs from what the kernel has.

Pure: no netlink, no I/O. The agent asks romanad for its host's route set, turns it into
``KernelRoute`` values with ``from_route_set``, reads the kernel with ``RouteTable.dump`` and
feeds both to ``diff_routes``; ``RouteTable.apply`` then programs only the difference. Keeping
this step pure lets it be tested exhaustively without root, and keeps the netlink module about
talking to the kernel only.

Routes are keyed by their normalised prefix ("10.1.0.8/29"): the agent's table holds at most
one route of its own per prefix, so "same prefix, different next hop" is a replace, not an
add plus a delete.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from romana.wire import LOCAL_VIA

RouteKind = Literal["unicast", "unreachable", "throw"]
KINDS: frozenset[str] = frozenset({"unicast", "unreachable", "throw"})


@dataclass(frozen=True, slots=True)
class KernelRoute:
    """One IPv4 route of the agent's table, as the agent programs it.

    ``unicast`` routes normally carry a gateway. ``dump`` also reports a route with the agent's
    protocol that the agent cannot describe (a device route, a blackhole, a multipath route
    someone added with our protocol number) as ``unicast`` without a gateway: no desired route
    looks like that, so reconciling replaces or deletes it.
    """

    prefix: str
    gateway: str | None
    kind: RouteKind

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"route {self.prefix}: unknown kind {self.kind!r}")
        if self.kind != "unicast" and self.gateway is not None:
            raise ValueError(f"route {self.prefix}: an {self.kind} route has no gateway")


@dataclass(frozen=True, slots=True)
class RouteDiff:
    """The kernel operations that turn the actual table into the desired one, sorted."""

    add: tuple[KernelRoute, ...]  # prefix absent in the kernel
    replace: tuple[KernelRoute, ...]  # prefix present but gateway/kind differ (desired value)
    delete: tuple[KernelRoute, ...]  # ours in the kernel, not desired (kernel value)

    @property
    def empty(self) -> bool:
        return not (self.add or self.replace or self.delete)

    def __len__(self) -> int:
        return len(self.add) + len(self.replace) + len(self.delete)


@dataclass(frozen=True, slots=True)
class SkippedRoute:
    """A route of the route set that a host cannot program, and why (for the agent's log)."""

    prefix: str
    via: str
    reason: str


def prefix_key(prefix: str) -> tuple[int, int]:
    """Numeric sort key of a normalised IPv4 prefix: address order, then prefix length.

    Cheaper than building an ``IPv4Network`` per route (tables hold tens of thousands).
    """
    address, _, length = prefix.partition("/")
    return int.from_bytes(socket.inet_aton(address), "big"), int(length)


def _sorted(routes: Iterable[KernelRoute]) -> tuple[KernelRoute, ...]:
    return tuple(sorted(routes, key=lambda r: prefix_key(r.prefix)))


def diff_routes(desired: Mapping[str, KernelRoute], actual: Mapping[str, KernelRoute]) -> RouteDiff:
    """Compare by prefix; ``actual`` must hold only the agent's own routes (``dump``)."""
    add = [route for prefix, route in desired.items() if prefix not in actual]
    replace = [
        route for prefix, route in desired.items() if prefix in actual and actual[prefix] != route
    ]
    delete = [route for prefix, route in actual.items() if prefix not in desired]
    return RouteDiff(add=_sorted(add), replace=_sorted(replace), delete=_sorted(delete))


def _normalise(prefix: str) -> str:
    """ "10.1.0.8/29" stays as it is; host bits, IPv6 or garbage raise ValueError."""
    network = ipaddress.ip_network(prefix, strict=True)
    if network.version != 4:
        raise ValueError("only IPv4 routes are programmed")
    return str(network)


def _to_kernel_route(entry: Mapping[str, Any]) -> KernelRoute | str:
    """The kernel route for one wire entry, or the reason it cannot be programmed."""
    try:
        prefix = _normalise(str(entry["prefix"]))
    except ValueError as e:
        return f"bad prefix: {e}"
    via = str(entry.get("via"))
    if via == LOCAL_VIA:
        return KernelRoute(prefix, None, "unreachable")
    gateway = entry.get("gateway")
    if gateway is None and via.startswith("group:"):
        # Towards the host's group router: leave our table and take the host's own default
        # route (a hole in one of our areas, lent to a host we do not route to directly).
        return KernelRoute(prefix, None, "throw")
    if gateway is None:
        return "no gateway: the next hop is a host this host cannot address"
    try:
        address = ipaddress.ip_address(gateway)
    except ValueError as e:
        return f"bad gateway: {e}"
    if address.version != 4:
        return "bad gateway: not IPv4"
    return KernelRoute(prefix, str(address), "unicast")


def from_route_set(
    routes_json: Mapping[str, Any],
) -> tuple[dict[str, KernelRoute], list[SkippedRoute]]:
    """Translate romanad's route set of one host into (desired routes, skipped routes).

    ``via == "local"`` (the host's own prefixes) becomes ``unreachable``: addresses there
    that no pod holds are dropped here instead of bouncing to a default route; the pods' own
    /32s live in the main table and win through the policy rules. A route with a gateway
    becomes unicast via it. A route to the host's group router (``via: "group:..."``, no
    gateway: a hole in one of its areas) becomes ``throw``: the lookup leaves our table and
    the host's own default route takes the packet to that router. Anything else is skipped
    and returned so the caller can log it. A prefix listed twice keeps its first entry; the
    second is skipped.
    """
    desired: dict[str, KernelRoute] = {}
    skipped: list[SkippedRoute] = []
    for entry in routes_json.get("routes", ()):
        via = str(entry.get("via"))
        route = _to_kernel_route(entry)
        if isinstance(route, str):
            skipped.append(SkippedRoute(str(entry.get("prefix")), via, route))
        elif route.prefix in desired:
            skipped.append(SkippedRoute(route.prefix, via, "duplicate prefix"))
        else:
            desired[route.prefix] = route
    return desired, skipped
