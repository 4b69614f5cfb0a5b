"""The agent's control loop: follow romanad's changes feed, keep the kernel table in sync.

A sync reads the host's route set from romanad and the agent's own routes from the kernel,
and applies only the difference. It runs at start, whenever the feed reports a fact that
can move routes (block, host, topology; an address inside an existing block cannot), and
every ``resync_interval`` seconds to repair what someone else changed in the table.

While romanad is unreachable the kernel keeps the routes it has (traffic keeps flowing);
the loop retries with capped exponential backoff and resyncs fully once romanad is back.
A romanad whose revision went back in time, or that now serves another store (an emptied
or replaced database), is not followed: the kernel keeps the last good routes, the agent
reports ``feed: rewound`` and keeps checking; restart the agent to accept the new store.
Both loops run supervised (:mod:`romana.supervise`): an unexpected exception is logged
with its traceback and the loop restarts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from romana.agent.metrics import AgentMetrics
from romana.agent.reconcile import KernelRoute, RouteDiff, diff_routes, from_route_set
from romana.agent.route_table import ApplyResult, RouteTable
from romana.api.client import AsyncRomanaClient
from romana.backoff import Backoff
from romana.errors import FeedRewound, Resync, RomanaError, Unavailable, Unreachable
from romana.feed import FeedGuard
from romana.supervise import Loop
from romana.wire import ROUTE_FACTS, TOPOLOGY_APPLIED

log = logging.getLogger("romana.agent")
T = TypeVar("T")


class RouteAgent:
    def __init__(
        self,
        host: str,
        upstream: AsyncRomanaClient,
        table: RouteTable,
        metrics: AgentMetrics,
        rule_priority: int = 1000,
        resync_interval: float = 30.0,
        watch_timeout: float = 30.0,
    ) -> None:
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
        self.feed = FeedGuard(log, "this agent")  # the store and revisions the kernel follows
        self._outage_logged = False
        self._lock = asyncio.Lock()
        self._networks: tuple[str, ...] | None = None
        # Run at the end of every sync with (reason, whether the map may have changed):
        # what follows the map too (outbound NAT) needs no feed of its own.
        self.after_sync: list[Callable[[str, bool], Awaitable[None]]] = []
        # pyroute2 sockets are not shared between threads: one thread does all netlink work.
        self._kernel = ThreadPoolExecutor(1, thread_name_prefix="netlink")

    async def in_kernel(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._kernel, fn, *args)

    def close(self) -> None:
        self._kernel.shutdown(wait=True)

    # -- one sync ---------------------------------------------------------------------
    async def sync(self, reason: str, topology_changed: bool = True) -> int:
        """Make the kernel match romanad's route set for this host; returns the revision.
        ``topology_changed``: the map may differ from the last sync's (``after_sync``)."""
        async with self._lock:
            started = time.perf_counter()
            route_set = await self.upstream.routes(host=self.host)
            cidrs = tuple(n["cidr"] for n in await self.upstream.networks())
            self._mark_up()
            self._check_feed(route_set.get("store_id"), int(route_set.get("revision", 0)))
            desired, skipped = from_route_set(route_set)
            for route in skipped:
                log.warning(
                    "route not programmable on a host",
                    extra={"prefix": route.prefix, "via": route.via, "reason": route.reason},
                )
            diff, result = await self.in_kernel(self._reconcile, desired, cidrs)
            elapsed = time.perf_counter() - started
            self._record(reason, desired, diff, result, elapsed)
            for hook in self.after_sync:
                await hook(reason, topology_changed)
            self.revision = int(route_set.get("revision", 0))
            self.metrics.revision.set(self.revision)
            self.synced.set()
            return self.revision

    def _reconcile(
        self, desired: dict[str, KernelRoute], cidrs: Sequence[str]
    ) -> tuple[RouteDiff, ApplyResult | None]:
        if cidrs != self._networks:
            self.table.ensure_rules(cidrs, self.rule_priority)
            self._networks = tuple(cidrs)
        diff = diff_routes(desired, self.table.dump())
        return diff, (None if diff.empty else self.table.apply(diff))

    def _record(
        self,
        reason: str,
        desired: dict[str, KernelRoute],
        diff: RouteDiff,
        result: ApplyResult | None,
        elapsed: float,
    ) -> None:
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
        log.info(
            "routes synced",
            extra={
                "reason": reason,
                "routes": len(desired),
                "added": result.added,
                "replaced": result.replaced,
                "deleted": result.deleted,
                "failed": len(result.failures),
                "ms": round(elapsed * 1000, 1),
            },
        )
        if diff.delete and reason == "periodic":
            log.warning(
                "removed stale routes someone left in our table",
                extra={"prefixes": [r.prefix for r in diff.delete]},
            )

    def _mark_up(self) -> None:
        self._outage_logged = False
        if not self.romanad_up:
            log.info("romanad reachable", extra={"url": self.upstream.url})
        self.romanad_up = True
        self.metrics.romanad_up.set(1)

    def _mark_down(self, exc: Exception) -> None:
        if self.romanad_up or not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "romanad unreachable; keeping kernel routes and retrying", extra={"error": str(exc)}
            )
        self.romanad_up = False
        self.metrics.romanad_up.set(0)

    def _check_feed(self, store_id: str | None, revision: int, floor: int | None = None) -> None:
        try:
            self.feed.check(store_id, revision, floor)
        except FeedRewound:
            self.metrics.errors.labels("FeedRewound").inc()
            raise

    @property
    def rewound(self) -> str | None:
        return self.feed.problem

    @property
    def store_id(self) -> str | None:
        return self.feed.store_id

    # -- the loops --------------------------------------------------------------------
    async def follow(self, loop: Loop) -> None:
        """Sync, then sync again on every route-moving change; never returns by itself."""
        backoff = Backoff()
        since: int | None = None
        while True:
            loop.beat()
            try:
                if since is None:
                    since = await self.sync("start" if not self.synced.is_set() else "resync")
                    backoff.reset()
                answer = await self.upstream.watch(since, self.watch_timeout)
                self._mark_up()
                revision = int(answer["revision"])
                self._check_feed(answer.get("store_id"), revision, floor=since)
                since = revision
                kinds = {c.get("kind") for c in answer["changes"]}
                if kinds & ROUTE_FACTS:
                    # The sync reads the head: continue after what it covered, or the next
                    # (limited) watch answer would look like a feed that went back in time.
                    since = max(since, await self.sync("watch", TOPOLOGY_APPLIED in kinds))
            except Resync:
                since = None
            except Unreachable as exc:  # unreachable, or stopping: it will be back
                self._mark_down(exc)
                since = None
                await asyncio.sleep(backoff.next())
            except Unavailable as exc:
                # romanad answered 503 (e.g. its long polls are all taken: --max-watches).
                # A refused watch keeps its place in the feed: no full re-read on top of
                # the load that made romanad refuse.
                self.metrics.errors.labels(type(exc).__name__).inc()
                await asyncio.sleep(backoff.next())
            except FeedRewound:
                since = None  # keep the kernel as it is; look again later
                await asyncio.sleep(backoff.next())
            except (RomanaError, OSError) as exc:
                # romanad refused (e.g. this host was removed) or the kernel did: retry later.
                self.metrics.errors.labels(type(exc).__name__).inc()
                log.error("sync failed; retrying", extra={"error": str(exc)})
                since = None
                await asyncio.sleep(backoff.next())

    async def resync_periodically(self, loop: Loop) -> None:
        """Repair what someone else changed in the table; romanad outages are follow()'s."""
        while True:
            await asyncio.sleep(self.resync_interval)
            loop.beat()
            if not self.synced.is_set() or self.rewound is not None:
                continue
            try:
                await self.sync("periodic", topology_changed=False)
            except (Unavailable, FeedRewound):
                pass
            except (RomanaError, OSError) as exc:
                self.metrics.errors.labels(type(exc).__name__).inc()
                log.error("periodic resync failed", extra={"error": str(exc)})
