"""Exact aggregation: the fewest CIDRs covering precisely a set of prefixes.

Exact means never covering an address outside the set (rule 3 of the route rules): two
blocks collapse only when together they fill their common parent, e.g. two /29 siblings
become one /28, while a /29 and a non-adjacent /29 stay two routes.
"""

from __future__ import annotations

from collections.abc import Iterable

Prefix = tuple[int, int]  # (base address as int, prefix length)


def collapse(prefixes: Iterable[Prefix]) -> list[Prefix]:
    """Minimal exact cover, sorted by address (overlaps and duplicates are fine)."""
    spans = sorted((base, base + (1 << (32 - length))) for base, length in prefixes)
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out: list[Prefix] = []
    for start, end in merged:
        out.extend(_cover(start, end))
    return out


def _cover(start: int, end: int) -> Iterable[Prefix]:
    """Decompose [start, end) into the largest aligned power-of-two pieces."""
    while start < end:
        size = start & -start if start else 1 << 32
        while size > end - start:
            size >>= 1
        yield start, 32 - (size.bit_length() - 1)
        start += size


def absorb(prefixes: set[Prefix], block: Prefix) -> int:
    """Add an aligned block to an exactly collapsed set, merging buddies upward.

    The set stays the minimal exact cover (the maximal aligned blocks it contains), like
    :func:`collapse` would give, in O(prefix length). Returns how many prefixes changed.
    """
    base, length = block
    changes = 0
    while length > 0:
        size = 1 << (32 - length)
        buddy = (base ^ size, length)
        if buddy not in prefixes:
            break
        prefixes.remove(buddy)
        changes += 1
        base &= ~size
        length -= 1
    prefixes.add((base, length))
    return changes + 1


def carve(prefixes: set[Prefix], block: Prefix) -> int:
    """Remove an aligned block from an exactly collapsed set, splitting what held it.

    Returns how many prefixes changed; raises KeyError if no prefix holds the block.
    """
    base, length = block
    for held in range(length, -1, -1):
        start = base & (0xFFFFFFFF << (32 - held)) & 0xFFFFFFFF
        if (start, held) in prefixes:
            break
    else:
        raise KeyError(f"no prefix holds block {block}")
    prefixes.remove((start, held))
    changes = 1
    while held < length:  # keep the halves that do not hold the block
        held += 1
        half = 1 << (32 - held)
        if base & half:
            prefixes.add((start, held))
            start |= half
        else:
            prefixes.add((start | half, held))
        changes += 1
    return changes
