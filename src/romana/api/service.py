"""The IPAM service: the engine, made durable by a store, with group commit, on one
store or as one of several replicas sharing a store (etcd).

Everything runs on the event loop thread, so the engine needs no locks. A mutation is
queued (:meth:`IpamService.run`); the *group-commit* loop takes every queued operation,
runs them on the engine with a journal open (so they can be undone), and appends their
facts to the store as one batch at the revision it holds. One fsync or one etcd
transaction serves many requests.

Several replicas append to one log with a compare-and-swap on its head, so there is one
order of facts. A replica whose append lost the race (:class:`RevisionConflict`) undoes
its batch (:mod:`romana.ipam.undo`; or rebuilds from the store when a fact has no
inverse), applies the foreign facts, runs the same operations again and retries: the
one conflict-retry loop, :meth:`IpamService._commit`. An append that failed or whose
outcome is unknown is undone as well and answered 503 (a retry of the same request is
safe: allocations by name are idempotent); the facts are read back from the store before
the next batch, so a write that did land is applied like a foreign one.

Replicas learn of foreign facts from a watch on the head (the *tail* loop; a lost or
compacted watch is made again) and, as a safety net, by reading the head once a second
when idle. Reads show only durable state (:meth:`IpamService.durable_view`): they wait
for the batch in flight, and on a shared store first read the head with a quorum read and
catch up to it, so a change acknowledged by any replica is seen by a read on any other.

Supervised loops (:mod:`romana.supervise`): *group-commit* (its failure ends the
process: a restart rebuilds from the durable log), *tail* (restarted with backoff) and
*maintenance* (snapshots, compaction, checkpoints, the store marker; restarted with
backoff). Snapshots are taken between batches so they describe one durable revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from romana.errors import (
    Compacted,
    OutcomeUnknown,
    RevisionConflict,
    RomanaError,
    StoreDamaged,
    Unavailable,
)
from romana.ipam import fact_from_json, fact_to_json
from romana.ipam.facts import Fact
from romana.ipam.replay import rebuild
from romana.ipam.undo import Journal
from romana.routes import RouteTracker
from romana.store.base import SharedStore, Store
from romana.supervise import Loop, Supervisor

log = logging.getLogger("romanad")
T = TypeVar("T")

SNAPSHOT_EVERY = 50_000  # facts between snapshots
KEEP_HISTORY = 10_000  # facts kept before the newest snapshot, for lagging watchers
MAINTENANCE_EVERY = 1.0  # seconds between store-marker updates while the log grows
CHECKPOINT_EVERY = 10.0  # seconds between checkpoints of the write-ahead log
IDLE_CHECK = 1.0  # seconds without news before a replica reads the shared head itself
MAX_BATCH_OPS = 256  # operations per append: bounds a batch's size and its undo
MAX_ATTEMPTS = 20  # appends of one batch lost to other replicas before it is refused
CATCH_UP_PAGE = 1000  # foreign facts read per request


@dataclass
class StoreStats:
    """Counters of the write path (``/metrics``, ``/healthz``)."""

    appends: int = 0
    conflicts: int = 0
    undone: int = 0  # batches taken back from memory by their inverse facts
    reloads: int = 0  # state rebuilt from the store (no inverse, or the log was trimmed)
    failed: int = 0  # appends that failed or whose outcome was unknown
    foreign: int = 0  # facts applied from other replicas (or read back after a failure)
    seen_head: int = 0  # the newest head this replica has heard of


class Pending:
    """A queued operation and the future its request awaits."""

    __slots__ = ("future", "operation")

    def __init__(self, operation: Callable[[], Any], future: asyncio.Future[Any]) -> None:
        self.operation, self.future = operation, future


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
        self.where = where
        self.shared = store.shared  # other replicas may append
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
        self._queue: list[Pending] = []
        self.durable_revision = engine.revision
        self.stats = StoreStats(seen_head=engine.revision)
        self._snapshot_revision = snapshot["revision"] if snapshot else 0
        self._changed = asyncio.Event()
        self._reads: dict[tuple[int, int, int], asyncio.Future[list[tuple[int, Any]]]] = {}
        self._catch_up_due = False
        self._advanced: asyncio.Condition | None = None
        self._turn: asyncio.Lock | None = None  # held by a batch in flight or a read
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
        return self.store.store_id

    def _pending_extend(self, facts: list[Fact]) -> None:
        self._pending.extend(facts)

    async def start(self) -> None:
        self._advanced = asyncio.Condition()
        self._turn = asyncio.Lock()
        self.supervisor.start("group-commit", self._flush_loop, restart=False, stuck_after=30.0)
        self.supervisor.start("maintenance", self._maintenance_loop, restart=True)
        store = self.store
        if isinstance(store, SharedStore):
            self.supervisor.start("tail", lambda loop: self._tail_loop(loop, store), restart=True)

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
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):  # let queued requests have their answers
                    while self._queue:
                        self._changed.set()
                        await asyncio.sleep(0.01)
                    assert self._turn is not None
                    async with self._turn:
                        pass
            await self.supervisor.stop()
        self.store.close()

    # -- writes and reads -------------------------------------------------------------
    async def mutate(self, operation: Callable[[], T]) -> T:
        """Run an engine operation in the next batch; return once its facts are durable.

        The operation may run more than once (its batch lost the race to another
        replica): it must read the engine afresh each time, as every closure here does."""
        assert self._turn is not None, "service not started"
        if self.stopping:
            raise Unavailable("romanad is stopping", ["retry against the next romanad"])
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(Pending(operation, future))
        self._changed.set()
        return await future

    @contextlib.asynccontextmanager
    async def durable_view(self) -> AsyncIterator[None]:
        """Inside the block, everything the engine shows is durable (read it without
        awaiting), and on a shared store it includes every change any replica had
        acknowledged when the read began. Reads and batches take turns in arrival order:
        a read costs writers at most one batch, and no read starves under writes."""
        assert self._turn is not None, "service not started"
        target = await self._shared_head() if self.shared else 0
        async with self._turn:
            if self.durable_revision < target:
                await self._catch_up(target)
            yield

    async def _shared_head(self) -> int:
        """The store's head by a quorum read (never a stale member's answer)."""
        head = await asyncio.to_thread(self.store.head)
        self.stats.seen_head = max(self.stats.seen_head, head)
        return head

    def mutate_before_serving(self, operation: Callable[[], T]) -> T:
        """Run an operation and write its facts synchronously (before serving starts)."""
        result = operation()
        batch, self._pending = self._pending, []
        self.store.append([fact_to_json(f) for f in batch], self.durable_revision)
        self.durable_revision += len(batch)
        return result

    def reload_now(self) -> None:
        """Rebuild from the store synchronously (before serving: another replica wrote)."""
        self._pending = []
        self._replace_state(*self.store.load())

    async def wait_durable(self, revision: int) -> None:
        assert self._advanced is not None, "service not started"
        async with self._advanced:
            await self._advanced.wait_for(lambda: self.durable_revision >= revision)

    # -- the group-commit loop --------------------------------------------------------
    async def _flush_loop(self, loop: Loop) -> None:
        assert self._turn is not None
        while True:
            woken = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_CHECK):
                    await self._changed.wait()
                    woken = True
            loop.beat()
            self._changed.clear()
            if self.shared and not woken:
                self._catch_up_due = True  # nothing heard for a while: look for ourselves
            if not self._queue and not self._catch_up_due:
                continue
            async with self._turn:
                if self._catch_up_due:
                    try:
                        await self._catch_up()
                    except StoreDamaged:
                        raise
                    except RomanaError as exc:  # the store is unreachable: answer, go on
                        self._catch_up_due = True
                        self._fail_queue(exc)
                        continue
                batch, self._queue = self._queue[:MAX_BATCH_OPS], self._queue[MAX_BATCH_OPS:]
                if batch:
                    await self._commit(batch)
            if self._queue:
                self._changed.set()

    async def _commit(self, batch: list[Pending]) -> None:
        """Plan ``batch``, append it, and on a lost race undo, catch up and plan again."""
        engine = self.engine
        for _ in range(MAX_ATTEMPTS):
            journal = engine.open_journal()
            try:
                outcomes = [_attempt(p.operation) for p in batch]
            finally:
                engine.close_journal()
            facts, self._pending = self._pending, []
            if not facts:
                # Refusals and repeated requests change nothing, so no compare-and-swap
                # checks the state they were judged on: check it is the newest here.
                if self.shared:
                    newer = await self._newer(batch)
                    if newer is None:
                        return
                    if newer:
                        continue
                _answer(batch, outcomes)
                return
            expected = self.durable_revision
            try:
                wire = [fact_to_json(f) for f in facts]
                head = await asyncio.to_thread(self.store.append, wire, expected)
            except RevisionConflict as exc:
                self.stats.conflicts += 1
                self.stats.seen_head = max(self.stats.seen_head, exc.actual)
                await self._take_back(journal)
                if await self._newer(batch, exc.actual) is None:  # the store read the head
                    return
                continue
            except Exception as exc:  # failed, or no answer: nothing acknowledged either way
                self.stats.failed += 1
                log.warning(
                    "append failed; its requests are answered 503",
                    extra={"revision": expected, "error": f"{type(exc).__name__}: {exc}"},
                )
                await self._take_back(journal)
                self._catch_up_due = True  # a write that did land is read back first
                _fail(batch, _unavailable(exc))
                return
            self.stats.appends += 1
            self.stats.seen_head = max(self.stats.seen_head, head)
            await self._advance(expected + len(facts))
            _answer(batch, outcomes)
            return
        _fail(
            batch,
            Unavailable(
                f"other replicas appended first {MAX_ATTEMPTS} times in a row",
                ["retry: the request was not carried out"],
            ),
        )

    async def _newer(self, batch: list[Pending], head: int | None = None) -> bool | None:
        """Catch up to ``head`` (the shared head, read now, when None) before ``batch`` runs
        again: whether facts were applied, or None when the store could not be read (the
        batch is then answered 503)."""
        before = self.durable_revision
        try:
            await self._catch_up(head)
        except StoreDamaged:
            raise
        except RomanaError as exc:
            self._catch_up_due = True
            _fail(batch, exc)
            return None
        return self.durable_revision != before

    async def _take_back(self, journal: Journal) -> None:
        """Memory back to the durable revision: undo the batch, or rebuild from the store."""
        if self.engine.undo(journal):
            self.stats.undone += 1
            return
        await self._reload("a batch held a fact without an inverse")

    async def _reload(self, why: str) -> None:
        try:
            snapshot, facts = await asyncio.to_thread(self.store.load)
            self._replace_state(snapshot, facts)
        except Exception as exc:  # memory holds changes the store may lack: start over
            log.error("cannot rebuild the state from the store", extra={"why": why})
            self.on_fatal(exc)
            raise
        log.info(
            "state rebuilt from the store", extra={"why": why, "revision": self.durable_revision}
        )
        await self._advance(self.durable_revision)  # watchers may wait for what it read

    def _replace_state(self, snapshot: dict[str, Any] | None, facts: list[Any]) -> None:
        rebuilt = rebuild(snapshot, facts, self.where)
        self.engine.state = rebuilt.state
        self.routes.reset()
        self.durable_revision = self.engine.revision
        self._snapshot_revision = snapshot["revision"] if snapshot else 0
        self.stats.reloads += 1

    async def _catch_up(self, head: int | None = None) -> None:
        """Apply the facts other replicas appended (or a failed append did write)."""
        self._catch_up_due = False
        if self.shared:
            # The head is one small key (the caller may have read it just now); the
            # newest batch, read by read_since even when nothing is new, is up to 1 MiB.
            if head is None:
                head = await self._shared_head()
            if head <= self.durable_revision:
                return
        while True:
            try:
                rows = await asyncio.to_thread(
                    self.store.read_since, self.durable_revision, CATCH_UP_PAGE
                )
            except Compacted:
                await self._reload("the facts after our revision were trimmed from the log")
                continue
            if not rows:
                return
            first = self.durable_revision + 1
            if rows[0][0] != first:
                raise StoreDamaged(f"{self.where}: fact {first} is missing from the log")
            facts = [fact_from_json(f) for _, f in rows]
            try:
                self.engine.apply_durable(facts)
            except Exception as exc:
                # Memory holds part of the page: applying it again on top would fail the
                # same way at every retry. Rebuild from the store (it says what is damaged
                # if the facts themselves are) and go on from there.
                log.error(
                    "facts from the store did not apply; rebuilding from the store",
                    exc_info=exc,
                    extra={"revision": first},
                )
                await self._reload(f"facts from revision {first} did not apply")
                continue
            self.stats.foreign += len(rows)
            self.stats.seen_head = max(self.stats.seen_head, rows[-1][0])
            await self._advance(rows[-1][0])
            if len(rows) < CATCH_UP_PAGE:
                return

    async def _advance(self, revision: int) -> None:
        assert self._advanced is not None
        async with self._advanced:
            self.durable_revision = revision
            self._advanced.notify_all()

    def _fail_queue(self, exc: RomanaError) -> None:
        batch, self._queue = self._queue, []
        _fail(batch, exc)

    # -- the tail: news of other replicas' appends ------------------------------------
    async def _tail_loop(self, loop: Loop, store: SharedStore) -> None:
        self._catch_up_due = True  # whatever happened before this watch began
        self._changed.set()
        async for head in store.watch_head():
            loop.beat()
            if head > self.stats.seen_head:
                self.stats.seen_head = head
            if head > self.durable_revision:
                self._catch_up_due = True
                self._changed.set()
        raise Unavailable("the store's watch ended")

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
                await asyncio.to_thread(self.store.sync_marker, durable)
                marked = durable
            now = asyncio.get_running_loop().time()
            if durable != checkpointed and now - last_checkpoint >= self.checkpoint_every:
                await asyncio.to_thread(self.store.checkpoint)
                checkpointed, last_checkpoint = durable, now

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
        stats = self.stats
        store = dict(self.store.describe())
        store.update(
            shared=self.shared,
            seen_head=stats.seen_head,
            behind=max(0, stats.seen_head - self.durable_revision),
            appends=stats.appends,
            conflicts=stats.conflicts,
            undone=stats.undone,
            reloads=stats.reloads,
            failed_appends=stats.failed,
            foreign_facts=stats.foreign,
            queued=len(self._queue),
        )
        return ok and not self.stopping, {
            "status": "ok" if ok else "degraded",
            "store_id": self.store_id,
            "revision": self.durable_revision,
            "durable_revision": self.durable_revision,
            "applied_revision": self.engine.revision,
            "store": store,
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
        rows = await self._shared_read(since, limit)
        # With ``limit`` cutting the batch short, the client must continue after the last
        # fact it got, not at the head: answer the revision it has actually seen.
        revision = rows[-1][0] if rows else self.durable_revision
        return revision, [{"revision": r, **f} for r, f in rows]

    async def _shared_read(self, since: int, limit: int) -> list[tuple[int, Any]]:
        """The store's facts after ``since``: one read for every watcher that asks the same
        at once. After a commit every follower (two per node) wakes with the same
        ``since``; a read each would cost the loop a thread hop each, and the store a
        query each, for one answer."""
        key = (since, limit, self.durable_revision)
        read = self._reads.get(key)
        if read is None:
            read = asyncio.ensure_future(asyncio.to_thread(self.store.read_since, since, limit))
            self._reads[key] = read
            read.add_done_callback(lambda _: self._reads.pop(key, None))
        rows: list[tuple[int, Any]] = await asyncio.shield(read)
        return rows


def _attempt(operation: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, operation()
    except Exception as exc:  # the request's own answer (4xx, or 500 for a bug)
        return False, exc


def _answer(batch: list[Pending], outcomes: list[tuple[bool, Any]]) -> None:
    for pending, (ok, value) in zip(batch, outcomes, strict=True):
        if pending.future.done():  # the request went away meanwhile
            continue
        if ok:
            pending.future.set_result(value)
        else:
            pending.future.set_exception(value)


def _fail(batch: list[Pending], exc: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)


def _unavailable(exc: BaseException) -> Unavailable:
    if isinstance(exc, OutcomeUnknown):
        return OutcomeUnknown(
            f"the store did not confirm the change: {exc}",
            ["it may or may not have been made; retrying the same request is safe"],
        )
    return Unavailable(
        f"the store refused the change: {type(exc).__name__}: {exc}",
        ["the change was not made; retry"],
    )


def _exit_process(exc: BaseException) -> None:
    os._exit(70)  # EX_SOFTWARE: the supervisor restarts us from the durable log
