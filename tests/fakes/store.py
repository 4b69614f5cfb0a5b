"""Stores that fail on demand: the Store interface in memory, and a wrapper that makes a
real or memory store's next calls fail as a full disk or a broken file would."""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from romana.errors import Compacted, RevisionConflict, StoreError
from romana.store.base import Store

FactJson = dict[str, Any]


class MemoryStore(Store):
    """A store that keeps everything in memory (same semantics as SqliteStore's log)."""

    def __init__(self, store_id: str | None = None, shared: bool = False) -> None:
        self.store_id = store_id or uuid.uuid4().hex
        self.shared = shared  # True: several services may append (replicas), as on etcd
        self._lock = threading.Lock()  # appends come from worker threads
        self.facts: dict[int, FactJson] = {}
        self.snapshots: dict[int, dict[str, Any]] = {}
        self.closed = False
        self.checkpoints = 0
        self.marker = 0

    def _head(self) -> int:
        return max([*self.facts, *self.snapshots, 0])

    def load(self) -> tuple[dict[str, Any] | None, list[tuple[int, FactJson]]]:
        newest = max(self.snapshots, default=None)
        after = newest or 0
        facts = [(r, copy.deepcopy(f)) for r, f in sorted(self.facts.items()) if r > after]
        return (copy.deepcopy(self.snapshots[newest]) if newest else None), facts

    def append(self, facts: Sequence[FactJson], expected_revision: int) -> int:
        self._check_open()
        with self._lock:
            head = self._head()
            if head != expected_revision:
                raise RevisionConflict(expected_revision, head)
            for i, fact in enumerate(facts, start=head + 1):
                self.facts[i] = copy.deepcopy(fact)
            return head + len(facts)

    def read_since(self, revision: int, limit: int | None = None) -> list[tuple[int, FactJson]]:
        self._check_open()
        with self._lock:
            first = min(self.facts, default=self._head() + 1)
            if revision < first - 1:
                raise Compacted(revision, first)
            rows = [(r, copy.deepcopy(f)) for r, f in sorted(self.facts.items()) if r > revision]
        return rows if limit is None else rows[:limit]

    def head(self) -> int:
        return self._head()

    def save_snapshot(self, revision: int, snapshot: dict[str, Any]) -> None:
        self._check_open()
        self.snapshots[revision] = copy.deepcopy(snapshot)

    def compact(self, before_revision: int) -> int:
        newest = max(self.snapshots, default=None)
        if newest is None:
            return 0
        cut = min(before_revision, newest)
        gone = [r for r in self.facts if r <= cut]
        for r in gone:
            del self.facts[r]
        for r in [r for r in self.snapshots if r < cut]:
            del self.snapshots[r]
        return len(gone)

    def checkpoint(self) -> None:
        self.checkpoints += 1

    def sync_marker(self, head: int | None = None) -> bool:
        self.marker = self._head() if head is None else head
        return True

    def describe(self) -> dict[str, Any]:
        return {"kind": "memory"}

    def close(self) -> None:
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError("memory store is closed")


class FailingStore(Store):
    """Wraps a store; ``fail(op, times, exc)`` makes the next ``times`` calls of ``op``
    raise ``exc`` (default: a StoreError, as a full disk would); with ``after=True`` the
    call is carried out first (a write whose answer was lost)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.store_id = inner.store_id
        self.shared = inner.shared
        self._failures: dict[str, list[tuple[BaseException, bool]]] = {}
        self.calls: dict[str, int] = {}

    def fail(
        self, op: str, times: int = 1, exc: BaseException | None = None, after: bool = False
    ) -> None:
        error = exc or StoreError(f"injected failure of {op}")
        self._failures.setdefault(op, []).extend([(error, after)] * times)

    def _maybe_fail(self, op: str, done: bool = False) -> None:
        if not done:
            self.calls[op] = self.calls.get(op, 0) + 1
        pending = self._failures.get(op)
        if pending and pending[0][1] == done:
            raise pending.pop(0)[0]

    def load(self) -> tuple[dict[str, Any] | None, list[tuple[int, FactJson]]]:
        self._maybe_fail("load")
        return self.inner.load()

    def append(self, facts: Sequence[FactJson], expected_revision: int) -> int:
        self._maybe_fail("append")
        head: int = self.inner.append(facts, expected_revision)
        self._maybe_fail("append", done=True)
        return head

    def read_since(self, revision: int, limit: int | None = None) -> list[tuple[int, FactJson]]:
        self._maybe_fail("read_since")
        return self.inner.read_since(revision, limit)

    def head(self) -> int:
        return self.inner.head()

    def save_snapshot(self, revision: int, snapshot: dict[str, Any]) -> None:
        self._maybe_fail("save_snapshot")
        self.inner.save_snapshot(revision, snapshot)

    def compact(self, before_revision: int) -> int:
        self._maybe_fail("compact")
        return self.inner.compact(before_revision)

    def checkpoint(self) -> None:
        self._maybe_fail("checkpoint")
        self.inner.checkpoint()

    def sync_marker(self, head: int | None = None) -> bool:
        return self.inner.sync_marker(head)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()
