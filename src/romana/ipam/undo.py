"""Undoing facts that were applied but never became durable.

A replica plans a batch on its memory, then appends it to the shared log with a
compare-and-swap; when another replica appended first, the batch must leave memory as if
it had never been planned, so the foreign facts can be applied and the batch planned again.

Each fact's inverse is computed from the state *before* the fact is applied: the facts
that, applied after it, give the same state back (same snapshot, same next decisions).
Undoing a release re-inserts the address last in its dict, so insertion order differs
between replicas: nothing reads it (snapshots, policy state and listings sort).
Facts that change everything at once (a topology, a blackout, a host removed with its
placements) have no cheap inverse: ``inverse`` answers None and the caller rebuilds its
memory from the store instead. Those facts are rare; the ones every pod start makes
(blocks, areas, addresses, endpoint labels) always invert.
"""

from __future__ import annotations

from typing import Any

from romana.ipam.facts import (
    AddressAllocated,
    AddressReleased,
    AreaReleased,
    AreaReserved,
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
)
from romana.ipam.state import IpamState


def inverse(state: IpamState, fact: Fact) -> list[Fact] | None:
    """The facts undoing ``fact`` once it is applied to ``state``; None if there are none."""
    match fact:
        case AddressAllocated(name=name, network=network, ip=ip):
            return [AddressReleased(name, network, ip)]
        case AddressReleased(name=name, network=network, ip=ip):
            undo: list[Fact] = [AddressAllocated(name, network, ip)]
            endpoint = state.book.endpoints.get(name)
            if endpoint is not None:  # releasing took the pod's labels with it
                undo.append(endpoint)
            return undo
        case BlockAssigned(network=network, base=base, prefixlen=prefixlen):
            return [BlockFreed(network, base, prefixlen)]
        case BlockFreed(network=network, base=base, prefixlen=prefixlen):
            block = state.blocks.get(base)
            if (
                block is None
                or block.used
                or state.blackouts[network].covers(base, base + block.tree.block_size)
            ):
                return None  # a wholly blacked-out block is not returned to the pool
            return [
                BlockAssigned(network, base, prefixlen, block.host, block.tenant, block.segment)
            ]
        case AreaReserved(network=network, base=base, prefixlen=prefixlen, host=host):
            return [AreaReleased(network, base, prefixlen, host)]
        case AreaReleased(network=network, base=base, prefixlen=prefixlen, host=host):
            return [AreaReserved(network, base, prefixlen, host)]
        case EndpointLabeled(name=name):
            old = state.book.endpoints.get(name)
            return [old if old is not None else EndpointLabeled(name, {}, [])]
        case TenantLabeled(tenant=tenant):
            return [TenantLabeled(tenant, dict(state.book.tenants.get(tenant, {})))]
        case PolicyAdded(key=key):
            stored = state.book.policies.get(key)
            if stored is None:
                return [PolicyRemoved(key)]
            return [PolicyAdded(key, stored.policy, stored.source)]
        case PolicyRemoved(key=key):
            stored = state.book.policies.get(key)
            if stored is None or _last(state.book.policies) != key:
                return None
            return [PolicyAdded(key, stored.policy, stored.source)]
        case HostAdded(host=host):
            if host.name in state.hosts:
                return None
            return [HostRemoved(host.name)]
        case HostLabelsUpdated(host=host):
            record = state.hosts.get(host.name)
            if record is None:
                return None
            placements = {net: leaf.path for net, leaf in record.placements.items()}
            if placements != host.placements:
                return None  # new placements cannot be taken back one by one
            return [
                HostLabelsUpdated(
                    HostState(record.name, record.ip, dict(record.labels), placements)
                )
            ]
    return None  # topology, blackouts, host removal: rebuild from the store


def _last(mapping: dict[str, Any]) -> str | None:
    return next(reversed(mapping), None)


class Journal:
    """The inverses of the facts applied since it was opened, in application order."""

    def __init__(self, revision: int) -> None:
        self.revision = revision  # the state's revision when the journal was opened
        self.entries: list[list[Fact]] = []
        self.complete = True  # False once a fact without an inverse was applied

    def record(self, undo: list[Fact] | None) -> None:
        if undo is None:
            self.complete = False
        elif self.complete:
            self.entries.append(undo)

    def undo_steps(self) -> list[list[Fact]]:
        """Each fact's inverse, last fact first: applied in this order they take the state
        back to ``revision``."""
        assert self.complete, "an incomplete journal cannot undo"
        return self.entries[::-1]
