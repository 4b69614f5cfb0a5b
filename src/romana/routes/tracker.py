"""Keeps every device's route set current as facts arrive, and counts route updates.

A device's routes are a disjoint union of segments, one per next hop (see compute.py).
A block fact changes exactly one thing: its host's collapsed blocks in that network, a set
every device carrying that host's routes shares (the host, its L2 neighbours, its leaf's
router). The tracker updates the set in place by buddy merging or splitting (O(prefix
length)), then forgets the memoized route sets of those devices. Route sets are assembled
(sorted) only when asked for, so an allocation that opens a block costs microseconds
however large the rack is, and so does start-up.

An address allocated inside an existing block changes nothing anywhere (that is the point
of blocks). Host and topology facts are rare and rebuild everything. Counting is exact:
segments are compared, not guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from romana.ipam.facts import (
    BlockAssigned,
    BlockFreed,
    Fact,
    HostAdded,
    HostLabelsUpdated,
    HostRemoved,
    TopologyApplied,
)
from romana.ipam.state import IpamState
from romana.routes.aggregate import Prefix, absorb, carve, collapse
from romana.routes.compute import (
    Segments,
    assemble,
    canonical,
    default_of,
    routing_mode,
    segments_of,
    vantages,
)
from romana.routes.model import RouteSet, group_vantage, host_vantage

_REBUILD = (TopologyApplied, HostAdded, HostRemoved, HostLabelsUpdated)


@dataclass(slots=True)
class DeviceStats:
    updates: int = 0  # times the device's route set changed since start
    route_changes: int = 0  # routes added plus routes withdrawn


class RouteTracker:
    def __init__(self, state: Callable[[], IpamState]) -> None:
        self._state = state
        self._blocks: dict[tuple[str, str], set[Prefix]] = {}  # (net, host), shared, live
        self._owners: dict[tuple[str, int], str] = {}  # (net, block base) -> host
        self._devices: dict[str, Segments] = {}
        self._memo: dict[str, RouteSet] = {}
        self.stats: dict[str, DeviceStats] = {}
        self._rebuild(count=False)

    # -- reading ----------------------------------------------------------------------
    def get(self, vantage: str) -> RouteSet:
        state = self._state()
        vantage = canonical(state, vantage)  # NotFound for unknown hosts and groups
        memo = self._memo.get(vantage)
        if memo is None:
            memo = self._memo[vantage] = assemble(state, vantage, self._devices[vantage])
        return memo

    def all_sets(self) -> dict[str, RouteSet]:
        return {vantage: self.get(vantage) for vantage in self._devices}

    def summary(self) -> list[dict[str, object]]:
        """Counts straight from the segments: building every route set is not needed."""
        state = self._state()
        out: list[dict[str, object]] = []
        for vantage, segments in self._devices.items():
            stats = self.stats.get(vantage, DeviceStats())
            routes = sum(len(s.prefixes) for s in segments.values())
            hops = {s.via for s in segments.values() if s.prefixes}
            out.append({"vantage": vantage, "routes": routes, "next_hops": len(hops),
                        "default": default_of(state, vantage), "updates": stats.updates,
                        "route_changes": stats.route_changes})
        return out

    # -- following facts --------------------------------------------------------------
    def observe(self, facts: Iterable[Fact]) -> None:
        """Called after ``facts`` were applied to the state."""
        batch = list(facts)
        if any(isinstance(fact, _REBUILD) for fact in batch):
            # Checked first: the state already reflects the whole batch (a removed host's
            # blocks are freed in the same batch that removes the host).
            self._rebuild(count=True)
            return
        changed: dict[str, int] = {}  # device -> routes added + withdrawn in this batch
        for fact in batch:
            if isinstance(fact, BlockAssigned):
                self._owners[(fact.network, fact.base)] = fact.host
                block = (fact.base, self._state().trees[fact.network].block_mask)
                delta = absorb(self._host_blocks(fact.network, fact.host), block)
                self._touch(fact.network, fact.host, delta, changed)
            elif isinstance(fact, BlockFreed):
                host = self._owners.pop((fact.network, fact.base))
                delta = carve(self._host_blocks(fact.network, host), (fact.base, fact.prefixlen))
                self._touch(fact.network, host, delta, changed)
        for vantage, route_changes in changed.items():
            stats = self.stats.setdefault(vantage, DeviceStats())
            stats.updates += 1
            stats.route_changes += route_changes

    def _host_blocks(self, network: str, host: str) -> set[Prefix]:
        return self._blocks.setdefault((network, host), set())

    def _touch(self, network: str, host: str, delta: int, changed: dict[str, int]) -> None:
        """Forget the memoized routes of every device carrying ``host``'s blocks."""
        leaf = self._state().hosts[host].placements[network]
        touched = [host_vantage(host)]
        if routing_mode(leaf).host_routes:
            touched += [host_vantage(n) for n in leaf.hosts if n != host]
        if len(leaf.hosts) > 1:  # alone, the router routes the whole leaf to it (rule 1)
            touched.append(group_vantage(leaf.path))
        for vantage in touched:
            self._memo.pop(vantage, None)
            changed[vantage] = changed.get(vantage, 0) + delta

    def _rebuild(self, count: bool) -> None:
        state = self._state()
        self._owners = {(b.tree.name, base): b.host for base, b in state.blocks.items()}
        by_host: dict[tuple[str, str], list[Prefix]] = {}
        for block in state.blocks.values():
            by_host.setdefault((block.tree.name, block.host), []).append(
                (block.base, block.tree.block_mask))
        self._blocks = {key: set(collapse(p)) for key, p in by_host.items()}
        old = self._devices
        self._devices = {v: segments_of(state, v, self._host_blocks) for v in vantages(state)}
        self._memo.clear()
        for gone in old.keys() - self._devices.keys():
            self.stats.pop(gone, None)
        if not count:
            return
        for vantage, segments in self._devices.items():
            before = old.get(vantage)
            if before is None:
                continue  # a new device's first set is no update
            delta = _difference(before, segments)
            if delta:
                stats = self.stats.setdefault(vantage, DeviceStats())
                stats.updates += 1
                stats.route_changes += delta


def _difference(before: Segments, after: Segments) -> int:
    """Routes added plus withdrawn between two versions of a device's segments."""
    delta = 0
    for key in before.keys() | after.keys():
        old, new = before.get(key), after.get(key)
        if old is None or new is None:
            delta += len((old or new).prefixes)  # type: ignore[union-attr]
        elif (old.via, old.gateway) != (new.via, new.gateway):
            delta += len(old.prefixes) + len(new.prefixes)
        else:
            delta += len(set(old.prefixes) ^ set(new.prefixes))
    return delta
