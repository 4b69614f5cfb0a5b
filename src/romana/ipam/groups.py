"""Prefix-group trees: a network's CIDR carved along its topology map, and host placement.

One tree per network. The root is the network itself (path ``/``); its children are the
map's groups, each owning an equal power-of-two slice of the parent's CIDR in map order
(see :mod:`romana.topology.carving`). Padding slices are not nodes: nothing can be placed
there. Leaves receive hosts and hand out blocks of ``block_mask`` from their own CIDR.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import TYPE_CHECKING

from romana.ipam.addr import cidr_str
from romana.ipam.areas import LeafAreas
from romana.ipam.pool import FreeBlocks
from romana.topology.carving import child_prefix_bits
from romana.topology.model import HostGroup, Network

if TYPE_CHECKING:
    from romana.ipam.blocks import Block


@dataclass(eq=False)
class GroupNode:
    """A prefix group. ``host_count`` counts hosts placed anywhere in its subtree."""

    path: str
    index: int
    base: int
    prefixlen: int
    assignment: dict[str, str]
    routing: str | None
    parent: GroupNode | None
    children: list[GroupNode] = field(default_factory=list)
    pinned_hosts: tuple[str, ...] = ()
    host_count: int = 0
    hosts: dict[str, None] = field(default_factory=dict)  # leaf only; insertion-ordered set
    # Leaf only: block index -> Block, the free pool, the index ranges of blocks wholly
    # blacked out (neither free nor anyone's), and the hosts' areas.
    blocks: dict[int, Block] = field(default_factory=dict)
    pool: FreeBlocks = field(default_factory=FreeBlocks)
    dark: list[tuple[int, int]] = field(default_factory=list)
    areas: LeafAreas = field(default_factory=lambda: LeafAreas(0))
    block_count: int = 0

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @property
    def cidr(self) -> str:
        return cidr_str(self.base, self.prefixlen)

    @property
    def size(self) -> int:
        return 1 << (32 - self.prefixlen)

    def contains(self, ip: int) -> bool:
        return self.base <= ip < self.base + self.size

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.assignment.items())

    def lineage(self) -> Iterator[GroupNode]:
        node: GroupNode | None = self
        while node is not None:
            yield node
            node = node.parent


def _join(parent_path: str, part: str) -> str:
    return part if parent_path == "/" else f"{parent_path}/{part}"


class NetworkTree:
    """A network's carved prefix groups, with the placement of hosts in them."""

    def __init__(self, network: Network, groups: Sequence[HostGroup]) -> None:
        cidr = IPv4Network(network.cidr)
        self.name = network.name
        self.cidr = cidr
        self.base = int(cidr.network_address)
        self.prefixlen = cidr.prefixlen
        self.block_mask = network.effective_block_mask
        self.block_size = 1 << (32 - self.block_mask)
        self.block_base_mask = 0xFFFFFFFF ^ (self.block_size - 1)
        self.tenants: frozenset[str] | None = (
            frozenset(network.tenants) if network.tenants else None
        )
        self.root = GroupNode("/", 0, self.base, self.prefixlen, {}, None, None)
        self.leaves: dict[str, GroupNode] = {}
        self.nodes: dict[str, GroupNode] = {"/": self.root}
        self.pinned: dict[str, GroupNode] = {}  # host name -> leaf of its "hosts" list
        self._carve(self.root, groups)
        if not self.root.children:
            self._make_leaf(self.root)

    def _carve(self, parent: GroupNode, groups: Sequence[HostGroup]) -> None:
        bits = child_prefix_bits(len(groups))
        prefixlen = parent.prefixlen + bits
        for i, group in enumerate(groups):
            base = parent.base + (i << (32 - prefixlen))
            node = GroupNode(
                path=_join(parent.path, group.name or str(i)),
                index=i,
                base=base,
                prefixlen=prefixlen,
                assignment=dict(group.assignment or {}),
                routing=group.routing,
                parent=parent,
            )
            parent.children.append(node)
            self.nodes[node.path] = node
            if group.hosts is not None or not group.groups:
                node.pinned_hosts = tuple(h.name for h in group.hosts or ())
                for name in node.pinned_hosts:
                    self.pinned[name] = node
                self._make_leaf(node)
            else:
                self._carve(node, group.groups)

    def _make_leaf(self, node: GroupNode) -> None:
        node.block_count = 1 << (self.block_mask - node.prefixlen)
        node.pool = FreeBlocks([(0, node.block_count)])
        node.areas = LeafAreas(node.block_count)
        self.leaves[node.path] = node

    # -- placement ------------------------------------------------------------------
    def eligible(self, node: GroupNode, labels: Mapping[str, str]) -> bool:
        """Whether a host with ``labels`` may be placed in ``node``'s subtree."""
        if not node.matches(labels):
            return False
        return node.is_leaf or any(self.eligible(c, labels) for c in node.children)

    def eligible_leaf(self, leaf: GroupNode, host: str, labels: Mapping[str, str]) -> bool:
        """Whether ``host`` may stay in ``leaf``: pinned there, or every assignment matches."""
        if self.pinned.get(host) is leaf:
            return True
        return all(node.matches(labels) for node in leaf.lineage())

    def choose_leaf(self, host: str, labels: Mapping[str, str]) -> GroupNode | None:
        """Balanced placement: descend into the eligible child holding fewest hosts."""
        pinned = self.pinned.get(host)
        if pinned is not None:
            return pinned
        node = self.root
        if not self.eligible(node, labels):
            return None
        while not node.is_leaf:
            candidates = [c for c in node.children if self.eligible(c, labels)]
            node = min(candidates, key=lambda c: (c.host_count, c.index))
        return node

    def place(self, host: str, leaf: GroupNode) -> None:
        leaf.hosts[host] = None
        for node in leaf.lineage():
            node.host_count += 1

    def unplace(self, host: str, leaf: GroupNode) -> None:
        del leaf.hosts[host]
        for node in leaf.lineage():
            node.host_count -= 1

    def contains(self, ip: int) -> bool:
        return self.base <= ip < self.base + (1 << (32 - self.prefixlen))

    def run_prefix(self, leaf: GroupNode, start: int, size: int) -> tuple[int, int]:
        """The CIDR (base, prefix length) of ``size`` blocks from block ``start`` of ``leaf``."""
        return leaf.base + start * self.block_size, self.block_mask - (size.bit_length() - 1)

    def prefix_run(self, leaf: GroupNode, base: int, prefixlen: int) -> tuple[int, int]:
        """The inverse of :meth:`run_prefix`: (first block index, number of blocks)."""
        return (base - leaf.base) // self.block_size, 1 << (self.block_mask - prefixlen)

    def leaf_containing(self, ip: int) -> GroupNode | None:
        """The leaf whose CIDR holds ``ip`` (None inside padding or outside the network)."""
        node = self.root
        if not node.contains(ip):
            return None
        while not node.is_leaf:
            for child in node.children:
                if child.contains(ip):
                    node = child
                    break
            else:
                return None
        return node

    def group(self, path: str) -> GroupNode | None:
        return self.nodes.get(path.strip("/") or "/")

    def allows(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants
