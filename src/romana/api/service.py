"""The IPAM service: the engine, made durable by a store, with group commit.

Everything runs on the event loop thread, so the engine needs no locks. A mutation runs in
memory at once (its facts go to ``pending``); the caller then awaits ``durable(revision)``
and answers only when the group-commit loop has appended its facts to the store.
Concurrent requests share one store transaction (group commit), so one fsync serves many
allocations.

Reads show only durable state (:meth:`IpamService.durable_view`): a read waits until every
applied fact is in the store, and mutations arriving meanwhile wait for the read, so no
answer can describe a change a crash would undo.

Two supervised loops (:mod:`romana.supervise`): *group-commit*, whose failure ends the
process (memory would hold changes the store lacks; a restart rebuilds from the durable
log), and *maintenance* (snapshots, compaction, checkpoints of the write-ahead log, the
store marker), which is restarted with backoff if it fails: the log is durable without it.
Snapshots are taken on a quiet moment (``durable_view``) so they describe one durable
revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from romana.errors import Unavailable
from romana.ipam import fact_to_json
from romana.ipam.facts import Fact
from romana.routes import RouteTracker
from romana.store.base import Store
from romana.store.replay import rebuild
from romana.supervise import Loop, Supervisor

log = logging.getLogger("romanad")
T = TypeVar("T")

SNAPSHOT_EVERY = 50_000  # facts between snapshots
KEEP_HISTORY = 10_000  # facts kept before the newest snapshot, for lagging watchers
MAINTENANCE_EVERY = 1.0  # seconds between store-marker updates while the log grows
CHECKPOINT_EVERY = 10.0  # seconds between checkpoints of the write-ahead log


class IpamService:
    def __init__(
        self,
        store: Store,
        on_fatal: Callable[[BaseException], None] | None = None,
        snapshot_every: int = SNAPSHOT_EVERY,
        keep_history: int = KEEP_HISTORY,
        where: str = "the store",
        checkpoint_every: float = CHECKPOINT_EVERY,
    ):
        self.store = store
        self.snapshot_every = snapshot_every
        self.keep_history = keep_history
        self.checkpoint_every = checkpoint_every
        self.on_fatal = on_fatal or _exit_process
        snapshot, facts = store.load()
        engine = rebuild(snapshot, facts, where)  # StoreDamaged names what and where
        self.engine = engine
        self.routes = RouteTracker(lambda: engine.state)
        engine.observers.append(self.routes.observe)
        engine.sink = self._pending_extend
        self._pending: list[Fact] = []
        self.durable_revision = engine.revision
        self._snapshot_revision = snapshot["revision"] if snapshot else 0
        self._changed = asyncio.Event()
        self._advanced: asyncio.Condition | None = None
        self._readers = 0  # reads waiting for a durable view
        self._readers_done: asyncio.Event | None = None
        self.stopping = False
        self.supervisor = Supervisor(self.on_fatal)
        log.info(
            "state loaded",
            extra={
                "revision": engine.revision,
                "addresses": len(engine.state.addresses),
                "from_snapshot": bool(snapshot),
            },
        )

    @property
    def store_id(self) -> str:
        return str(getattr(self.store, "store_id", ""))

    def _pending_extend(self, facts: list[Fact]) -> None:
        self._pending.extend(facts)
        self._changed.set()

    async def start(self) -> None:
        self._advanced = asyncio.Condition()
        self._readers_done = asyncio.Event()
        self._readers_done.set()
        self.supervisor.start("group-commit", self._flush_loop, restart=False, stuck_after=30.0)
        self.supervisor.start("maintenance", self._maintenance_loop, restart=True)

    def begin_stop(self) -> None:
        """Shutdown starts: watchers answer at once (503) instead of holding the store."""
        self.stopping = True
        if self._advanced is not None:
            asyncio.get_running_loop().create_task(self._wake_watchers())

    async def _wake_watchers(self) -> None:
        assert self._advanced is not None
        async with self._advanced:
            self._advanced.notify_all()

    async def stop(self) -> None:
        self.stopping = True
        if self._advanced is not None:
            await self.wait_durable(self.engine.revision)
            await self.supervisor.stop()
        self.store.close()

    # -- writes and reads -------------------------------------------------------------
    async def run(self, operation: Callable[[], T]) -> T:
        """Run an engine operation and return once its facts are durable."""
        assert self._readers_done is not None, "service not started"
        if self.stopping:
            raise Unavailable("romanad is stopping", ["retry against the next romanad"])
        while self._readers:  # a read is waiting for a durable view: let it have one
            await self._readers_done.wait()
        result = operation()
        await self.wait_durable(self.engine.revision)
        return result

    @contextlib.asynccontextmanager
    async def durable_view(self) -> AsyncIterator[None]:
        """Inside the block, everything the engine shows is durable (read it without
        awaiting). Mutations wait while reads do: each read costs writers at most one
        group commit, and no read starves under a stream of writes."""
        assert self._readers_done is not None, "service not started"
        self._readers += 1
        self._readers_done.clear()
        try:
            while self.durable_revision < self.engine.revision:
                await self.wait_durable(self.engine.revision)
            yield
        finally:
            self._readers -= 1
            if not self._readers:
                self._readers_done.set()

    def run_now(self, operation: Callable[[], T]) -> T:
        """Run an operation and write its facts synchronously (before serving starts)."""
        result = operation()
        batch, self._pending = self._pending, []
        self.store.append([fact_to_json(f) for f in batch], self.durable_revision)
        self.durable_revision += len(batch)
        return result

    async def wait_durable(self, revision: int) -> None:
        assert self._advanced is not None, "service not started"
        async with self._advanced:
            await self._advanced.wait_for(lambda: self.durable_revision >= revision)

    # -- the loops --------------------------------------------------------------------
    async def _flush_loop(self, loop: Loop) -> None:
        assert self._advanced is not None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._changed.wait()
            loop.beat()
            self._changed.clear()
            if not self._pending:
                continue
            batch, self._pending = self._pending, []
            expected = self.durable_revision
            wire = [fact_to_json(f) for f in batch]
            # A failure here ends the process (see the module docstring): let it raise.
            await asyncio.to_thread(self.store.append, wire, expected)
            async with self._advanced:
                self.durable_revision = expected + len(batch)
                self._advanced.notify_all()

    async def _maintenance_loop(self, loop: Loop) -> None:
        # The marker is rewritten more often than the log is checkpointed: a write-ahead
        # log lost after a crash then leaves the database behind the marker, which the next
        # start detects (see romana.store.sqlite).
        marked = checkpointed = self.durable_revision
        last_checkpoint = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(MAINTENANCE_EVERY)
            loop.beat()
            durable = self.durable_revision
            if durable - self._snapshot_revision >= self.snapshot_every:
                await self._snapshot()
            if durable != marked:
                await asyncio.to_thread(self._call_store, "sync_marker", durable)
                marked = durable
            now = asyncio.get_running_loop().time()
            if durable != checkpointed and now - last_checkpoint >= self.checkpoint_every:
                await asyncio.to_thread(self._call_store, "checkpoint")
                checkpointed, last_checkpoint = durable, now

    def _call_store(self, name: str, *args: Any) -> None:
        method = getattr(self.store, name, None)  # optional in the Store protocol
        if method is not None:
            method(*args)

    async def _snapshot(self) -> None:
        # Taken on the loop: it must describe one revision, the durable one. Pending facts
        # (applied, not yet durable) would make it describe more: wait for a quiet moment.
        async with self.durable_view():
            snapshot = self.engine.snapshot()
        revision = snapshot["revision"]
        await asyncio.to_thread(self.store.save_snapshot, revision, snapshot)
        await asyncio.to_thread(self.store.compact, revision - self.keep_history)
        self._snapshot_revision = revision
        log.info("snapshot written", extra={"revision": revision})

    def health(self) -> tuple[bool, dict[str, Any]]:
        ok, loops = self.supervisor.health()
        return ok and not self.stopping, {
            "status": "ok" if ok else "degraded",
            "store_id": self.store_id,
            "revision": self.durable_revision,
            "durable_revision": self.durable_revision,
            "applied_revision": self.engine.revision,
            "loops": loops,
        }

    # -- the changes feed -------------------------------------------------------------
    async def changes(
        self, since: int, timeout: float, limit: int = 1000
    ) -> tuple[int, list[dict[str, Any]]]:
        """Durable facts after ``since`` (waiting up to ``timeout`` s for one).

        Raises :class:`Compacted` when facts after ``since`` are gone (the client resyncs)
        and :class:`Unavailable` when romanad is stopping.
        """
        assert self._advanced is not None
        if self.durable_revision <= since and not self.stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout), self._advanced:
                    await self._advanced.wait_for(
                        lambda: self.durable_revision > since or self.stopping
                    )
        if self.stopping:
            raise Unavailable("romanad is stopping", ["watch the next romanad"])
        if self.durable_revision <= since:
            return self.durable_revision, []
        rows = await asyncio.to_thread(self.store.read_since, since, limit)
        # With ``limit`` cutting the batch short, the client must continue after the last
        # fact it got, not at the head: answer the revision it has actually seen.
        revision = rows[-1][0] if rows else self.durable_revision
        return revision, [{"revision": r, **f} for r, f in rows]


def _exit_process(exc: BaseException) -> None:
    os._exit(70)  # EX_SOFTWARE: the supervisor restarts us from the durable log
