"""The store interface: a durable, ordered log of facts plus snapshots.

The engine owns every decision; a store only keeps what the engine decided, in order, so
the same state can be rebuilt after a restart (``load``) or followed by a replica
(``read_since``). The interface is deliberately tiny so a store over etcd (one key per
revision, a transaction comparing the head) can implement it as easily as SQLite.

Revisions are the engine's: fact number ``n`` of the whole history is revision ``n``,
so a snapshot taken at engine revision ``r`` is followed by fact ``r + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from romana.errors import Conflict, RomanaError

FactJson = dict[str, Any]


@runtime_checkable
class Store(Protocol):
    """What ``romanad`` needs from persistence; all methods are safe to call from threads."""

    def load(self) -> tuple[dict[str, Any] | None, list[tuple[int, FactJson]]]:
        """The newest snapshot (or None) and every fact after it, in revision order."""
        ...

    def append(self, facts: Sequence[FactJson], expected_revision: int) -> int:
        """Append ``facts`` as revisions ``expected_revision + 1 ...``; returns the new head.

        All or nothing, and durable before returning, so an acknowledged change survives a
        crash. Raises :class:`RevisionConflict` if the head is not ``expected_revision``.
        """
        ...

    def read_since(self, revision: int, limit: int | None = None) -> list[tuple[int, FactJson]]:
        """Facts after ``revision`` in order; :class:`Compacted` if some were deleted."""
        ...

    def head(self) -> int:
        """The revision of the newest fact (0 for an empty log)."""
        ...

    def save_snapshot(self, revision: int, snapshot: dict[str, Any]) -> None:
        """Durably keep the state as of ``revision`` (which must not be past the head)."""
        ...

    def compact(self, before_revision: int) -> int:
        """Delete facts up to ``before_revision`` that a snapshot covers; returns how many."""
        ...

    def close(self) -> None:
        """Release the store (and its lock); further calls raise :class:`StoreError`."""
        ...


class StoreError(RomanaError):
    """Persistence failed or is unusable; the change was not made (HTTP 503)."""

    code = "store"
    http_status = 503


class RevisionConflict(StoreError, Conflict):
    """The log moved on since the writer last looked; nothing was written.

    It means two writers raced (which the data-dir lock should make impossible) or the
    caller's view is stale; the fix is to reload, never to retry blindly.
    """

    code = "conflict"
    http_status = 409

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(
            f"log head is at revision {actual}, not the expected {expected}; nothing was written",
            ["another writer appended first or this view is stale: reload and retry"],
        )
        self.expected = expected
        self.actual = actual


class Compacted(StoreError):
    """The facts a reader asked for were compacted away; it must resync from a snapshot.

    ``oldest_available`` is the oldest revision still stored (head + 1 when no fact is), so
    ``read_since(oldest_available - 1)`` is the earliest call that can succeed.
    """

    code = "resync"
    http_status = 410

    def __init__(self, revision: int, oldest_available: int) -> None:
        super().__init__(
            f"facts after revision {revision} were compacted; the oldest kept is revision "
            f"{oldest_available}",
            ["load the latest snapshot and follow the log from its revision"],
        )
        self.revision = revision
        self.oldest_available = oldest_available


class StoreLocked(StoreError):
    """Another process holds the data directory: two daemons must never share one log."""

    code = "locked"
    http_status = 503
