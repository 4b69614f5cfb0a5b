"""Keeps every device's route set current as facts arrive, and counts route updates.

A device's routes are a union of segments, one per next hop (see compute.py). Inside a
leaf group, what changes is a host's *prefixes* (its areas and its stray blocks, see
prefixes.py), a collection every device carrying that host's routes shares (the host, its
L2 neighbours, its leaf's router). The tracker updates it in place and forgets the
memoized route sets of those devices; route sets are assembled (sorted) only when asked
for, so a fact costs microseconds however large the rack is, and so does start-up.

- An address allocated inside an existing block changes nothing anywhere (that is the point
  of blocks), and neither does a new block inside its host's own area (that is the point of
  areas).
- A stray block (lent, or from before areas) is merged into or split out of its host's
  collapsed strays by buddy merging, in O(prefix length).
- An area reserved or released adds or withdraws one prefix, and re-classifies the blocks
  under it (a block may stop or start being stray).
- In L3-to-host groups, a host's holes are recomputed when a prefix of its group changes.

Host and topology facts (:data:`~romana.ipam.facts.RESTRUCTURING`) are rare and rebuild
everything from the state after them. Counting is exact: segments are compared, not
guessed.

A notice is read against the state right after its facts, so its facts must not undo one
another: the engine tells an operation's facts together when it commits them (one plan),
and another replica's page fact by fact, except its run up to the last host or topology
fact, which a rebuild covers whole (:meth:`romana.ipam.Engine.apply_durable`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from romana.ipam.facts import (
    RESTRUCTURING,
    AreaReleased,
    AreaReserved,
    BlockAssigned,
    BlockFreed,
    Fact,
)
from romana.ipam.groups import GroupNode
from romana.ipam.state import IpamState
from romana.responses import DeviceRoutes
from romana.routes.aggregate import Prefix, absorb, carve
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
from romana.routes.prefixes import HostPrefixes, holes, is_stray, leaf_prefixes

_MOVING = frozenset({*RESTRUCTURING, BlockAssigned, BlockFreed, AreaReserved, AreaReleased})
HostKey = tuple[str, str]  # (network, host)
LeafKey = tuple[str, str]  # (network, leaf path)


@dataclass(frozen=True, slots=True)
class _Carriers:
    """Who carries the prefixes of a leaf's hosts, besides each host itself."""

    host_routes: bool  # then every host of the leaf carries every other's prefixes
    hosts: tuple[str, ...]  # the leaf's host vantages
    router: str | None  # the leaf's router, unless a lone host gets the whole leaf


@dataclass(slots=True)
class DeviceStats:
    updates: int = 0  # times the device's route set changed since start
    route_changes: int = 0  # routes added plus routes withdrawn


class RouteTracker:
    def __init__(self, state: Callable[[], IpamState]) -> None:
        self._state = state
        self._prefixes: dict[HostKey, HostPrefixes] = {}  # shared, live
        self._holes: dict[HostKey, set[Prefix]] = {}  # shared, live (L3-to-host leaves)
        self._strays: dict[tuple[str, int], str] = {}  # (net, block base) -> host
        self._devices: dict[str, Segments] = {}  # made on first use after a rebuild
        self._stale: dict[str, Segments] = {}  # set aside by a rebuild, compared when remade
        self._memo: dict[str, RouteSet] = {}
        self.stats: dict[str, DeviceStats] = {}
        self._leaf_carriers: dict[LeafKey, _Carriers] = {}  # made on first use
        self._rebuild(count=False)

    # -- reading ----------------------------------------------------------------------
    def get(self, vantage: str) -> RouteSet:
        state = self._state()
        vantage = canonical(state, vantage)  # NotFound for unknown hosts and groups
        memo = self._memo.get(vantage)
        if memo is None:
            memo = self._memo[vantage] = assemble(state, vantage, self._segments(vantage))
        return memo

    def all_sets(self) -> dict[str, RouteSet]:
        return {vantage: self.get(vantage) for vantage in vantages(self._state())}

    def _segments(self, vantage: str) -> Segments:
        """A device's segments, made on first use after a rebuild: in a flat L2 group of n
        hosts every host carries n-1 neighbours, so remaking them all at each topology
        change would cost n² (a 9,000-host map: minutes). A device whose previous segments
        were set aside by a rebuild is compared with them now, and the update counted."""
        segments = self._devices.get(vantage)
        if segments is None:
            segments = segments_of(self._state(), vantage, self._host_prefixes, self._host_holes)
            self._devices[vantage] = segments
            before = self._stale.pop(vantage, None)
            if before is not None:
                self._count(vantage, _difference(before, segments))
        return segments

    def _count(self, vantage: str, route_changes: int) -> None:
        if route_changes:
            stats = self.stats.get(vantage)
            if stats is None:  # not setdefault: that would build a DeviceStats every call
                stats = self.stats[vantage] = DeviceStats()
            stats.updates += 1
            stats.route_changes += route_changes

    def summary(self) -> list[DeviceRoutes]:
        """Counts straight from the segments: building every route set is not needed."""
        state = self._state()
        out: list[DeviceRoutes] = []
        for vantage in vantages(state):
            segments = self._segments(vantage)
            stats = self.stats.get(vantage, DeviceStats())
            routes = sum(len(s.prefixes) for s in segments.values())
            hops = {s.via for s in segments.values() if s.prefixes}
            out.append(
                {
                    "vantage": vantage,
                    "routes": routes,
                    "next_hops": len(hops),
                    "default": default_of(state, vantage),
                    "updates": stats.updates,
                    "route_changes": stats.route_changes,
                }
            )
        return out

    # -- following facts --------------------------------------------------------------
    def reset(self) -> None:
        """The state was replaced wholesale (rebuilt from the store): start over."""
        self._rebuild(count=True)

    def observe(self, facts: Iterable[Fact]) -> None:
        """Called after ``facts`` were applied to the state (see the module's docstring)."""
        batch = list(facts)
        kinds = {type(fact) for fact in batch}
        if kinds.isdisjoint(_MOVING):
            return  # addresses inside existing blocks: the point of blocks
        if not kinds.isdisjoint(RESTRUCTURING):
            # Checked first: the state already reflects the whole notice (a removed host's
            # blocks are freed in the same notice that removes the host).
            self._rebuild(count=True)
            return
        state = self._state()
        changed: dict[str, int] = {}  # device -> routes added + withdrawn in this batch
        regions: list[tuple[str, GroupNode, int, int]] = []  # areas that changed
        dirty: dict[LeafKey, GroupNode] = {}  # leaves whose prefixes changed
        for fact in batch:
            if isinstance(fact, BlockAssigned):
                leaf = state.hosts[fact.host].placements[fact.network]
                block = leaf.blocks[(fact.base - leaf.base) // state.trees[fact.network].block_size]
                if is_stray(leaf, block):
                    self._add_stray(fact.network, leaf, fact.host, fact.base, changed, dirty)
            elif isinstance(fact, BlockFreed):
                host = self._strays.get((fact.network, fact.base))
                if host is not None:
                    leaf = state.hosts[host].placements[fact.network]
                    self._drop_stray(fact.network, leaf, host, fact.base, changed, dirty)
            elif isinstance(fact, AreaReserved | AreaReleased):
                tree = state.trees[fact.network]
                leaf = state.hosts[fact.host].placements[fact.network]
                areas = self._host_prefixes(fact.network, fact.host).areas
                prefix = (fact.base, fact.prefixlen)
                if isinstance(fact, AreaReserved):
                    areas.add(prefix)
                else:
                    areas.discard(prefix)
                self._touch(fact.network, leaf, fact.host, 1, changed)
                dirty[(fact.network, leaf.path)] = leaf
                regions.append(
                    (fact.network, leaf, *tree.prefix_run(leaf, fact.base, fact.prefixlen))
                )
        for network, leaf, start, size in regions:
            self._reclassify(network, leaf, start, size, changed, dirty)
        for (network, _), leaf in dirty.items():
            if not self._carriers(network, leaf).host_routes:
                self._refresh_holes(network, leaf, changed)
        for vantage, route_changes in changed.items():
            self._count(vantage, route_changes)

    def _host_prefixes(self, network: str, host: str) -> HostPrefixes:
        prefixes = self._prefixes.get((network, host))
        if prefixes is None:  # not setdefault: that would build a HostPrefixes every call
            prefixes = self._prefixes[(network, host)] = HostPrefixes()
        return prefixes

    def _host_holes(self, network: str, host: str) -> set[Prefix]:
        found = self._holes.get((network, host))
        if found is None:
            found = self._holes[(network, host)] = set()
        return found

    def _add_stray(
        self,
        network: str,
        leaf: GroupNode,
        host: str,
        base: int,
        changed: dict[str, int],
        dirty: dict[LeafKey, GroupNode],
    ) -> None:
        self._strays[(network, base)] = host
        block_mask = self._state().trees[network].block_mask
        delta = absorb(self._host_prefixes(network, host).strays, (base, block_mask))
        self._touch(network, leaf, host, delta, changed)
        dirty[(network, leaf.path)] = leaf

    def _drop_stray(
        self,
        network: str,
        leaf: GroupNode,
        host: str,
        base: int,
        changed: dict[str, int],
        dirty: dict[LeafKey, GroupNode],
    ) -> None:
        del self._strays[(network, base)]
        block_mask = self._state().trees[network].block_mask
        delta = carve(self._host_prefixes(network, host).strays, (base, block_mask))
        self._touch(network, leaf, host, delta, changed)
        dirty[(network, leaf.path)] = leaf

    def _reclassify(
        self,
        network: str,
        leaf: GroupNode,
        start: int,
        size: int,
        changed: dict[str, int],
        dirty: dict[LeafKey, GroupNode],
    ) -> None:
        """Blocks under an area that changed may stop or start being stray."""
        cursor, end = start, start + size
        for lo, hi in [*leaf.pool.runs(start, end), (end, end)]:
            for index in range(cursor, lo):  # not free: a block, or blacked out
                block = leaf.blocks.get(index)
                if block is None:
                    continue
                was = (network, block.base) in self._strays
                now = is_stray(leaf, block)
                if now and not was:
                    self._add_stray(network, leaf, block.host, block.base, changed, dirty)
                elif was and not now:
                    self._drop_stray(network, leaf, block.host, block.base, changed, dirty)
            cursor = hi

    def _refresh_holes(self, network: str, leaf: GroupNode, changed: dict[str, int]) -> None:
        fresh = holes(((h, self._host_prefixes(network, h)) for h in leaf.hosts), leaf.prefixlen)
        for host in leaf.hosts:
            current = self._host_holes(network, host)
            new = fresh.get(host, set())
            delta = len(current ^ new)
            if delta:
                current.clear()
                current.update(new)
                vantage = host_vantage(host)
                self._memo.pop(vantage, None)
                changed[vantage] = changed.get(vantage, 0) + delta

    def _touch(
        self, network: str, leaf: GroupNode, host: str, delta: int, changed: dict[str, int]
    ) -> None:
        """Forget the memoized routes of every device carrying ``host``'s prefixes."""
        carriers = self._carriers(network, leaf)
        memo = self._memo
        for vantage in carriers.hosts if carriers.host_routes else (host_vantage(host),):
            memo.pop(vantage, None)
            changed[vantage] = changed.get(vantage, 0) + delta
        if carriers.router is not None:
            memo.pop(carriers.router, None)
            changed[carriers.router] = changed.get(carriers.router, 0) + delta

    def _carriers(self, network: str, leaf: GroupNode) -> _Carriers:
        """Who carries a leaf's host prefixes; kept until the next rebuild (a leaf's hosts
        and routing change only by host and topology facts, which rebuild)."""
        key = (network, leaf.path)
        found = self._leaf_carriers.get(key)
        if found is None:
            found = self._leaf_carriers[key] = _Carriers(
                routing_mode(leaf).host_routes,
                tuple(host_vantage(n) for n in leaf.hosts),
                # Alone, the router routes the whole leaf to the host (rule 1).
                group_vantage(leaf.path) if len(leaf.hosts) > 1 else None,
            )
        return found

    def _rebuild(self, count: bool) -> None:
        state = self._state()
        self._leaf_carriers = {}
        self._prefixes, self._holes, self._strays = {}, {}, {}
        for tree in state.trees.values():
            for leaf in tree.leaves.values():
                for host, prefixes in leaf_prefixes(tree, leaf).items():
                    self._prefixes[(tree.name, host)] = prefixes
                for block in leaf.blocks.values():
                    if is_stray(leaf, block):
                        self._strays[(tree.name, block.base)] = block.host
                if not routing_mode(leaf).host_routes:
                    fresh = holes(
                        ((h, self._host_prefixes(tree.name, h)) for h in leaf.hosts), leaf.prefixlen
                    )
                    for host in leaf.hosts:
                        self._holes[(tree.name, host)] = fresh.get(host, set())
        old, self._devices = self._devices, {}
        self._memo.clear()
        live = set(vantages(state))
        for gone in [v for v in self.stats if v not in live]:
            self.stats.pop(gone, None)
        if count:
            for vantage, before in old.items():
                if vantage in live:
                    self._stale.setdefault(vantage, before)  # the oldest unsettled version
        else:
            self._stale.clear()
        for gone in [v for v in self._stale if v not in live]:
            del self._stale[gone]
        # Routers carry one segment per child or host: remade (and counted) at once.
        for vantage in live:
            if vantage.startswith("group:"):
                self._segments(vantage)


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
