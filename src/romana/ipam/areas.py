"""Host areas: the aligned runs of a leaf group's blocks that each host's new blocks come from.

Positions are block indices inside the leaf (``0 .. block_count``). An area is a run
``[start, start + size)`` with ``size`` a power of two and ``start`` a multiple of it, so it
is one CIDR and one route. The areas of a leaf form a laminar family: two areas are either
disjoint or one lies strictly inside the other (a *loan*: a run lent to another host inside
an area), never equal. Longest-prefix match then sends every address of a loan to the
borrower and the rest of the area to its owner.

This module only keeps the areas and answers questions about them; which area a host gets
is decided in :mod:`romana.ipam.placement`, and areas change only through facts
(``area_reserved``, ``area_released``) applied by :mod:`romana.ipam.state`.
"""

from __future__ import annotations

from bisect import bisect_left, insort


class Area:
    """One host's area; ``count`` is how many of the host's blocks lie inside it."""

    __slots__ = ("count", "host", "size", "start")

    def __init__(self, start: int, size: int, host: str) -> None:
        self.start = start
        self.size = size
        self.host = host
        self.count = 0

    @property
    def end(self) -> int:
        return self.start + self.size

    def holds(self, index: int) -> bool:
        return self.start <= index < self.start + self.size

    def __repr__(self) -> str:
        return f"Area({self.start}, {self.size}, {self.host!r}, count={self.count})"


def _key(start: int, size: int) -> int:
    return (start << 6) | (size.bit_length() - 1)


def _order(area: Area) -> tuple[int, int]:
    return area.start, -area.size  # outer areas before the loans that share their start


class LeafAreas:
    """The areas of one leaf group, indexed by position and by host."""

    __slots__ = ("_by_key", "_ordered", "_starts", "block_count", "by_host", "loans")

    def __init__(self, block_count: int) -> None:
        self.block_count = block_count
        self._by_key: dict[int, Area] = {}
        self._ordered: list[Area] = []  # by start, outer first
        self._starts: list[tuple[int, int]] = []  # _order() of _ordered, for bisect
        self.by_host: dict[str, list[Area]] = {}  # each host's areas, largest first
        self.loans = 0  # areas lying inside another (0: no area needs to look inside)

    def __len__(self) -> int:
        return len(self._ordered)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._ordered)

    def get(self, start: int, size: int) -> Area | None:
        return self._by_key.get(_key(start, size))

    def add(self, start: int, size: int, host: str) -> Area:
        area = Area(start, size, host)
        key = _key(start, size)
        assert key not in self._by_key, f"area {start}+{size} is held already"
        self._count_loans(start, size, +1)
        self._by_key[key] = area
        position = bisect_left(self._starts, _order(area))
        self._ordered.insert(position, area)
        self._starts.insert(position, _order(area))
        mine = self.by_host.setdefault(host, [])
        insort(mine, area, key=lambda a: (-a.size, a.start))
        return area

    def remove(self, start: int, size: int) -> Area:
        area = self._by_key.pop(_key(start, size))
        self._count_loans(start, size, -1)
        position = bisect_left(self._starts, _order(area))
        del self._ordered[position], self._starts[position]
        mine = self.by_host[area.host]
        mine.remove(area)
        if not mine:
            del self.by_host[area.host]
        return area

    def _count_loans(self, start: int, size: int, sign: int) -> None:
        """An area added (or removed) inside another is (was) a loan; one added (removed) at
        the top makes (made) loans of the outermost areas inside it."""
        if self.enclosing(start, size) is not None:
            self.loans += sign
        else:
            self.loans += sign * len(self.outermost_within(start, start + size, strictly=True))

    def innermost(self, index: int) -> Area | None:
        """The smallest area holding block ``index`` (None outside every area)."""
        return self._smallest_from(index, 0)

    def enclosing(self, start: int, size: int) -> Area | None:
        """The smallest area strictly containing the run ``[start, start + size)``."""
        return self._smallest_from(start, size.bit_length())

    def _smallest_from(self, index: int, bits: int) -> Area | None:
        # Probes each aligned run holding ``index`` from 2**bits blocks up (keys inlined:
        # this runs for every block fact the route tracker sees).
        by_key = self._by_key
        if not by_key:
            return None
        for level in range(bits, self.block_count.bit_length()):
            area = by_key.get(((index >> level << level) << 6) | level)
            if area is not None:
                return area
        return None

    def within(self, lo: int, hi: int) -> list[Area]:
        """Areas lying inside ``[lo, hi)`` (one equal to it included), outer first."""
        i = bisect_left(self._starts, (lo, -(hi - lo)))
        out = []
        while i < len(self._ordered) and self._ordered[i].start < hi:
            area = self._ordered[i]
            if area.end <= hi:
                out.append(area)
            i += 1
        return out

    def outermost_within(self, lo: int, hi: int, strictly: bool = False) -> list[Area]:
        """The areas inside ``[lo, hi)`` that no other area inside it contains (with
        ``strictly``, an area equal to the run does not count)."""
        out: list[Area] = []
        for area in self.within(lo, hi):
            if strictly and area.start == lo and area.end == hi:
                continue
            if not out or area.start >= out[-1].end:
                out.append(area)
        return out
