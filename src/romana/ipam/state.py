"""The IPAM state and how each fact changes it.

This is the only place that mutates state. Live operations and replay both go through
:meth:`IpamState.apply`, so a replayed log cannot drift from the live engine. Appliers
trust their facts: the engine checked every precondition when it planned them.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network
from operator import attrgetter
from typing import Any

from romana.ipam.addr import cidr_str, ip_from_str
from romana.ipam.blocks import Address, Blackouts, Block
from romana.ipam.facts import (
    AddressAllocated,
    AddressReleased,
    AreaReleased,
    AreaReserved,
    AreaState,
    BlackoutAdded,
    BlackoutRemoved,
    BlockAssigned,
    BlockFreed,
    EndpointLabeled,
    Fact,
    HostAdded,
    HostLabelsUpdated,
    HostRemoved,
    HostState,
    PolicyAdded,
    PolicyRemoved,
    TenantLabeled,
    TopologyApplied,
)
from romana.ipam.groups import GroupNode, NetworkTree
from romana.ipam.policy_book import PolicyBook
from romana.ipam.pool import FreeBlocks
from romana.topology.model import Topology

OwnerKey = tuple[str, str, str, str]  # host, tenant, segment, network
_by_base = attrgetter("base")


@dataclass(frozen=True, slots=True)
class LeafUsage:
    blocks: int
    allocated: int
    free: int  # addresses neither allocated nor blacked out


class HostRecord:
    __slots__ = ("blocks", "ip", "labels", "name", "placements")

    def __init__(self, name: str, ip: str, labels: dict[str, str]) -> None:
        self.name = name
        self.ip = ip
        self.labels = labels
        self.placements: dict[str, GroupNode] = {}
        self.blocks: dict[int, Block] = {}  # base -> block

    def state(self) -> HostState:
        return HostState(
            self.name,
            self.ip,
            dict(self.labels),
            {net: leaf.path for net, leaf in self.placements.items()},
        )


def build_trees(topology: Topology) -> dict[str, NetworkTree]:
    """One tree per network, in network definition order (the allocation order)."""
    maps = {name: m.map for m in topology.topologies for name in m.networks}
    return {n.name: NetworkTree(n, maps[n.name]) for n in topology.networks if n.name in maps}


class IpamState:
    def __init__(self) -> None:
        self.topology: Topology | None = None
        self.trees: dict[str, NetworkTree] = {}
        self.blackouts: dict[str, Blackouts] = {}
        self.hosts: dict[str, HostRecord] = {}
        self.host_ips: dict[str, str] = {}
        self.blocks: dict[int, Block] = {}  # base -> block (networks never overlap)
        self.nonfull: dict[OwnerKey, list[Block]] = {}
        self.addresses: dict[str, Address] = {}
        self.ips: dict[int, Address] = {}
        self.revision = 0
        self.tenant_networks: dict[str, tuple[NetworkTree, ...]] = {}
        self.book = PolicyBook()  # endpoint metadata, tenant labels, policies
        self._appliers: dict[type, Callable[[Any], None]] = {
            TopologyApplied: self._topology_applied,
            HostAdded: self._host_added,
            HostLabelsUpdated: self._host_labels_updated,
            HostRemoved: self._host_removed,
            BlockAssigned: self._block_assigned,
            BlockFreed: self._block_freed,
            AreaReserved: self._area_reserved,
            AreaReleased: self._area_released,
            AddressAllocated: self._address_allocated,
            AddressReleased: self._address_released,
            BlackoutAdded: self._blackout_added,
            BlackoutRemoved: self._blackout_removed,
            EndpointLabeled: self.book.endpoint_labeled,
            TenantLabeled: self.book.tenant_labeled,
            PolicyAdded: self.book.policy_added,
            PolicyRemoved: self.book.policy_removed,
        }

    def apply(self, facts: Iterable[Fact]) -> None:
        appliers = self._appliers
        for fact in facts:
            appliers[type(fact)](fact)
            self.revision += 1

    def networks_for(self, tenant: str) -> tuple[NetworkTree, ...]:
        """Networks a tenant allocates from: its restricted ones first, then open ones."""
        found = self.tenant_networks.get(tenant)
        if found is None:
            trees = self.trees.values()
            found = tuple(
                [t for t in trees if t.tenants is not None and tenant in t.tenants]
                + [t for t in trees if t.tenants is None]
            )
            self.tenant_networks[tenant] = found
        return found

    # -- topology -------------------------------------------------------------------
    def _topology_applied(self, fact: TopologyApplied) -> None:
        self.topology = Topology.model_validate(fact.topology)
        self.trees = build_trees(self.topology)
        self.tenant_networks.clear()
        self.blackouts = {
            name: Blackouts([IPv4Network(c) for c in fact.blackouts.get(name, [])])
            for name in self.trees
        }
        old = self.hosts
        self.hosts, self.host_ips = {}, {}
        for state in fact.hosts:
            record = old.get(state.name) or HostRecord(state.name, state.ip, {})
            record.ip, record.labels, record.placements = state.ip, dict(state.labels), {}
            self._add_record(record, state.placements)
        # Blocks follow their addresses: a network or group renamed keeps them.
        for block in self.blocks.values():
            tree = self.tree_containing(block.base)
            assert tree is not None, "planner guarantees every block has a network"
            leaf = tree.leaf_containing(block.base)
            assert leaf is not None, "planner guarantees every block has a leaf"
            block.tree, block.leaf = tree, leaf
            block.index = (block.base - leaf.base) // tree.block_size
            block.black = self.blackouts[tree.name].mask(block.base, tree.block_size)
            leaf.blocks[block.index] = block
        self.nonfull = {}
        for _, block in sorted(self.blocks.items()):
            if not block.is_full:
                self._file(block)
        for tree in self.trees.values():
            for leaf in tree.leaves.values():
                self.rebuild_pool(tree, leaf)
        for area in fact.areas:
            self._add_area(area.network, area.host, *_parse_cidr(area.cidr))

    def tree_containing(self, ip: int) -> NetworkTree | None:
        return next((t for t in self.trees.values() if t.contains(ip)), None)

    def leaf_usage(self, tree: NetworkTree, leaf: GroupNode) -> LeafUsage:
        black = sum(
            b - a for a, b in self.blackouts[tree.name].ranges(leaf.base, leaf.base + leaf.size)
        )
        allocated = sum(b.allocated for b in leaf.blocks.values())
        return LeafUsage(len(leaf.blocks), allocated, leaf.size - black - allocated)

    def rebuild_pool(self, tree: NetworkTree, leaf: GroupNode) -> None:
        leaf.dark = self.blackouts[tree.name].covered_indices(
            leaf.base, leaf.block_count, tree.block_size
        )
        taken = [(i, i + 1) for i in leaf.blocks] + leaf.dark
        leaf.pool = FreeBlocks.excluding(leaf.block_count, taken)

    # -- hosts ----------------------------------------------------------------------
    def _add_record(self, record: HostRecord, placements: dict[str, str]) -> None:
        self.hosts[record.name] = record
        self.host_ips[record.ip] = record.name
        self._place(record, placements)

    def _place(self, record: HostRecord, placements: dict[str, str]) -> None:
        for net, path in placements.items():
            if net in record.placements:
                continue
            tree = self.trees[net]
            leaf = tree.nodes[path]
            record.placements[net] = leaf
            tree.place(record.name, leaf)

    def _host_added(self, fact: HostAdded) -> None:
        s = fact.host
        self._add_record(HostRecord(s.name, s.ip, dict(s.labels)), s.placements)

    def _host_labels_updated(self, fact: HostLabelsUpdated) -> None:
        record = self.hosts[fact.host.name]
        record.labels = dict(fact.host.labels)
        self._place(record, fact.host.placements)

    def _host_removed(self, fact: HostRemoved) -> None:
        record = self.hosts.pop(fact.name)
        del self.host_ips[record.ip]
        for net, leaf in record.placements.items():
            assert fact.name not in leaf.areas.by_host, "areas are released before the host"
            self.trees[net].unplace(record.name, leaf)

    # -- blocks and addresses -------------------------------------------------------
    def _block_assigned(self, fact: BlockAssigned) -> None:
        tree = self.trees[fact.network]
        record = self.hosts[fact.host]
        leaf = record.placements[fact.network]
        index = (fact.base - leaf.base) // tree.block_size
        leaf.pool.take(index)
        black = self.blackouts[fact.network].mask(fact.base, tree.block_size)
        block = Block(tree, leaf, index, fact.base, fact.host, fact.tenant, fact.segment, black)
        leaf.blocks[index] = block
        self.blocks[fact.base] = block
        record.blocks[fact.base] = block
        self._file(block)
        for area in leaf.areas.by_host.get(fact.host, ()):
            if area.start <= index < area.start + area.size:
                area.count += 1
                break

    def _block_freed(self, fact: BlockFreed) -> None:
        block = self.blocks.pop(fact.base)
        leaf, tree = block.leaf, block.tree
        del leaf.blocks[block.index]
        del self.hosts[block.host].blocks[block.base]
        if not self.blackouts[tree.name].covers(block.base, block.base + tree.block_size):
            leaf.pool.give(block.index)
        if not block.is_full:
            self._unfile(block)
        for area in leaf.areas.by_host.get(block.host, ()):
            if area.start <= block.index < area.start + area.size:
                area.count -= 1
                break

    # -- areas ----------------------------------------------------------------------
    def _area_reserved(self, fact: AreaReserved) -> None:
        self._add_area(fact.network, fact.host, fact.base, fact.prefixlen)

    def _add_area(self, network: str, host: str, base: int, prefixlen: int) -> None:
        tree = self.trees[network]
        leaf = self.hosts[host].placements[network]
        start, size = tree.prefix_run(leaf, base, prefixlen)
        area = leaf.areas.add(start, size, host)
        area.count = sum(
            1
            for b in self.hosts[host].blocks.values()
            if b.leaf is leaf and start <= b.index < start + size
        )

    def _area_released(self, fact: AreaReleased) -> None:
        tree = self.trees[fact.network]
        leaf = self.hosts[fact.host].placements[fact.network]
        leaf.areas.remove(*tree.prefix_run(leaf, fact.base, fact.prefixlen))

    def area_states(self) -> list[AreaState]:
        """Every area as a CIDR, by network, leaf and position (snapshots, topology plans)."""
        out = []
        for tree in self.trees.values():
            for leaf in tree.leaves.values():
                for area in leaf.areas:
                    base, prefixlen = tree.run_prefix(leaf, area.start, area.size)
                    out.append(AreaState(tree.name, area.host, cidr_str(base, prefixlen)))
        return out

    def _address_allocated(self, fact: AddressAllocated) -> None:
        ip = fact.ip
        tree = self.trees[fact.network]
        block = self.blocks[ip & tree.block_base_mask]
        block.used |= 1 << (ip - block.base)
        block.allocated += 1
        if (block.used | block.black) == block.full:
            self._unfile(block)
        address = Address(fact.name, ip, block)
        self.addresses[fact.name] = address
        self.ips[ip] = address

    def _address_released(self, fact: AddressReleased) -> None:
        address = self.addresses.pop(fact.name)
        del self.ips[address.ip]
        self.book.address_released(fact.name)
        block = address.block
        was_full = (block.used | block.black) == block.full
        block.used &= ~(1 << (address.ip - block.base))
        block.allocated -= 1
        if was_full:
            self._file(block)

    # -- blackouts ------------------------------------------------------------------
    def _blackout_added(self, fact: BlackoutAdded) -> None:
        self.blackouts[fact.network].add(IPv4Network(fact.cidr))
        self._blackouts_changed(fact.network, IPv4Network(fact.cidr))

    def _blackout_removed(self, fact: BlackoutRemoved) -> None:
        self.blackouts[fact.network].remove(IPv4Network(fact.cidr))
        self._blackouts_changed(fact.network, IPv4Network(fact.cidr))

    def _blackouts_changed(self, network: str, cidr: IPv4Network) -> None:
        tree = self.trees[network]
        lo = int(cidr.network_address)
        hi = lo + cidr.num_addresses
        blackouts = self.blackouts[network]
        for leaf in tree.leaves.values():
            if leaf.base >= hi or leaf.base + leaf.size <= lo:
                continue
            for block in leaf.blocks.values():
                if block.base < hi and block.base + tree.block_size > lo:
                    was_full = block.is_full
                    block.black = blackouts.mask(block.base, tree.block_size)
                    self._refile(block, was_full)
            self.rebuild_pool(tree, leaf)

    def _refile(self, block: Block, was_full: bool) -> None:
        if was_full and not block.is_full:
            self._file(block)
        elif not was_full and block.is_full:
            self._unfile(block)

    # -- the owner index: each owner's non-full blocks, lowest first ----------------
    def _file(self, block: Block) -> None:
        key = (block.host, block.tenant, block.segment, block.tree.name)
        insort(self.nonfull.setdefault(key, []), block, key=_by_base)

    def _unfile(self, block: Block) -> None:
        key = (block.host, block.tenant, block.segment, block.tree.name)
        owned = self.nonfull[key]
        owned.remove(block)
        if not owned:
            del self.nonfull[key]


def _parse_cidr(cidr: str) -> tuple[int, int]:
    ip, _, prefixlen = cidr.partition("/")
    return ip_from_str(ip), int(prefixlen)
