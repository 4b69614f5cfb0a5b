"""Keeps every device's route set current as facts arrive, and counts route updates.

Only facts that move blocks or hosts can change routes: an address allocated in an
existing block changes nothing anywhere (that is the point of blocks). A block fact
touches its host, the host's L2 neighbours and the routers above it; host and topology
facts rebuild everything (rare). Counting is exact because sets are compared, not guessed.
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
from romana.routes.compute import route_set, vantages
from romana.routes.model import RouteSet, group_vantage, host_vantage

_REBUILD = (TopologyApplied, HostAdded, HostRemoved, HostLabelsUpdated)


@dataclass(slots=True)
class DeviceStats:
    updates: int = 0  # times the device's route set changed since start
    route_changes: int = 0  # routes added plus routes withdrawn


class RouteTracker:
    def __init__(self, state: Callable[[], IpamState]) -> None:
        self._state = state
        self.sets: dict[str, RouteSet] = {}
        self.stats: dict[str, DeviceStats] = {}
        self.revision = 0  # state revision of the last change to any route set
        self._refresh(None, count=False)

    def get(self, vantage: str) -> RouteSet:
        cached = self.sets.get(vantage)
        return cached if cached is not None else route_set(self._state(), vantage)

    def observe(self, facts: Iterable[Fact]) -> None:
        """Called after ``facts`` were applied to the state."""
        touched: set[str] = set()
        for fact in facts:
            if isinstance(fact, _REBUILD):
                self._refresh(None)
                return
            if isinstance(fact, BlockAssigned | BlockFreed):
                touched |= self._around(fact.network, fact.base)
        if touched:
            self._refresh(touched)

    def _around(self, network: str, base: int) -> set[str]:
        """Devices whose routes may cover a block: the hosts of its leaf (its owner, whom
        a freed block no longer names, and L2 neighbours) and the routers above."""
        leaf = self._state().trees[network].leaf_containing(base)
        assert leaf is not None, "blocks always lie inside a leaf group"
        return ({host_vantage(h) for h in leaf.hosts}
                | {group_vantage(n.path) for n in leaf.lineage()})

    def _refresh(self, only: set[str] | None, count: bool = True) -> None:
        state = self._state()
        targets = list(vantages(state)) if only is None else sorted(only)
        if only is None:
            for gone in self.sets.keys() - set(targets):
                del self.sets[gone]
                self.stats.pop(gone, None)
        changed = False
        for vantage in targets:
            new = route_set(state, vantage)
            old = self.sets.get(vantage)
            if old == new:
                continue
            changed = True
            self.sets[vantage] = new
            stats = self.stats.setdefault(vantage, DeviceStats())
            if count and old is not None:  # a device's first set is no update
                stats.updates += 1
                stats.route_changes += len(set(old.routes) ^ set(new.routes))
        if changed:
            self.revision = state.revision

    def summary(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for vantage, routes in self.sets.items():
            stats = self.stats.get(vantage, DeviceStats())
            out.append({"vantage": vantage, "routes": len(routes.routes),
                        "next_hops": len(routes.next_hops), "default": routes.default,
                        "updates": stats.updates, "route_changes": stats.route_changes})
        return out
