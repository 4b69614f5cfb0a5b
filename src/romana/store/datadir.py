"""A romanad data directory: its lock (one writer process) and its ``store.json`` marker.

The marker records the store's id and the newest revision known to be durable, outside
the database, so that a database that comes back empty, shorter or replaced is noticed at
open (see :mod:`romana.store.sqlite`). Written atomically: temporary file, fsync, rename,
fsync of the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from romana.errors import StoreDamaged, StoreError, StoreLocked, StoreRewound

DB_NAME = "romana.db"
LOCK_NAME = "lock"
MARKER_NAME = "store.json"
MARKER_FORMAT = "romana-store"


def read_marker(data_dir: Path) -> dict[str, Any] | None:
    """``store.json`` of ``data_dir`` (None if there is none); a damaged one is an error."""
    path = data_dir / MARKER_NAME
    try:
        marker = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreDamaged(
            f"{path} cannot be read: {exc}",
            ["restore it from a backup, or start with --accept-data-loss"],
        ) from exc
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        raise StoreDamaged(
            f"{path} is not a Romana store marker",
            ["restore it from a backup, or start with --accept-data-loss"],
        )
    return marker


def write_marker(data_dir: Path, store_id: str, head: int) -> None:
    path = data_dir / MARKER_NAME
    tmp = path.with_name(f".{MARKER_NAME}.tmp")
    body = json.dumps(
        {
            "format": MARKER_FORMAT,
            "store_id": store_id,
            "head": head,
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        separators=(",", ":"),
    )
    with open(tmp, "w") as f:
        f.write(body + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(data_dir)


def check_against_marker(
    data_dir: Path, marker: dict[str, Any], store_id: str | None, head: int
) -> None:
    fix = [
        "restore the data directory from a backup (romana store restore), or start "
        "romanad with --accept-data-loss to take the database as it is"
    ]
    expected, recorded = marker.get("store_id"), int(marker.get("head", 0))
    if store_id is None and head == 0 and recorded > 0:
        raise StoreRewound(
            f"{data_dir / DB_NAME} holds nothing, but {data_dir / MARKER_NAME} records store "
            f"{expected} at revision {recorded}: the database was deleted, emptied or lost",
            fix,
        )
    if store_id is not None and store_id != expected:
        raise StoreRewound(
            f"{data_dir / DB_NAME} is store {store_id}, but {data_dir / MARKER_NAME} records "
            f"store {expected}: another database was put in place",
            fix,
        )
    if head < recorded:
        raise StoreRewound(
            f"{data_dir / DB_NAME} ends at revision {head}, but {data_dir / MARKER_NAME} "
            f"recorded revision {recorded} as durable: {recorded - head} fact(s) were lost "
            "(a write-ahead log deleted after a crash?)",
            fix,
        )


def acquire_lock(data_dir: Path) -> int:
    """Create ``data_dir`` (0700) and lock it for this process, recording our PID."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot use data directory {data_dir}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreLocked(
            f"data directory {data_dir} is in use by another process (pid {holder})",
            ["is another romanad running on it? stop it, or give this one another data dir"],
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StoreError(f"cannot lock {data_dir / LOCK_NAME}: {exc.strerror}") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def release_lock(fd: int) -> None:
    # Closing the descriptor drops the flock; the stale PID left behind is harmless.
    with contextlib.suppress(OSError):
        os.close(fd)
