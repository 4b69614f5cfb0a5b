"""The free-block pool of a leaf group: a set of block indices kept as sorted intervals.

Intervals keep the pool small and every operation O(log n) lookups plus a short list
shift, however large the group: a fresh /15 leaf with 16,384 blocks is a single interval.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator


class FreeBlocks:
    """Free block indices of one leaf group; the lowest index is handed out first."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, intervals: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []  # exclusive
        for lo, hi in intervals:
            if lo < hi:
                self._starts.append(lo)
                self._ends.append(hi)

    @classmethod
    def excluding(cls, count: int, taken: Iterable[tuple[int, int]]) -> FreeBlocks:
        """Indices ``[0, count)`` minus the (possibly overlapping) ``taken`` ranges."""
        free: list[tuple[int, int]] = []
        cursor = 0
        for lo, hi in sorted(taken):
            if lo > cursor:
                free.append((cursor, min(lo, count)))
            cursor = max(cursor, hi)
            if cursor >= count:
                break
        if cursor < count:
            free.append((cursor, count))
        return cls(free)

    def __len__(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def __contains__(self, index: int) -> bool:
        i = bisect_right(self._starts, index) - 1
        return i >= 0 and index < self._ends[i]

    def __iter__(self) -> Iterator[int]:
        for s, e in zip(self._starts, self._ends, strict=True):
            yield from range(s, e)

    def lowest(self) -> int | None:
        return self._starts[0] if self._starts else None

    def lowest_in(self, lo: int, hi: int) -> int | None:
        """The lowest free index in ``[lo, hi)``, or None."""
        i = bisect_right(self._starts, lo) - 1
        if i >= 0 and self._ends[i] > lo:
            return lo
        i += 1
        if i < len(self._starts) and self._starts[i] < hi:
            return self._starts[i]
        return None

    def runs(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """The free intervals clipped to ``[lo, hi)``, in order."""
        i = max(bisect_right(self._starts, lo) - 1, 0)
        starts, ends = self._starts, self._ends
        while i < len(starts) and starts[i] < hi:
            a, b = max(starts[i], lo), min(ends[i], hi)
            if a < b:
                yield a, b
            i += 1

    def covers(self, lo: int, hi: int) -> bool:
        """Whether every index of ``[lo, hi)`` is free."""
        i = bisect_right(self._starts, lo) - 1
        return i >= 0 and self._ends[i] >= hi

    def take(self, index: int) -> None:
        """Remove ``index`` from the pool (it must be free)."""
        i = bisect_right(self._starts, index) - 1
        if i < 0 or index >= self._ends[i]:
            raise KeyError(index)
        start, end = self._starts[i], self._ends[i]
        if start == index and end == index + 1:
            del self._starts[i], self._ends[i]
        elif start == index:
            self._starts[i] = index + 1
        elif end == index + 1:
            self._ends[i] = index
        else:
            self._ends[i] = index
            self._starts.insert(i + 1, index + 1)
            self._ends.insert(i + 1, end)

    def give(self, index: int) -> None:
        """Return ``index`` to the pool (it must not be free)."""
        i = bisect_right(self._starts, index) - 1
        if i >= 0 and index < self._ends[i]:
            raise KeyError(index)
        joins_left = i >= 0 and self._ends[i] == index
        joins_right = i + 1 < len(self._starts) and self._starts[i + 1] == index + 1
        if joins_left and joins_right:
            self._ends[i] = self._ends[i + 1]
            del self._starts[i + 1], self._ends[i + 1]
        elif joins_left:
            self._ends[i] = index + 1
        elif joins_right:
            self._starts[i + 1] = index
        else:
            self._starts.insert(i + 1, index)
            self._ends.insert(i + 1, index + 1)

    def intervals(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))
