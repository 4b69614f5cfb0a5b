"""The prefixes every device routes to a host: its areas, plus its blocks outside them.

A host's *prefixes* in a leaf group are the CIDRs of its areas (each may cover free blocks
of the area, which can only ever be handed to that host, or lent) and, collapsed, its
*stray* blocks: blocks whose smallest enclosing area is not the host's own (a block lent
to it inside another host's area, or one allocated before areas existed). Longest-prefix
match over all hosts' prefixes then names the owner of every allocated address: a lent
block or loan is more specific than the area it lies in, and no prefix is ever equal to
another host's (areas are never equal, and placement never lets one host's blocks cover
another host's area; see :mod:`romana.ipam.placement`).

A host's *holes* are the other hosts' prefixes lying directly under one of its own, the
routes an L3-to-host host needs so that traffic to a loan inside its area leaves through
its default route instead of being dropped by its own ``local`` area route.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from romana.routes.aggregate import Prefix, collapse

if TYPE_CHECKING:
    from romana.ipam.blocks import Block
    from romana.ipam.groups import GroupNode, NetworkTree


class HostPrefixes:
    """A host's prefixes as one live collection: its areas and its collapsed stray blocks.

    Both sets are shared with the route tracker, which updates them in place; segments of
    every device carrying the host's routes read through this view.
    """

    __slots__ = ("areas", "strays")

    def __init__(self, areas: set[Prefix] | None = None, strays: set[Prefix] | None = None) -> None:
        self.areas: set[Prefix] = areas if areas is not None else set()
        self.strays: set[Prefix] = strays if strays is not None else set()

    def __len__(self) -> int:
        return len(self.areas) + len(self.strays)

    def __iter__(self) -> Iterator[Prefix]:
        yield from self.areas
        yield from self.strays

    def __contains__(self, prefix: object) -> bool:
        return prefix in self.areas or prefix in self.strays

    def __bool__(self) -> bool:
        return bool(self.areas) or bool(self.strays)


def is_stray(leaf: GroupNode, block: Block) -> bool:
    """Whether ``block`` needs a route of its own: its smallest area is not its host's."""
    area = leaf.areas.innermost(block.index)
    return area is None or area.host != block.host


def leaf_prefixes(tree: NetworkTree, leaf: GroupNode) -> dict[str, HostPrefixes]:
    """Every host's prefixes in ``leaf``, computed from scratch."""
    out: dict[str, HostPrefixes] = {host: HostPrefixes() for host in leaf.hosts}
    for area in leaf.areas:
        out.setdefault(area.host, HostPrefixes()).areas.add(
            tree.run_prefix(leaf, area.start, area.size)
        )
    strays: dict[str, list[Prefix]] = {}
    for block in leaf.blocks.values():
        if is_stray(leaf, block):
            strays.setdefault(block.host, []).append((block.base, tree.block_mask))
    for host, blocks in strays.items():
        out.setdefault(host, HostPrefixes()).strays.update(collapse(blocks))
    return out


def holes(owners: Iterable[tuple[str, Iterable[Prefix]]], floor: int) -> dict[str, set[Prefix]]:
    """Each host's holes: others' prefixes whose closest enclosing prefix is the host's.

    ``owners`` gives every host's prefixes in one leaf group; ``floor`` is the group's prefix
    length (no prefix of the group is shorter).
    """
    owner_of: dict[Prefix, str] = {}
    for host, prefixes in owners:
        for prefix in prefixes:
            owner_of[prefix] = host
    out: dict[str, set[Prefix]] = {}
    for (base, length), host in owner_of.items():
        for shorter in range(length - 1, floor - 1, -1):
            container = owner_of.get((base & (0xFFFFFFFF << (32 - shorter)) & 0xFFFFFFFF, shorter))
            if container is not None:
                if container != host:
                    out.setdefault(container, set()).add((base, length))
                break
    return out
