"""The embedded store: one SQLite database in the daemon's data directory.

Why SQLite: a single-node ``romanad`` needs atomic, fsynced appends and nothing to
operate. WAL mode with ``synchronous=FULL`` makes every commit durable with one fsync of
the write-ahead log, and readers never wait for the writer. ``checkpoint`` moves the log
into the database file now and then (romanad does it every few seconds), so a copy of
``romana.db`` alone is nearly current; ``backup`` makes an exact one while romanad runs.

No silent loss. Every store has an id, kept in the database and, with the newest revision
known to be durable, in ``DATA_DIR/store.json`` (rewritten atomically every second or so
while the log grows, and at close). At open, a database that is empty, shorter than the
marker, or another store's (a 0-byte file, a WAL deleted after a crash, a dropped table, a
copied-in file) is refused with :class:`~romana.errors.StoreRewound` instead of starting
over at revision 0 under agents that followed the old log; ``accept_loss=True`` (romanad
``--accept-data-loss``) takes the database as it is and rewrites the marker. A loss
confined to the last second before the marker was rewritten is the one that can go
unnoticed here; consumers also refuse a feed that goes back in time.

Threads: one *write* connection (appends, snapshots, compaction) and one *read*
connection, each used under its own lock (``check_same_thread=False``). Readers therefore
never queue behind a writer's fsync; each read runs in one read transaction, so it sees a
consistent log even while a compaction commits.

Processes: an exclusive ``flock`` on ``DATA_DIR/lock`` makes this process the only writer;
a second daemon on the same directory fails at open with :class:`StoreLocked`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from romana.errors import (
    Compacted,
    RevisionConflict,
    StoreDamaged,
    StoreError,
)
from romana.store.base import DAMAGE_FIX, FactJson, Store
from romana.store.datadir import (
    DB_NAME,
    MARKER_NAME,
    acquire_lock,
    check_against_marker,
    fsync_dir,
    read_marker,
    release_lock,
    write_marker,
)

SCHEMA_VERSION = 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS facts (revision INTEGER PRIMARY KEY, fact TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS snapshots (revision INTEGER PRIMARY KEY, data TEXT NOT NULL)",
)
# The head is the newest fact, or the newest snapshot once compaction has removed every
# fact (compaction never deletes past the newest snapshot, and snapshots are never ahead
# of the log, so this is exact). Both lookups are primary-key seeks.
_HEAD_SQL = (
    "SELECT max(coalesce((SELECT max(revision) FROM facts), 0),"
    " coalesce((SELECT max(revision) FROM snapshots), 0))"
)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


class SqliteStore(Store):
    """A :class:`~romana.store.base.Store` in ``data_dir/romana.db``, locked to this process."""

    shared = False  # one romanad: the lock on the data directory keeps others out

    def __init__(self, data_dir: Path | str, accept_loss: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.marker = self.data_dir / MARKER_NAME
        self._closed = True
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._marked = -1
        self._lock_fd = acquire_lock(self.data_dir)
        try:
            self._writer = self._connect()
            self.store_id = self._migrate(accept_loss)
            self._reader = self._connect()
            fsync_dir(self.data_dir)  # the new database file's name must survive a crash too
            self._closed = False
            self.checkpoint()  # the schema and the store id belong in the database file
            self.sync_marker()
        except BaseException:
            self._closed = True
            for name in ("_reader", "_writer"):
                conn = getattr(self, name, None)
                if conn is not None:
                    conn.close()
            release_lock(self._lock_fd)
            raise

    def describe(self) -> dict[str, Any]:
        """What /healthz and /version say about the store (reads are open: no path)."""
        return {"kind": "sqlite"}

    # -- opening --------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: transactions are exactly the BEGIN/COMMIT issued here.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        return conn

    def _migrate(self, accept_loss: bool) -> str:
        """Create the schema (or refuse one from a newer Romana) and check the database is
        the one ``store.json`` describes; returns the store id."""
        marker = read_marker(self.data_dir)
        try:
            with self._transaction(self._writer, "BEGIN IMMEDIATE"):
                for statement in _SCHEMA:
                    self._writer.execute(statement)
                meta = dict(self._writer.execute("SELECT key, value FROM meta").fetchall())
                version = int(meta.get("schema_version", SCHEMA_VERSION))
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path} has schema version {version}, newer than the "
                        f"{SCHEMA_VERSION} this build understands",
                        ["run the Romana release that wrote it, or a newer one"],
                    )
                store_id = meta.get("store_id")
                head = int(self._writer.execute(_HEAD_SQL).fetchone()[0])
                if marker is not None and not accept_loss:
                    check_against_marker(self.data_dir, marker, store_id, head)
                if store_id is None or (marker is not None and accept_loss):
                    store_id = store_id or (marker or {}).get("store_id") or uuid.uuid4().hex
                    self._writer.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('store_id', ?)", (store_id,)
                    )
                self._writer.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(version),)
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot initialise {self.path}: {exc}") from exc
        return str(store_id)

    # -- keeping the store's identity and head outside the database -----------------
    def sync_marker(self, head: int | None = None) -> bool:
        """Record the store id and ``head`` (default: the durable head) in ``store.json``
        if it moved; returns whether it was written. Atomic: tmp file, fsync, rename."""
        head = self.head() if head is None else head
        if head == self._marked:
            return False
        write_marker(self.data_dir, self.store_id, head)
        self._marked = head
        return True

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file (PASSIVE: never blocks readers)."""
        with self._writing() as conn:
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: checkpoint failed: {exc}") from exc

    def backup(self, dest: Path) -> int:
        """An exact copy in ``dest`` (a new directory): database and marker; returns its
        head. Runs beside appends (SQLite's online backup), consistent as of one instant."""
        with self._writing() as conn:
            head = int(conn.execute(_HEAD_SQL).fetchone()[0])
            return copy_database(conn, dest, self.store_id, head)

    # -- the Store interface --------------------------------------------------------
    def load(self) -> tuple[dict[str, Any] | None, list[tuple[int, FactJson]]]:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT revision, data FROM snapshots ORDER BY revision DESC LIMIT 1"
            ).fetchone()
            after = 0 if row is None else row[0]
            facts = _rows(
                conn.execute(
                    "SELECT revision, fact FROM facts WHERE revision > ? ORDER BY revision",
                    (after,),
                )
            )
        try:
            snapshot = None if row is None else json.loads(row[1])
        except ValueError as exc:
            raise StoreDamaged(
                f"{self.path}: the snapshot at revision {row[0]} is not JSON: {exc}", [DAMAGE_FIX]
            ) from exc
        # A gap would rebuild a wrong state silently; fail loudly instead.
        for expected, (revision, _) in enumerate(facts, start=after + 1):
            if revision != expected:
                raise StoreError(
                    f"{self.path} is damaged: revision {expected} is missing "
                    f"(next stored is {revision})"
                )
        return snapshot, facts

    def append(self, facts: Sequence[FactJson], expected_revision: int) -> int:
        # Serialise first: a bad fact fails the call before the database is touched.
        try:
            texts = [_dumps(f) for f in facts]
        except (TypeError, ValueError) as exc:
            raise StoreError(f"a fact cannot be stored as JSON: {exc}") from exc
        with self._writing() as conn, self._transaction(conn, "BEGIN IMMEDIATE"):
            head = conn.execute(_HEAD_SQL).fetchone()[0]
            if head != expected_revision:
                raise RevisionConflict(expected_revision, head)
            conn.executemany(
                "INSERT INTO facts (revision, fact) VALUES (?, ?)",
                zip(range(head + 1, head + 1 + len(texts)), texts, strict=True),
            )
        return expected_revision + len(texts)

    def read_since(self, revision: int, limit: int | None = None) -> list[tuple[int, FactJson]]:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        with self._reading() as conn:
            first = conn.execute("SELECT min(revision) FROM facts").fetchone()[0]
            if first is None:
                first = conn.execute(_HEAD_SQL).fetchone()[0] + 1
            if revision < first - 1:
                raise Compacted(revision, first)
            return _rows(
                conn.execute(
                    "SELECT revision, fact FROM facts WHERE revision > ? ORDER BY revision LIMIT ?",
                    (revision, -1 if limit is None else limit),
                )
            )

    def head(self) -> int:
        with self._reading() as conn:
            return int(conn.execute(_HEAD_SQL).fetchone()[0])

    def save_snapshot(self, revision: int, snapshot: dict[str, Any]) -> None:
        if snapshot.get("revision", revision) != revision:
            raise StoreError(
                f"snapshot says revision {snapshot['revision']}, but is being saved as {revision}"
            )
        data = _dumps(snapshot)
        with self._writing() as conn, self._transaction(conn, "BEGIN IMMEDIATE"):
            head = conn.execute(_HEAD_SQL).fetchone()[0]
            if not 0 <= revision <= head:
                raise StoreError(f"cannot snapshot revision {revision}: the log head is {head}")
            conn.execute(
                "INSERT OR REPLACE INTO snapshots (revision, data) VALUES (?, ?)", (revision, data)
            )

    def compact(self, before_revision: int) -> int:
        """Delete facts ``<= min(before_revision, newest snapshot)``; returns how many.

        Facts after the newest snapshot are always kept, so ``load`` still rebuilds the
        state; with no snapshot nothing is deleted. Snapshots older than the cut are
        deleted too: the facts that would follow them are gone, so they can rebuild nothing.
        """
        with self._writing() as conn, self._transaction(conn, "BEGIN IMMEDIATE"):
            newest = conn.execute("SELECT max(revision) FROM snapshots").fetchone()[0]
            if newest is None:
                return 0
            cut = min(before_revision, newest)
            deleted = conn.execute("DELETE FROM facts WHERE revision <= ?", (cut,)).rowcount
            conn.execute("DELETE FROM snapshots WHERE revision < ?", (cut,))
        return int(deleted)

    def close(self) -> None:
        """Close both connections, then release the data-dir lock; idempotent."""
        if self._closed:
            return
        with contextlib.suppress(StoreError, OSError):  # best effort: the log is durable
            self.checkpoint()
            self.sync_marker()
        with self._write_lock, self._read_lock:
            self._closed = True
            for conn in (self._reader, self._writer):
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            release_lock(self._lock_fd)

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            self._check_open()
            yield self._writer

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The read connection inside one read transaction: a consistent view of the log."""
        with self._read_lock:
            self._check_open()
            with self._transaction(self._reader, "BEGIN"):
                yield self._reader

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection, begin: str) -> Iterator[None]:
        """Commit if the block finishes, roll back on any exception (nothing half-written)."""
        try:
            conn.execute(begin)
            try:
                yield
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise StoreError(f"{self.path}: {exc}") from exc


def copy_database(conn: sqlite3.Connection, dest: Path, store_id: str, head: int) -> int:
    """Back ``conn``'s database up into ``dest/romana.db`` with its marker; returns head."""
    try:
        dest.mkdir(mode=0o700, parents=True, exist_ok=False)
    except OSError as exc:
        raise StoreError(
            f"cannot create backup directory {dest}: {exc.strerror}",
            ["give a directory that does not exist yet"],
        ) from exc
    target = sqlite3.connect(dest / DB_NAME)
    try:
        conn.backup(target)
        target.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as exc:
        raise StoreError(f"backup into {dest} failed: {exc}") from exc
    finally:
        target.close()
    write_marker(dest, store_id, head)
    return head


def _rows(cursor: sqlite3.Cursor) -> list[tuple[int, FactJson]]:
    rows = []
    for revision, text in cursor:
        try:
            rows.append((revision, json.loads(text)))
        except ValueError as exc:
            raise StoreDamaged(f"fact {revision} is not JSON: {exc}", [DAMAGE_FIX]) from exc
    return rows
