"""The engine's read side: views of the state for the API and CLI, and the lookups that
raise ``NotFound`` (shared with the write side in :mod:`romana.ipam.engine`)."""

from __future__ import annotations

import heapq
from ipaddress import AddressValueError, IPv4Address
from typing import Any, cast

from romana.errors import InvalidRequest, NotFound
from romana.ipam.addr import cidr_str, ip_to_str
from romana.ipam.annotate import annotated_topology
from romana.ipam.blocks import Address, Block
from romana.ipam.groups import GroupNode, NetworkTree
from romana.ipam.state import HostRecord, IpamState, LeafUsage
from romana.ipam.views import AddressView, BlockView, HostView
from romana.responses import HostGroupJson, NamedPortJson, NetworkJson, PodJson
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
        meta = self.state.book.endpoints.get(address.name)
        labeled = meta is not None and bool(meta.labels or meta.ports)
        return AddressView(
            address.name,
            ip_to_str(address.ip),
            block.tree.name,
            block.host,
            block.tenant,
            block.segment,
            cidr_str(block.base, block.tree.block_mask),
            dict(meta.labels) if meta is not None and labeled else None,
            # The book keeps ports and pods as romanad validated them (api/models.py).
            cast(list[NamedPortJson], list(meta.ports)) if meta is not None and labeled else None,
            cast(PodJson, meta.pod.to_json()) if meta is not None and meta.pod else None,
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
        groups: dict[str, HostGroupJson] = {
            net: {
                "group": leaf.path,
                "cidr": leaf.cidr,
                "areas": _area_cidrs(self.state.trees[net], leaf, name),
            }
            for net, leaf in record.placements.items()
        }
        return HostView(record.name, record.ip, dict(record.labels), groups, len(record.blocks))

    # -- pages: a bounded amount of work per request, however large the state ---------
    def hosts_page(self, after: str | None, limit: int) -> tuple[list[HostView], str | None]:
        """Hosts by name after ``after``; the cursor of the next page, None at the end."""
        chosen = heapq.nsmallest(
            limit + 1, (n for n in self.state.hosts if after is None or n > after)
        )
        return [self.host(n) for n in chosen[:limit]], _next(chosen, limit, str)

    def addresses_page(
        self, host: str | None, tenant: str | None, after: str | None, limit: int
    ) -> tuple[list[AddressView], str | None]:
        """Addresses by IP after the IP ``after`` (optionally of one host or tenant).

        Walks blocks in address order (a few thousand, filtered by owner) rather than every
        address: a page costs about a millisecond, however many addresses exist."""
        floor = _cursor_ip(after)
        blocks = self.state.blocks
        bases = sorted(
            base
            for base, b in blocks.items()
            if base + (1 << (32 - b.tree.block_mask)) > floor
            and (host is None or b.host == host)
            and (tenant is None or b.tenant == tenant)
        )
        chosen: list[int] = []
        for base in bases:
            chosen += [ip for ip in blocks[base].used_ips() if ip > floor]
            if len(chosen) > limit:
                break
        views = [self._view(self.state.ips[ip]) for ip in chosen[:limit]]
        return views, _next(chosen, limit, ip_to_str)

    def blocks_page(
        self, network: str | None, after: str | None, limit: int
    ) -> tuple[list[BlockView], str | None]:
        """Blocks by address after the block ``after`` (a CIDR), optionally of one network."""
        if network is not None:
            self._tree(network)
        floor = _cursor_ip(after.split("/", 1)[0] if after else None)
        blocks = self.state.blocks
        chosen = heapq.nsmallest(
            limit + 1,
            (
                base
                for base, b in blocks.items()
                if base > floor and (network is None or b.tree.name == network)
            ),
        )
        views = [_block_view(blocks[base]) for base in chosen[:limit]]
        return views, (views[-1].cidr if len(chosen) > limit else None)

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

    def networks(self) -> list[NetworkJson]:
        out: list[NetworkJson] = []
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


def _next(chosen: list[Any], limit: int, show: Any) -> str | None:
    return str(show(chosen[limit - 1])) if len(chosen) > limit else None


def _cursor_ip(after: str | None) -> int:
    if after is None:
        return -1
    try:
        return int(IPv4Address(after))
    except AddressValueError:
        raise InvalidRequest(
            f"after={after!r} is not a page cursor", ["pass the previous page's next"]
        ) from None
