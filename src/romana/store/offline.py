"""Working on a data directory from outside romanad: check it, back it up, restore it.

These open ``romana.db`` read-only and take no lock, so ``check`` and ``backup`` run beside
a live romanad (SQLite's WAL gives a consistent view of one instant). ``restore`` writes a
data directory and refuses one that a romanad holds.

Checking replays the store through the engine; the store package knows no engine, so the
caller passes the replay in (:func:`romana.ipam.replay.hosts_and_addresses`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from romana.errors import RomanaError, StoreDamaged, StoreError, StoreLocked
from romana.store.datadir import (
    DB_NAME,
    MARKER_NAME,
    acquire_lock,
    read_marker,
    release_lock,
)
from romana.store.sqlite import _HEAD_SQL, copy_database

# The newest snapshot, the facts after it and where they are from, replayed: the hosts and
# addresses of the state they describe, or StoreDamaged naming the first damage.
Replay = Callable[[dict[str, Any] | None, list[tuple[int, Any]], str], tuple[int, int]]


@dataclass(slots=True)
class CheckReport:
    data_dir: str
    problems: list[str] = field(default_factory=list)
    facts: str = ""
    store_id: str | None = None
    head: int = 0
    snapshot: int | None = None
    hosts: int = 0
    addresses: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "ok": self.ok,
            "problems": self.problems,
            "store_id": self.store_id,
            "head": self.head,
            "snapshot": self.snapshot,
            "facts": self.facts,
            "hosts": self.hosts,
            "addresses": self.addresses,
        }


def _open_read_only(data_dir: Path) -> sqlite3.Connection:
    path = data_dir / DB_NAME
    if not path.is_file():
        raise StoreError(f"{path} does not exist", ["give romanad's --data-dir"])
    try:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc


def check(data_dir: Path, replay: Replay) -> CheckReport:
    """Everything that can be verified without romanad: the database's integrity, its id
    and head against ``store.json``, every snapshot and fact read back and ``replay``ed."""
    report = CheckReport(str(data_dir))
    try:
        conn = _open_read_only(data_dir)
    except StoreError as exc:
        report.problems.append(exc.message)
        return report
    try:
        _check_database(conn, data_dir, report, replay)
    except sqlite3.Error as exc:
        report.problems.append(f"{data_dir / DB_NAME}: {exc}")
    finally:
        conn.close()
    return report


def _check_database(
    conn: sqlite3.Connection, data_dir: Path, report: CheckReport, replay: Replay
) -> None:
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    if integrity != "ok":
        report.problems.append(f"SQLite integrity check: {integrity}")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    for table in ("meta", "facts", "snapshots"):
        if table not in tables:
            report.problems.append(f"table {table} is missing")
    if report.problems:
        return
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    report.store_id = meta.get("store_id")
    report.head = int(conn.execute(_HEAD_SQL).fetchone()[0])
    try:
        marker = read_marker(data_dir)
    except StoreDamaged as exc:
        report.problems.append(exc.message)
        marker = None
    if marker is None:
        report.problems.append(
            f"{data_dir / MARKER_NAME} is missing: romanad writes it at "
            "start; without it a lost database goes unnoticed"
        )
    else:
        if marker.get("store_id") != report.store_id:
            report.problems.append(
                f"the database is store {report.store_id}, "
                f"{MARKER_NAME} records {marker.get('store_id')}"
            )
        if report.head < int(marker.get("head", 0)):
            report.problems.append(
                f"the database ends at revision {report.head}, "
                f"{MARKER_NAME} recorded {marker.get('head')} as durable"
            )
    row = conn.execute(
        "SELECT revision, data FROM snapshots ORDER BY revision DESC LIMIT 1"
    ).fetchone()
    snapshot = None
    if row is not None:
        report.snapshot = row[0]
        try:
            snapshot = json.loads(row[1])
        except ValueError as exc:
            report.problems.append(f"the snapshot at revision {row[0]} is not JSON: {exc}")
            return
    after = row[0] if row is not None else 0
    facts: list[tuple[int, Any]] = []
    expected = after + 1
    for revision, text in conn.execute(
        "SELECT revision, fact FROM facts WHERE revision > ? ORDER BY revision", (after,)
    ):
        if revision != expected:
            report.problems.append(f"revisions {expected}..{revision - 1} are missing")
        expected = revision + 1
        try:
            facts.append((revision, json.loads(text)))
        except ValueError as exc:
            report.problems.append(f"fact {revision} is not JSON: {exc}")
            return
    report.facts = f"{after + 1}..{expected - 1}" if facts else "none after the snapshot"
    try:
        report.hosts, report.addresses = replay(snapshot, facts, str(data_dir))
    except StoreDamaged as exc:
        report.problems.append(exc.message)


def backup(data_dir: Path, dest: Path) -> int:
    """Copy the store into ``dest`` (a new directory); returns the revision copied."""
    conn = _open_read_only(data_dir)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        store_id = meta.get("store_id")
        if store_id is None:
            raise StoreError(f"{data_dir / DB_NAME} has no store id: start romanad on it once")
        conn.execute("BEGIN")  # one read transaction: head and copy of the same instant
        head = int(conn.execute(_HEAD_SQL).fetchone()[0])
        copied = copy_database(conn, dest, store_id, head)
        conn.execute("COMMIT")
        return copied
    except sqlite3.Error as exc:
        raise StoreError(f"backup of {data_dir} failed: {exc}") from exc
    finally:
        conn.close()


def restore(backup_dir: Path, data_dir: Path, replay: Replay) -> int:
    """Make ``data_dir`` the store in ``backup_dir``; returns its head. The backup is
    checked first (:func:`check`); a data directory romanad holds is refused (stop it
    first). The old contents are kept beside it as ``DATA_DIR.replaced-<revision>``."""
    report = check(backup_dir, replay)
    if not report.ok:
        raise StoreDamaged(f"backup {backup_dir} does not check out: " + "; ".join(report.problems))
    if data_dir.exists():
        try:
            fd = acquire_lock(data_dir)
        except StoreLocked as exc:
            raise StoreLocked(exc.message, ["stop romanad before restoring"]) from None
        release_lock(fd)
        aside = data_dir.with_name(f"{data_dir.name}.replaced-{_head_of(data_dir)}")
        try:
            data_dir.rename(aside)
        except OSError as exc:
            raise RomanaError(f"cannot move {data_dir} aside: {exc.strerror}") from exc
    data_dir.mkdir(mode=0o700, parents=True)
    for name in (DB_NAME, MARKER_NAME):
        shutil.copy2(backup_dir / name, data_dir / name)
    return report.head


def _head_of(data_dir: Path) -> int:
    marker = None
    with contextlib.suppress(StoreDamaged):
        marker = read_marker(data_dir)
    return int((marker or {}).get("head", 0))
