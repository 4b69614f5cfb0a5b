"""The store contract: a durable, ordered log of facts plus snapshots.

The engine owns every decision; a store only keeps what the engine decided, in order, so
the same state can be rebuilt after a restart (``load``) or followed by a replica
(``read_since``). :class:`Store` is everything romanad (:mod:`romana.api.service`) uses
of a store; :class:`SharedStore` adds what replicas sharing one store need. The log is
small enough that SQLite (one row per fact) and etcd (one key per append, a transaction
comparing the head) implement it alike. The maintenance members (``sync_marker``,
``checkpoint``, ``describe``) have defaults that do nothing, for a store that inherits
:class:`Store` and has nothing to maintain.

Revisions are the engine's: fact number ``n`` of the whole history is revision ``n``,
so a snapshot taken at engine revision ``r`` is followed by fact ``r + 1``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

# The store's errors are part of the one tree; re-exported for the stores' callers.
from romana.errors import Compacted, RevisionConflict, StoreError, StoreLocked

__all__ = [
    "DAMAGE_FIX",
    "Compacted",
    "FactJson",
    "RevisionConflict",
    "SharedStore",
    "Store",
    "StoreError",
    "StoreLocked",
]

FactJson = dict[str, Any]

# What to do about a StoreDamaged, whichever store or reader found the damage.
DAMAGE_FIX = (
    "run `romana store check DATA_DIR` for every problem; restore the data "
    "directory from a backup (`romana store restore`)"
)


@runtime_checkable
class Store(Protocol):
    """What ``romanad`` needs from persistence; all methods are safe to call from threads."""

    store_id: str  # made once, kept for the store's life: clients refuse another store's feed
    shared: bool  # other romanad replicas may append too (see SharedStore)

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

    # -- maintenance: romanad calls these now and then; by default they do nothing --------
    def sync_marker(self, head: int | None = None) -> bool:
        """Record ``head`` (default: the head) as durable outside the log, where a log
        that lost its tail is detected at the next start; returns whether it wrote."""
        return False

    def checkpoint(self) -> None:
        """Fold what the store accumulates beside the log (SQLite's write-ahead log,
        etcd's history) back; romanad calls it every ``--checkpoint-every`` seconds."""
        return None  # more than a docstring: mypy takes a docstring-only body as abstract

    def describe(self) -> dict[str, Any]:
        """What ``/healthz`` and ``/version`` say about the store (``kind`` at least)."""
        return {"kind": type(self).__name__}


@runtime_checkable
class SharedStore(Store, Protocol):
    """A store several romanad replicas append to (etcd): the head comparison of
    :meth:`append` orders their writes, and each one watches the head for the others'."""

    shared: Literal[True]

    def watch_head(self) -> AsyncIterator[int]:
        """The head's new values as other writers move it, for as long as the caller
        iterates; it may skip values (the caller reads the facts between)."""
        ...
