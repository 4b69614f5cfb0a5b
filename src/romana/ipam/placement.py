"""Host-affine block placement: which free block of a leaf group a host's new block is.

Each host of a leaf group holds an *area* (:mod:`romana.ipam.areas`), an aligned run of the
group's blocks that routers and neighbours reach with one route. A new block for host H is,
in this order (every step deterministic, ties to the lowest position):

1. the lowest free block of one of H's areas (largest area first), outside any loan made
   from it;
2. the lowest free block of an area that *grows*: one of H's areas whose buddy (the other
   half of its parent run) holds nothing of anyone else doubles into it, keeping one route;
3. a new area:
   a. the largest *vacant* run (no blocks, no areas) outside every area, whole;
   b. for a host that holds no area yet, the larger half of another host's area that the
      owner barely uses (at most a quarter of it used, the other half vacant): the owner
      keeps the half holding its blocks, the newcomer takes the other;
   c. a *loan*: one block at the top of the largest (then highest) vacant run inside another
      host's area, where it grows downwards (step 2) while the owner fills upwards, so both
      stay one route each until they meet;
4. the lowest free block of the group, wherever it is (the group is nearly full); if it
   lies in an area whose owner holds no block there, that area is released, so no area is
   ever wholly covered by another host's blocks.

So a group is exhausted only when every block is taken, a host's blocks form few prefixes,
and an allocation inside an existing area changes no route. Placement only plans: it
returns the chosen block and the area changes, as facts to be made durable and applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from romana.ipam.areas import Area, LeafAreas

if TYPE_CHECKING:
    from romana.ipam.blocks import Block
    from romana.ipam.groups import GroupNode

# A newcomer may split another host's area only while the owner uses at most this share
# of it; a full neighbour may grow over a buddy area used up to SHRINK_USAGE.
SPLIT_USAGE = 4  # 1/4
SHRINK_USAGE = 2  # 1/2


@dataclass(frozen=True, slots=True)
class AreaChange:
    reserve: bool  # False: release
    host: str
    start: int
    size: int


@dataclass(slots=True)
class Choice:
    index: int
    changes: list[AreaChange] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Run:
    """An aligned vacant run of block indices and the area it lies in (None: unreserved)."""

    start: int
    size: int
    container: Area | None


def choose_block(leaf: GroupNode, host: str) -> Choice | None:
    """The block for ``host``'s next new block in ``leaf``, or None if every block is taken."""
    areas = leaf.areas
    mine = areas.by_host.get(host, ())
    for area in mine:
        index = own_free(leaf, area)
        if index is not None:
            return Choice(index)
    for area in mine:
        choice = _grow(leaf, area)
        if choice is not None:
            return choice
    unreserved = max(unreserved_runs(leaf), key=_largest_lowest, default=None)
    if unreserved is not None:
        start, size = unreserved
        index = leaf.pool.lowest_in(start, start + size)
        assert index is not None, "vacant runs hold a free block"
        return Choice(index, [AreaChange(True, host, start, size)])
    if not mine:
        choice = _split(leaf, host)
        if choice is not None:
            return choice
    # Among the largest, the highest run: owners fill their areas upwards, so a loan at the
    # top of the area is the one that can grow longest before it meets its lender.
    loan = max(loan_runs(leaf, host), key=lambda r: (r.size, r.start), default=None)
    if loan is not None:
        index = _highest_free(leaf, loan.start, loan.start + loan.size)
        return Choice(index, [AreaChange(True, host, index, 1)])
    index = leaf.pool.lowest()
    if index is None:
        return None
    return Choice(index, claim(areas, host, index))


def claim(areas: LeafAreas, host: str, index: int) -> list[AreaChange]:
    """Area changes for ``host`` taking block ``index`` outside its own areas' placement.

    An area whose owner holds no block in it is released rather than left to be covered by
    another host's blocks (a route of the owner would then compete with the taker's).
    """
    area = areas.innermost(index)
    if area is None or area.host == host or area.count:
        return []
    return [AreaChange(False, area.host, area.start, area.size)]


def emptied(leaf: GroupNode, block: Block) -> list[AreaChange]:
    """Area changes once ``block`` is freed: a loan or secondary area left without any
    block of its host goes back (the host's largest area stays, kept for it)."""
    mine = leaf.areas.by_host.get(block.host, ())
    for rank, area in enumerate(mine):
        if area.holds(block.index):
            if area.count == 1 and (rank or leaf.areas.enclosing(area.start, area.size)):
                return [AreaChange(False, area.host, area.start, area.size)]
            break
    return []


def own_free(leaf: GroupNode, area: Area) -> int | None:
    """The lowest free block of ``area`` that no loan inside it covers."""
    pool, cursor = leaf.pool, area.start
    if not leaf.areas.loans:  # the common case: no area lies inside another
        return pool.lowest_in(cursor, area.end)
    for loan in leaf.areas.outermost_within(area.start, area.end, strictly=True):
        if cursor < loan.start:
            index = pool.lowest_in(cursor, loan.start)
            if index is not None:
                return index
        cursor = loan.end
    return pool.lowest_in(cursor, area.end) if cursor < area.end else None


def _grow(leaf: GroupNode, area: Area) -> Choice | None:
    size = area.size
    if size >= leaf.block_count:
        return None
    start = area.start & -(size << 1)
    outer = leaf.areas.enclosing(area.start, size)
    if outer is not None and outer.size <= size << 1:
        return None  # a loan stays strictly inside the area it was lent from
    buddy = area.start ^ size
    if vacant(leaf, buddy, size, area.host):
        changes = [
            AreaChange(False, a.host, a.start, a.size)
            for a in [area, *leaf.areas.within(buddy, buddy + size)]
        ]
    else:
        shrunk = _shrink_over(leaf, area.host, buddy, size)
        if shrunk is None:
            return None
        changes = [*shrunk, AreaChange(False, area.host, area.start, size)]
    changes.append(AreaChange(True, area.host, start, size << 1))
    # The area itself has no free block left (step 1), so the grown area's lowest free block
    # is the buddy's, outside the areas kept there; a buddy all blacked out gains nothing.
    kept = sorted((c.start, c.start + c.size) for c in changes if c.reserve and c.host != area.host)
    index = _lowest_outside(leaf, buddy, buddy + size, kept)
    return None if index is None else Choice(index, changes)


def _lowest_outside(leaf: GroupNode, lo: int, hi: int, holes: list[tuple[int, int]]) -> int | None:
    cursor = lo
    for a, b in [*holes, (hi, hi)]:
        if cursor < a:
            index = leaf.pool.lowest_in(cursor, a)
            if index is not None:
                return index
        cursor = max(cursor, b)
    return None


def _shrink_over(leaf: GroupNode, host: str, start: int, size: int) -> list[AreaChange] | None:
    """Make room in a buddy run held by areas that their owners barely use.

    Each outermost area inside the run shrinks to the half holding everything in it (its
    owner keeps one route, now nested in the grown area), or goes if its owner holds no
    block there; the grower's own areas there merge into it. None if some area is used
    beyond half, spreads over both halves, or another host's block lies in the run outside
    every area.
    """
    end = start + size
    outer = leaf.areas.outermost_within(start, end)
    changes: list[AreaChange] = []
    cursor = start
    for area in [*outer, None]:
        gap_end = area.start if area is not None else end
        if not _only_own_blocks(leaf, host, cursor, gap_end):
            return None
        if area is None:
            break
        cursor = area.end
        if area.host == host:
            changes.append(AreaChange(False, host, area.start, area.size))
            continue
        changes.append(AreaChange(False, area.host, area.start, area.size))
        if area.count == 0:
            continue  # its owner holds nothing there: it goes, loans inside it stay
        half = _holding_half(leaf, area)
        if half is None:
            return None
        changes.append(AreaChange(True, area.host, half, area.size >> 1))
    return changes


def _only_own_blocks(leaf: GroupNode, host: str, lo: int, hi: int) -> bool:
    """Whether every block in ``[lo, hi)`` is free, blacked out or ``host``'s."""
    if lo >= hi or leaf.pool.covers(lo, hi):
        return True
    cursor = lo
    for a, b in [*leaf.pool.runs(lo, hi), (hi, hi)]:
        for index in range(cursor, a):
            block = leaf.blocks.get(index)
            if block is not None and block.host != host:
                return False
        cursor = b
    return True


def _holding_half(leaf: GroupNode, area: Area) -> int | None:
    """The half of a barely used area (<= 1/4) that holds all its blocks and loans."""
    if area.size < 2:
        return None
    used = area.size - _free_count(leaf, area.start, area.end)
    if used * SHRINK_USAGE > area.size:
        return None
    half = area.size >> 1
    for keep in (area.start, area.start + half):
        other = area.start + half if keep == area.start else area.start
        if vacant(leaf, other, half):
            # A loan exactly there would be equal to the shrunk area.
            return None if leaf.areas.get(keep, half) is not None else keep
    return None


def _split(leaf: GroupNode, host: str) -> Choice | None:
    best: tuple[tuple[int, int, int], Area, int] | None = None
    for area in sorted(leaf.areas, key=lambda a: -a.size):  # larger halves first
        if area.size < 2 or (best is not None and area.size >> 1 < -best[0][0]):
            break
        half = area.size >> 1
        used = area.size - _free_count(leaf, area.start, area.end)
        if used * SPLIT_USAGE > area.size:
            continue
        for give in (area.start + half, area.start):
            keep = area.start + half if give == area.start else area.start
            if leaf.areas.get(keep, half) is not None:
                continue  # the owner's half would equal a loan made there
            if vacant(leaf, give, half) and leaf.pool.lowest_in(give, give + half) is not None:
                key = (-half, used, give)
                if best is None or key < best[0]:
                    best = (key, area, give)
                break
    if best is None:
        return None
    _, area, give = best
    half = area.size >> 1
    keep = area.start if give != area.start else area.start + half
    index = leaf.pool.lowest_in(give, give + half)
    assert index is not None
    return Choice(
        index,
        [
            AreaChange(False, area.host, area.start, area.size),
            AreaChange(True, area.host, keep, half),
            AreaChange(True, host, give, half),
        ],
    )


def vacant(leaf: GroupNode, start: int, size: int, host: str | None = None) -> bool:
    """Whether ``[start, start + size)`` holds no block and no area of anyone but ``host``.

    Blocks wholly blacked out are neither free nor anyone's: they do not count.
    """
    end = start + size
    if any(a.host != host for a in leaf.areas.within(start, end)):
        return False
    if leaf.pool.covers(start, end):
        return True
    blocks = leaf.blocks
    cursor = start
    for lo, hi in [*leaf.pool.runs(start, end), (end, end)]:
        for index in range(cursor, lo):
            block = blocks.get(index)
            if block is not None and block.host != host:
                return False
        cursor = hi
    return True


def _largest_lowest(run: tuple[int, int]) -> tuple[int, int]:
    return run[1], -run[0]


def unreserved_runs(leaf: GroupNode) -> Iterator[tuple[int, int]]:
    """Maximal aligned vacant runs outside every area that hold a free block."""
    tops = leaf.areas.outermost_within(0, leaf.block_count)
    return _runs_between(leaf, 0, leaf.block_count, tops)


def loan_runs(leaf: GroupNode, host: str) -> Iterator[Run]:
    """Maximal aligned vacant runs inside an area and no deeper one, with that area, that
    ``host`` may borrow: never inside one of its own areas (its areas stay disjoint)."""
    for area in leaf.areas:
        if area.size == 1:
            continue  # a one-block loan there would equal the area
        if _under(leaf.areas, area, host):
            continue
        inner = leaf.areas.outermost_within(area.start, area.end, strictly=True)
        for start, size in _runs_between(leaf, area.start, area.end, inner):
            yield Run(start, size, area)


def _under(areas: LeafAreas, area: Area | None, host: str) -> bool:
    """Whether ``area`` is ``host``'s or lies inside one of ``host``'s areas."""
    while area is not None:
        if area.host == host:
            return True
        area = areas.enclosing(area.start, area.size)
    return False


def _runs_between(
    leaf: GroupNode, lo: int, hi: int, holes: list[Area]
) -> Iterator[tuple[int, int]]:
    """Maximal aligned vacant runs of ``[lo, hi)`` outside ``holes`` (disjoint, in order)
    that hold a free block."""
    pool = leaf.pool
    for a, b in _vacant_intervals(leaf, lo, hi):
        cursor = a
        for hole in [*(h for h in holes if h.start < b and h.end > a), None]:
            stop = b if hole is None else max(cursor, hole.start)
            for start, size in _aligned(cursor, stop):
                if pool.lowest_in(start, start + size) is not None:
                    yield start, size
            if hole is not None:
                cursor = max(cursor, hole.end)


def _vacant_intervals(leaf: GroupNode, lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """Maximal intervals of ``[lo, hi)`` whose blocks are free or wholly blacked out."""
    dark = [(max(a, lo), min(b, hi)) for a, b in leaf.dark if a < hi and b > lo]
    spans = [*leaf.pool.runs(lo, hi), *dark]
    if dark:
        spans.sort()
    current: list[int] | None = None
    for a, b in spans:
        if current is not None and a <= current[1]:
            current[1] = max(current[1], b)
            continue
        if current is not None:
            yield current[0], current[1]
        current = [a, b]
    if current is not None:
        yield current[0], current[1]


def _aligned(lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """``[lo, hi)`` as the fewest aligned power-of-two runs."""
    while lo < hi:
        size = lo & -lo if lo else 1 << (hi - 1).bit_length()
        while size > hi - lo:
            size >>= 1
        yield lo, size
        lo += size


def _free_count(leaf: GroupNode, lo: int, hi: int) -> int:
    free = sum(b - a for a, b in leaf.pool.runs(lo, hi))
    dark = sum(max(0, min(b, hi) - max(a, lo)) for a, b in leaf.dark)
    return free + dark


def _highest_free(leaf: GroupNode, lo: int, hi: int) -> int:
    highest = None
    for _, b in leaf.pool.runs(lo, hi):
        highest = b - 1
    assert highest is not None, "vacant runs hold a free block"
    return highest
