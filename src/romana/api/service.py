"""The IPAM service: the engine, made durable by a store, with group commit.

Everything runs on the event loop thread, so the engine needs no locks. A mutation runs in
memory at once (its facts go to ``pending``); the caller then awaits ``durable(revision)``
and answers only when a flusher has appended its facts to the store. Concurrent requests
share one store transaction (group commit), so one fsync serves many allocations.

If a flush fails, memory holds changes the store lacks; no one was told they succeeded,
and the process exits so a restart rebuilds from the durable log (never a half state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from romana.ipam import Engine, fact_from_json, fact_to_json
from romana.ipam.facts import Fact
from romana.routes import RouteTracker
from romana.store.base import Store

log = logging.getLogger("romanad")
T = TypeVar("T")

SNAPSHOT_EVERY = 50_000  # facts between snapshots
KEEP_HISTORY = 10_000  # facts kept before the newest snapshot, for lagging watchers


class IpamService:
    def __init__(self, store: Store, on_fatal: Callable[[BaseException], None] | None = None,
                 snapshot_every: int = SNAPSHOT_EVERY, keep_history: int = KEEP_HISTORY):
        self.store = store
        self.snapshot_every = snapshot_every
        self.keep_history = keep_history
        self.on_fatal = on_fatal or _exit_process
        snapshot, facts = store.load()
        engine = Engine.from_snapshot(snapshot) if snapshot else Engine()
        engine.apply(fact_from_json(f) for _, f in facts)
        self.engine = engine
        self.routes = RouteTracker(lambda: engine.state)
        engine.observers.append(self.routes.observe)
        engine.sink = self._pending_extend
        self._pending: list[Fact] = []
        self.durable_revision = engine.revision
        self._snapshot_revision = snapshot["revision"] if snapshot else 0
        self._changed = asyncio.Event()
        self._advanced: asyncio.Condition | None = None
        self._flusher: asyncio.Task[None] | None = None
        log.info("state loaded", extra={"revision": engine.revision,
                                        "addresses": len(engine.state.addresses),
                                        "from_snapshot": bool(snapshot)})

    def _pending_extend(self, facts: list[Fact]) -> None:
        self._pending.extend(facts)
        self._changed.set()

    async def start(self) -> None:
        self._advanced = asyncio.Condition()
        self._flusher = asyncio.create_task(self._flush_loop(), name="group-commit")

    async def stop(self) -> None:
        if self._flusher is not None:
            await self.wait_durable(self.engine.revision)
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self.store.close()

    async def run(self, operation: Callable[[], T]) -> T:
        """Run an engine operation and return once its facts are durable."""
        result = operation()
        await self.wait_durable(self.engine.revision)
        return result

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

    async def _flush_loop(self) -> None:
        assert self._advanced is not None
        while True:
            await self._changed.wait()
            self._changed.clear()
            if not self._pending:
                continue
            batch, self._pending = self._pending, []
            expected = self.durable_revision
            try:
                wire = [fact_to_json(f) for f in batch]
                await asyncio.to_thread(self.store.append, wire, expected)
            except Exception as exc:  # any failure here is fatal: see the module docstring
                log.critical("store append failed; exiting to recover from the durable log",
                             exc_info=exc)
                self.on_fatal(exc)
                return
            async with self._advanced:
                self.durable_revision = expected + len(batch)
                self._advanced.notify_all()
            if self.durable_revision - self._snapshot_revision >= self.snapshot_every \
                    and not self._pending:
                await self._snapshot()

    async def _snapshot(self) -> None:
        snapshot = self.engine.snapshot()
        revision = snapshot["revision"]
        await asyncio.to_thread(self.store.save_snapshot, revision, snapshot)
        await asyncio.to_thread(self.store.compact, revision - self.keep_history)
        self._snapshot_revision = revision
        log.info("snapshot written", extra={"revision": revision})

    # -- the changes feed -------------------------------------------------------------
    async def changes(self, since: int, timeout: float, limit: int = 1000
                      ) -> tuple[int, list[dict[str, Any]]]:
        """Durable facts after ``since`` (waiting up to ``timeout`` s for one).

        Raises :class:`Compacted` when facts after ``since`` are gone: the client resyncs.
        """
        assert self._advanced is not None
        if self.durable_revision <= since:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout), self._advanced:
                    await self._advanced.wait_for(lambda: self.durable_revision > since)
        if self.durable_revision <= since:
            return self.durable_revision, []
        rows = await asyncio.to_thread(self.store.read_since, since, limit)
        # With ``limit`` cutting the batch short, the client must continue after the last
        # fact it got, not at the head: answer the revision it has actually seen.
        revision = rows[-1][0] if rows else self.durable_revision
        return revision, [{"revision": r, **f} for r, f in rows]


def _exit_process(exc: BaseException) -> None:
    os._exit(70)  # EX_SOFTWARE: the supervisor restarts us from the durable log

