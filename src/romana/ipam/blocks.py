"""Address blocks, addresses and blackout ranges: the in-memory records of the IPAM.

A block is a ``block_mask``-sized CIDR owned by one (host, tenant, segment). Its addresses
live in two bitmaps (bit i = address base+i): ``used`` for allocated ones and ``black`` for
blacked-out ones, so the lowest free address is a couple of integer operations.
"""

from __future__ import annotations

from bisect import bisect_right
from ipaddress import IPv4Network
from typing import TYPE_CHECKING

from romana.ipam.addr import cidr_range

if TYPE_CHECKING:
    from romana.ipam.groups import GroupNode, NetworkTree


class Block:
    __slots__ = (
        "allocated",
        "base",
        "black",
        "full",
        "host",
        "index",
        "leaf",
        "segment",
        "tenant",
        "tree",
        "used",
    )

    def __init__(
        self,
        tree: NetworkTree,
        leaf: GroupNode,
        index: int,
        base: int,
        host: str,
        tenant: str,
        segment: str,
        black: int,
    ) -> None:
        self.tree = tree
        self.leaf = leaf
        self.index = index
        self.base = base
        self.host = host
        self.tenant = tenant
        self.segment = segment
        self.full = (1 << tree.block_size) - 1
        self.used = 0
        self.black = black
        self.allocated = 0

    @property
    def owner(self) -> tuple[str, str, str]:
        return (self.host, self.tenant, self.segment)

    @property
    def is_full(self) -> bool:
        return (self.used | self.black) == self.full

    def lowest_free(self) -> int:
        free = ~(self.used | self.black) & self.full
        return self.base + (free & -free).bit_length() - 1

    def used_ips(self) -> list[int]:
        used, base, out = self.used, self.base, []
        while used:
            low = used & -used
            out.append(base + low.bit_length() - 1)
            used ^= low
        return out


class Address:
    __slots__ = ("block", "ip", "name")

    def __init__(self, name: str, ip: int, block: Block) -> None:
        self.name = name
        self.ip = ip
        self.block = block


def first_free_in(black: int, size: int) -> int | None:
    """Offset of the lowest address not blacked out in a block (None if none)."""
    free = ~black & ((1 << size) - 1)
    return (free & -free).bit_length() - 1 if free else None


class Blackouts:
    """A network's blackout CIDRs and their merged ranges, for mask and cover queries."""

    __slots__ = ("_his", "_los", "cidrs")

    def __init__(self, cidrs: list[IPv4Network] | None = None) -> None:
        self.cidrs: list[IPv4Network] = list(cidrs or [])
        self._los: list[int] = []
        self._his: list[int] = []
        self._merge()

    def _merge(self) -> None:
        self._los, self._his = [], []
        for lo, hi in sorted(cidr_range(c) for c in self.cidrs):
            if self._his and lo <= self._his[-1]:
                self._his[-1] = max(self._his[-1], hi)
            else:
                self._los.append(lo)
                self._his.append(hi)

    def add(self, cidr: IPv4Network) -> None:
        self.cidrs.append(cidr)
        self._merge()

    def remove(self, cidr: IPv4Network) -> None:
        self.cidrs.remove(cidr)
        self._merge()

    def ranges(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Merged blacked-out ranges intersecting ``[lo, hi)``, clipped to it."""
        i = max(bisect_right(self._los, lo) - 1, 0)
        out = []
        while i < len(self._los) and self._los[i] < hi:
            a, b = max(self._los[i], lo), min(self._his[i], hi)
            if a < b:
                out.append((a, b))
            i += 1
        return out

    def mask(self, base: int, size: int) -> int:
        if not self._los:
            return 0
        bits = 0
        for a, b in self.ranges(base, base + size):
            bits |= ((1 << (b - a)) - 1) << (a - base)
        return bits

    def contains(self, ip: int) -> bool:
        i = bisect_right(self._los, ip) - 1
        return i >= 0 and ip < self._his[i]

    def covers(self, lo: int, hi: int) -> bool:
        i = bisect_right(self._los, lo) - 1
        return i >= 0 and hi <= self._his[i]

    def covered_indices(self, base: int, count: int, size: int) -> list[tuple[int, int]]:
        """Index ranges of blocks (of ``size`` from ``base``) wholly blacked out."""
        out = []
        end = base + count * size
        for a, b in self.ranges(base, end):
            first = -(-(a - base) // size)
            last = (b - base) // size
            if first < last:
                out.append((first, last))
        return out

    def __bool__(self) -> bool:
        return bool(self._los)
