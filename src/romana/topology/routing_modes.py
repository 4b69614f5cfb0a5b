"""The ``routing`` field of a host group: how its hosts reach each other and the network.

Syntax: comma-separated tokens, as in the original (``"block-host-routes,
prefix-announce-bgp"``); case and spaces around tokens do not matter.

- ``block-host-routes`` (alias ``l2-to-host``): the group's hosts share an L2 segment; each
  host installs routes to its neighbours' blocks with the neighbour's IP as gateway.
- ``prefix-announce-bgp`` / ``prefix-announce-ospf`` (alias ``l3-to-host``, meaning BGP):
  hosts do not share a segment; they install no peer routes, use their default route to
  the group's router, and announce their blocks to it (see the publisher).

A group without ``routing`` inherits its parent's; the root default is
``block-host-routes`` (hosts of a group share a segment: the common Kubernetes setup).
Both kinds may be combined: hosts route to each other *and* announce to the router.
"""

from __future__ import annotations

from dataclasses import dataclass

HOST_ROUTES = "block-host-routes"
ANNOUNCE_BGP = "prefix-announce-bgp"
ANNOUNCE_OSPF = "prefix-announce-ospf"
ALIASES = {"l2-to-host": HOST_ROUTES, "l3-to-host": ANNOUNCE_BGP}
KNOWN = (HOST_ROUTES, ANNOUNCE_BGP, ANNOUNCE_OSPF, *ALIASES)
DEFAULT = HOST_ROUTES


@dataclass(frozen=True, slots=True)
class RoutingMode:
    host_routes: bool  # L2-to-host: hosts route to their group neighbours directly
    announce: frozenset[str]  # protocols used to announce blocks to the group's router

    @property
    def text(self) -> str:
        tokens = [HOST_ROUTES] if self.host_routes else []
        tokens += [f"prefix-announce-{p}" for p in sorted(self.announce)]
        return ", ".join(tokens)


def tokens(text: str) -> list[str]:
    return [t.strip().lower() for t in text.split(",") if t.strip()]


def unknown_tokens(text: str) -> list[str]:
    return [t for t in tokens(text) if t not in KNOWN]


def parse(text: str) -> RoutingMode:
    """The mode named by a ``routing`` value (already validated: unknown tokens ignored)."""
    found = {ALIASES.get(t, t) for t in tokens(text)}
    announce = frozenset(
        t.removeprefix("prefix-announce-") for t in found if t in (ANNOUNCE_BGP, ANNOUNCE_OSPF)
    )
    return RoutingMode(HOST_ROUTES in found, announce)
