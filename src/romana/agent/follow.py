"""The agent's control loop: follow romanad's changes feed, keep the kernel table in sync.

A sync reads the host's route set from romanad and the agent's own routes from the kernel,
and applies only the difference. It runs at start, whenever the feed reports a fact that
can move routes (block, host, topology; an address inside an existing block cannot), and
every ``resync_interval`` seconds to repair what someone else changed in the table.

While romanad is unreachable the kernel keeps the routes it has (traffic keeps flowing);
the loop retries with capped exponential backoff and resyncs fully once romanad is back,
because romanad may have restarted from an older snapshot or a different store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from romana.agent.metrics import AgentMetrics
from romana.agent.netlink import ApplyResult, RouteTable
from romana.agent.reconcile import KernelRoute, RouteDiff, diff_routes, from_route_set
from romana.agent.upstream import Resync, Unreachable, Upstream
from romana.errors import RomanaError

log = logging.getLogger("romana.agent")
T = TypeVar("T")

# Fact kinds on the changes feed that can move routes (see romana.ipam.facts).
ROUTE_FACTS = frozenset({"topology_applied", "host_added", "host_removed",
                         "host_labels_updated", "block_assigned", "block_freed",
                         "area_reserved", "area_released"})


class Backoff:
    """Capped exponential delays with jitter, so a fleet of agents does not retry in step."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap = first, cap
        self.current = first

    def next(self) -> float:
        delay = self.current * random.uniform(0.5, 1.0)
        self.current = min(self.cap, self.current * 2)
        return delay

    def reset(self) -> None:
        self.current = self.first


class RouteAgent:
    def __init__(self, host: str, upstream: Upstream, table: RouteTable,
                 metrics: AgentMetrics, rule_priority: int = 1000,
                 resync_interval: float = 30.0, watch_timeout: float = 30.0) -> None:
        self.host = host
        self.upstream = upstream
        self.table = table
        self.metrics = metrics
        self.rule_priority = rule_priority
        self.resync_interval = resync_interval
        self.watch_timeout = watch_timeout
        self.revision = 0  # romanad revision the kernel reflects
        self.synced = asyncio.Event()  # set after the first successful sync
        self.romanad_up = False
        self._outage_logged = False
        self._lock = asyncio.Lock()
        self._networks: tuple[str, ...] | None = None
        # pyroute2 sockets are not shared between threads: one thread does all netlink work.
        self._kernel = ThreadPoolExecutor(1, thread_name_prefix="netlink")

    async def in_kernel(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._kernel, fn, *args)

    def close(self) -> None:
        self._kernel.shutdown(wait=True)

    # -- one sync ---------------------------------------------------------------------
    async def sync(self, reason: str) -> int:
        """Make the kernel match romanad's route set for this host; returns the revision."""
        async with self._lock:
            started = time.perf_counter()
            route_set = await self.upstream.host_routes(self.host)
            cidrs = tuple(await self.upstream.network_cidrs())
            self._mark_up()
            desired, skipped = from_route_set(route_set)
            for route in skipped:
                log.warning("route not programmable on a host", extra={
                    "prefix": route.prefix, "via": route.via, "reason": route.reason})
            diff, result = await self.in_kernel(self._reconcile, desired, cidrs)
            elapsed = time.perf_counter() - started
            self._record(reason, desired, diff, result, elapsed)
            self.revision = int(route_set.get("revision", 0))
            self.metrics.revision.set(self.revision)
            self.synced.set()
            return self.revision

    def _reconcile(self, desired: dict[str, KernelRoute], cidrs: Sequence[str]
                   ) -> tuple[RouteDiff, ApplyResult | None]:
        if cidrs != self._networks:
            self.table.ensure_rules(cidrs, self.rule_priority)
            self._networks = tuple(cidrs)
        diff = diff_routes(desired, self.table.dump())
        return diff, (None if diff.empty else self.table.apply(diff))

    def _record(self, reason: str, desired: dict[str, KernelRoute], diff: RouteDiff,
                result: ApplyResult | None, elapsed: float) -> None:
        m = self.metrics
        m.syncs.labels(reason).inc()
        m.sync_seconds.observe(elapsed)
        m.routes.set(len(desired))
        m.last_sync.set(time.time())
        if result is None:
            log.debug("in sync", extra={"reason": reason, "routes": len(desired)})
            return
        m.changes.labels("add").inc(result.added)
        m.changes.labels("replace").inc(result.replaced)
        m.changes.labels("delete").inc(result.deleted)
        for failure in result.failures:
            m.errors.labels("route").inc()
            log.error("kernel refused a route", extra={"failure": str(failure)})
        log.info("routes synced", extra={
            "reason": reason, "routes": len(desired), "added": result.added,
            "replaced": result.replaced, "deleted": result.deleted,
            "failed": len(result.failures), "ms": round(elapsed * 1000, 1)})
        if diff.delete and reason == "periodic":
            log.warning("removed stale routes someone left in our table",
                        extra={"prefixes": [r.prefix for r in diff.delete]})

    def _mark_up(self) -> None:
        self._outage_logged = False
        if not self.romanad_up:
            log.info("romanad reachable", extra={"url": self.upstream.url})
        self.romanad_up = True
        self.metrics.romanad_up.set(1)

    def _mark_down(self, exc: Exception) -> None:
        if self.romanad_up or not self._outage_logged:
            self._outage_logged = True
            log.warning("romanad unreachable; keeping kernel routes and retrying",
                        extra={"error": str(exc)})
        self.romanad_up = False
        self.metrics.romanad_up.set(0)

    # -- the loops --------------------------------------------------------------------
    async def follow(self) -> None:
        """Sync, then sync again on every route-moving change; never returns by itself."""
        backoff = Backoff()
        since: int | None = None
        while True:
            try:
                if since is None:
                    since = await self.sync("start" if not self.synced.is_set() else "resync")
                    backoff.reset()
                answer = await self.upstream.watch(since, self.watch_timeout)
                self._mark_up()
                revision = int(answer["revision"])
                if revision < since:  # romanad went back in time (restored store): start over
                    since = None
                    continue
                since = revision
                if any(c.get("kind") in ROUTE_FACTS for c in answer["changes"]):
                    await self.sync("watch")
            except Resync:
                since = None
            except Unreachable as exc:
                self._mark_down(exc)
                since = None
                await asyncio.sleep(backoff.next())
            except (RomanaError, OSError, KeyError, ValueError) as exc:
                # romanad refused (e.g. this host was removed) or the kernel did: retry later.
                self.metrics.errors.labels(type(exc).__name__).inc()
                log.error("sync failed; retrying", extra={"error": str(exc)})
                since = None
                await asyncio.sleep(backoff.next())

    async def resync_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval)
            if not self.synced.is_set():
                continue
            with contextlib.suppress(Unreachable):  # follow() reports outages
                try:
                    await self.sync("periodic")
                except (RomanaError, OSError) as exc:
                    if not isinstance(exc, Unreachable):
                        self.metrics.errors.labels(type(exc).__name__).inc()
                        log.error("periodic resync failed", extra={"error": str(exc)})
                    raise
