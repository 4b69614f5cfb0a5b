"""Persistence of ``romanad``: a durable fact log plus snapshots behind a tiny interface.

:class:`Store` is what the daemon depends on; :class:`SqliteStore` is the embedded
implementation (one file in the data directory), and an etcd store can follow later.
"""

from romana.store.base import (
    Compacted,
    FactJson,
    RevisionConflict,
    Store,
    StoreError,
    StoreLocked,
)
from romana.store.sqlite import SqliteStore

__all__ = [
    "Compacted",
    "FactJson",
    "RevisionConflict",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreLocked",
]
