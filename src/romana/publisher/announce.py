"""What a host announces to its group's router: a pure function of what romanad knows.

Two policies (``--announce``):

- ``blocks`` (default): the host's own blocks, collapsed exactly (sibling blocks of the
  host merge into their parent; a free block between two of the host's is never covered,
  because romanad may hand it to a neighbour). These are romanad's ``via: local`` routes.
- ``group``: when the host is the **only** host of its leaf group in a network, it
  announces the whole leaf prefix instead: one route that never changes as blocks come and
  go. As soon as a second host joins the group, the host falls back to its blocks for that
  network (announcing the leaf would then attract the neighbour's traffic).

The result is sorted by address, so an unchanged announcement compares equal and causes
no re-render.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class Policy(StrEnum):
    BLOCKS = "blocks"
    GROUP = "group"


@dataclass(frozen=True, slots=True)
class Placement:
    """A host's leaf group in one network, with the group's CIDR in that network."""

    group: str
    cidr: str


def sort_cidrs(cidrs: Iterable[str]) -> list[str]:
    """Distinct CIDRs in address order (then shorter prefix first)."""
    nets = {ipaddress.IPv4Network(c) for c in cidrs}
    return [str(n) for n in sorted(nets, key=lambda n: (n.network_address, n.prefixlen))]


def collapse(cidrs: Iterable[str]) -> list[str]:
    """The fewest CIDRs covering exactly the given ones (siblings merge, gaps stay)."""
    nets = [ipaddress.IPv4Network(c) for c in cidrs]
    return [str(n) for n in ipaddress.collapse_addresses(nets)]


def announced(
    placements: Mapping[str, Placement],
    local: Iterable[str],
    group_sizes: Mapping[str, int],
    policy: Policy,
) -> list[str]:
    """The prefixes a host announces.

    ``placements``: network -> the host's leaf group there; ``local``: the host's own
    blocks, collapsed (romanad's ``via: local`` routes); ``group_sizes``: network -> how
    many hosts share the host's leaf group there (only read by the ``group`` policy).
    """
    own = sort_cidrs(local)
    if policy is Policy.BLOCKS:
        return own
    out: list[str] = []
    alone = []
    for network, placement in placements.items():
        if group_sizes.get(network, 0) == 1:
            out.append(placement.cidr)
            alone.append(ipaddress.IPv4Network(placement.cidr))
    # Blocks of the other networks (where the host has neighbours) stay as they are.
    out += [c for c in own if not any(ipaddress.IPv4Network(c).subnet_of(leaf) for leaf in alone)]
    return sort_cidrs(out)
