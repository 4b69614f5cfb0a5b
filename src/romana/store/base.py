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

# The store's errors are part of the one tree; re-exported for the stores' callers.
from romana.errors import Compacted, RevisionConflict, StoreError, StoreLocked

__all__ = [
    "DAMAGE_FIX",
    "Compacted",
    "FactJson",
    "RevisionConflict",
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
