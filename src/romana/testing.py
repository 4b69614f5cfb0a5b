"""Fakes for the failure paths, in one place: what cannot fail on demand when real.

Real components stay real everywhere else (tests run romanad, BIRD, the kernel's tables in
namespaces). These stand in only where a test must make something fail at a chosen moment
or must not need root:

- :class:`MemoryStore`: the :class:`~romana.store.base.Store` interface in memory;
- :class:`FailingStore`: wraps a store and fails ``append``, ``save_snapshot``, ``compact``
  or ``checkpoint`` the next N times (as a full disk or a broken file would);
- :class:`FakeUpstream`: the agent's view of romanad (route sets, networks, the changes
  feed), scripted: answers, outages, another store, a rewound revision, a crash;
- :class:`FakeRouteTable`: the agent's kernel table in memory, with refusals on demand;
- :class:`FakeNftTable`: the agent's policy table in memory, with refusals on demand (the
  real one is tested against nft in namespaces).
"""

from __future__ import annotations

import asyncio
import copy
import errno
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from romana.agent.netlink import ApplyResult, RouteFailure
from romana.agent.nftables import Loaded
from romana.agent.reconcile import KernelRoute, RouteDiff
from romana.errors import Compacted, PolicyError, RevisionConflict, StoreError, Unreachable
from romana.policy.compile import Ruleset
from romana.policy.nft import render_update

FactJson = dict[str, Any]


class MemoryStore:
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

    def close(self) -> None:
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError("memory store is closed")


class FailingStore:
    """Wraps a store; ``fail(op, times, exc)`` makes the next ``times`` calls of ``op``
    raise ``exc`` (default: a StoreError, as a full disk would); with ``after=True`` the
    call is carried out first (a write whose answer was lost)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.store_id = inner.store_id
        self.shared = getattr(inner, "shared", False)
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
        return self.inner.load()  # type: ignore[no-any-return]

    def append(self, facts: Sequence[FactJson], expected_revision: int) -> int:
        self._maybe_fail("append")
        head: int = self.inner.append(facts, expected_revision)
        self._maybe_fail("append", done=True)
        return head

    def read_since(self, revision: int, limit: int | None = None) -> list[tuple[int, FactJson]]:
        self._maybe_fail("read_since")
        return self.inner.read_since(revision, limit)  # type: ignore[no-any-return]

    def head(self) -> int:
        return self.inner.head()  # type: ignore[no-any-return]

    def save_snapshot(self, revision: int, snapshot: dict[str, Any]) -> None:
        self._maybe_fail("save_snapshot")
        self.inner.save_snapshot(revision, snapshot)

    def compact(self, before_revision: int) -> int:
        self._maybe_fail("compact")
        return self.inner.compact(before_revision)  # type: ignore[no-any-return]

    def checkpoint(self) -> None:
        self._maybe_fail("checkpoint")
        self.inner.checkpoint()

    def sync_marker(self, head: int | None = None) -> bool:
        return self.inner.sync_marker(head)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.inner.close()


class FakeUpstream:
    """The agent's romanad, scripted. ``routes`` is the host's route set (wire form), each
    ``watch`` pops the next scripted answer (an answer dict, or an exception to raise), and
    with none left waits like a quiet long poll."""

    def __init__(self, store_id: str = "store-a") -> None:
        self.url = "fake://romanad"
        self.store_id = store_id
        self.revision = 1
        self.route_list: list[dict[str, Any]] = []
        self.network_list: list[dict[str, Any]] = [{"name": "pods", "cidr": "10.1.0.0/16"}]
        self.script: list[Any] = []
        self.down = False
        self.calls: list[str] = []
        self.policy_document: dict[str, Any] = {"endpoints": [], "policies": []}

    async def close(self) -> None:
        pass

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.down:
            raise Unreachable("fake romanad is down")

    async def routes(self, host: str | None = None, group: str | None = None) -> dict[str, Any]:
        self._check("routes")
        return {
            "vantage": f"host:{host}",
            "default": "group:rack",
            "revision": self.revision,
            "store_id": self.store_id,
            "routes": copy.deepcopy(self.route_list),
        }

    async def networks(self) -> list[dict[str, Any]]:
        self._check("networks")
        return copy.deepcopy(self.network_list)

    async def policy_state(self) -> dict[str, Any]:
        self._check("policy_state")
        document = copy.deepcopy(self.policy_document)
        return {"revision": self.revision, "store_id": self.store_id, **document}

    async def watch(
        self, since: int = 0, timeout: float = 30.0, limit: int = 1000
    ) -> dict[str, Any]:
        self._check("watch")
        if not self.script:
            await asyncio.sleep(min(timeout, 0.05))
            return {"revision": max(since, self.revision), "store_id": self.store_id, "changes": []}
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return dict(step)


class FakeRouteTable:
    """The agent's routing table in memory; ``refuse(n)`` fails the next n ``apply`` calls
    as the kernel would (OSError), and ``routes`` is what the table holds."""

    def __init__(self) -> None:
        self.routes: dict[str, KernelRoute] = {}
        self.rules: tuple[str, ...] = ()
        self._refusals = 0
        self.applied = 0

    def refuse(self, times: int = 1) -> None:
        self._refusals += times

    def ensure_rules(self, networks: Sequence[str], priority: int = 1000) -> None:
        self.rules = tuple(networks)

    def dump(self) -> dict[str, KernelRoute]:
        return dict(self.routes)

    def apply(self, diff: RouteDiff) -> ApplyResult:
        if self._refusals:
            self._refusals -= 1
            raise OSError(errno.EIO, "injected: the kernel refused")
        self.applied += 1
        for route in diff.delete:
            self.routes.pop(route.prefix, None)
        for route in (*diff.replace, *diff.add):
            self.routes[route.prefix] = route
        failures: tuple[RouteFailure, ...] = ()
        return ApplyResult(len(diff.add), len(diff.replace), len(diff.delete), failures)

    def close(self) -> None:
        pass


class FakeNftTable:
    """The policy table in memory: ``loaded`` is what the kernel would hold; ``refuse(n)``
    makes the next n loads fail as nft would (the table keeps what it had)."""

    def __init__(self) -> None:
        self.loaded: Ruleset | None = None
        self.refusals = 0

    def refuse(self, times: int = 1) -> None:
        self.refusals += times

    def load(self, ruleset: Ruleset) -> Loaded:
        if self.refusals:
            self.refusals -= 1
            raise PolicyError("injected: nft refused the ruleset")
        script = None if self.loaded is None else render_update(self.loaded, ruleset)
        kind = "none" if script == "" else ("update" if script else "full")
        self.loaded = ruleset
        return Loaded(kind, 0.0, 0)

    def accepts(self, script: str) -> str | None:
        return None if not self.refusals else "injected: refused"
