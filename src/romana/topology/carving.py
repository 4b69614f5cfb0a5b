"""How a map carves a network: the arithmetic shared by validation and the IPAM tree.

A parent with n child groups splits its CIDR into the next power of two >= n equal parts,
in map order; the padding parts never receive hosts. A single child takes the whole parent.
"""

from __future__ import annotations


def child_prefix_bits(child_count: int) -> int:
    """Extra prefix bits needed to give ``child_count`` groups one equal part each."""
    if child_count <= 1:
        return 0
    return (child_count - 1).bit_length()


def padded_child_count(child_count: int) -> int:
    return 1 << child_prefix_bits(child_count)
