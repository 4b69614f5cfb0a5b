"""Persistence of ``romanad``: a durable fact log plus snapshots behind a small contract.

:class:`Store` is what the daemon depends on (:class:`SharedStore` when replicas share
it); :class:`SqliteStore` is the embedded implementation (one file in the data directory),
and :class:`~romana.store.etcd.EtcdStore` the shared one (``romanad --store etcd://...``).
"""

from romana.store.base import (
    Compacted,
    FactJson,
    RevisionConflict,
    SharedStore,
    Store,
    StoreError,
    StoreLocked,
)
from romana.store.sqlite import SqliteStore

__all__ = [
    "Compacted",
    "FactJson",
    "RevisionConflict",
    "SharedStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreLocked",
]
