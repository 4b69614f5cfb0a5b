"""The engine's read side: views of the state for the API and CLI, and the lookups that
raise ``NotFound`` (shared with the write side in :mod:`romana.ipam.engine`)."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from romana.errors import NotFound
from romana.ipam.addr import cidr_str, ip_to_str
from romana.ipam.annotate import annotated_topology
from romana.ipam.blocks import Address, Block
from romana.ipam.groups import GroupNode, NetworkTree
from romana.ipam.state import HostRecord, IpamState, LeafUsage
from romana.ipam.views import AddressView, BlockView, HostView
from romana.topology.model import Topology


class EngineReads:
    """Everything :class:`~romana.ipam.engine.Engine` answers without changing state."""

    state: IpamState

    @property
    def topology(self) -> Topology | None:
        return self.state.topology

    def topology_document(self) -> dict[str, Any] | None:
        """The applied map with every group's computed ``cidr`` and placed ``hosts``."""
        return annotated_topology(self.state)

    # -- lookups --------------------------------------------------------------------
    def _trees(self) -> dict[str, NetworkTree]:
        if self.state.topology is None:
            raise NotFound("no topology applied yet", ["apply one with POST /topology"])
        return self.state.trees

    def _host(self, name: str) -> HostRecord:
        record = self.state.hosts.get(name)
        if record is None:
            raise NotFound(f'host "{name}" not found')
        return record

    def _tree(self, network: str) -> NetworkTree:
        tree = self._trees().get(network)
        if tree is None:
            raise NotFound(f'network "{network}" not found')
        return tree

    # -- views ----------------------------------------------------------------------
    def _view(self, address: Address) -> AddressView:
        block = address.block
        return AddressView(
            address.name,
            ip_to_str(address.ip),
            block.tree.name,
            block.host,
            block.tenant,
            block.segment,
            cidr_str(block.base, block.tree.block_mask),
        )

    def address(self, name: str) -> AddressView:
        address = self.state.addresses.get(name)
        if address is None:
            raise NotFound(f'address "{name}" not found')
        return self._view(address)

    def addresses(self, host: str | None = None, tenant: str | None = None) -> list[AddressView]:
        out = [
            self._view(a)
            for a in self.state.addresses.values()
            if (host is None or a.block.host == host)
            and (tenant is None or a.block.tenant == tenant)
        ]
        out.sort(key=lambda v: IPv4Address(v.ip))
        return out

    def host(self, name: str) -> HostView:
        record = self._host(name)
        groups = {
            net: {
                "group": leaf.path,
                "cidr": leaf.cidr,
                "areas": _area_cidrs(self.state.trees[net], leaf, name),
            }
            for net, leaf in record.placements.items()
        }
        return HostView(record.name, record.ip, dict(record.labels), groups, len(record.blocks))

    def hosts(self) -> list[HostView]:
        return [self.host(name) for name in self.state.hosts]

    def blocks(self, network: str | None = None) -> list[BlockView]:
        if network is not None:
            self._tree(network)
        return [
            _block_view(b)
            for base, b in sorted(self.state.blocks.items())
            if network is None or b.tree.name == network
        ]

    def networks(self) -> list[dict[str, Any]]:
        out = []
        for tree in self._trees().values():
            usage = [self.state.leaf_usage(tree, leaf) for leaf in tree.leaves.values()]
            out.append(
                {
                    "name": tree.name,
                    "cidr": str(tree.cidr),
                    "block_mask": tree.block_mask,
                    "tenants": sorted(tree.tenants) if tree.tenants else None,
                    "blocks": sum(u.blocks for u in usage),
                    "allocated": sum(u.allocated for u in usage),
                    "free": sum(u.free for u in usage),
                }
            )
        return out

    def group_usage(self) -> list[tuple[str, str, LeafUsage]]:
        """(network, leaf path, usage) for every leaf group: the metrics' raw figures."""
        return [
            (tree.name, leaf.path, self.state.leaf_usage(tree, leaf))
            for tree in self._trees().values()
            for leaf in tree.leaves.values()
        ]


def _area_cidrs(tree: NetworkTree, leaf: GroupNode, host: str) -> list[str]:
    return [
        cidr_str(*tree.run_prefix(leaf, a.start, a.size))
        for a in sorted(leaf.areas.by_host.get(host, ()), key=lambda a: a.start)
    ]


def _block_view(b: Block) -> BlockView:
    return BlockView(
        cidr_str(b.base, b.tree.block_mask),
        b.tree.name,
        b.leaf.path,
        b.host,
        b.tenant,
        b.segment,
        b.allocated,
    )
