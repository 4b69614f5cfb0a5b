"""A :class:`~romana.store.base.SharedStore` in etcd (``romanad --store etcd://HOST:PORT,...``).

Keys under ``--etcd-prefix`` (default ``/romana``)::

    PREFIX/store_id              the store's id (made once; agents refuse another store's feed)
    PREFIX/head                  the revision of the newest fact, as decimal text
    PREFIX/log/<first:016d>      one append: {"first": n, "request": id, "facts": [...]}
    PREFIX/snapshot              {"revision", "id", "chunks", "sha256"} of the newest snapshot
    PREFIX/chunks/<id>/<i:06d>   its JSON text, in pieces under etcd's request limit

An append is one transaction: compare ``head`` with the expected revision, put the batch
and the new head (two operations, whatever the batch's size: etcd allows 128 per
transaction). The batch carries a request id, so when etcd's answer is lost the store
reads the head back and knows whether its append happened before anyone retries. A
snapshot's pieces are written first and the ``snapshot`` key last, so a crash midway
leaves the older snapshot in force; old pieces and covered batches are deleted after.
``checkpoint`` compacts etcd's own history (etcd 3.4 keeps every version by default).

Any number of romanad replicas share one prefix (``shared``): the head comparison puts
their appends in one order, ``watch_head`` tells each of the others' appends, and
``head`` is a quorum read (etcd's default, linearizable), which read-your-writes across
replicas rests on (see :mod:`romana.api.service`). Snapshots are written by whichever
replica gets there first; a snapshot older than the stored one is not written.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

from romana.errors import Compacted, OutcomeUnknown, RevisionConflict, StoreDamaged, StoreError
from romana.store.base import FactJson, SharedStore
from romana.store.etcd_client import EtcdClient, b64, prefix_end

CHUNK = 512 * 1024  # bytes of snapshot text per key: base64 keeps a put under 1.5 MiB
MAX_BATCH = 1024 * 1024  # bytes of one append: etcd refuses requests over 1.5 MiB
HISTORY_KEPT = 10_000  # etcd revisions kept when its history is compacted


def parse_url(url: str) -> list[str]:
    """``etcd://h1:2379,h2:2379`` (or ``etcds://`` for TLS) -> the endpoints' URLs."""
    parts = urlsplit(url)
    if parts.scheme not in ("etcd", "etcds") or not parts.netloc:
        raise ValueError(f"not an etcd store URL: {url!r} (etcd://HOST:PORT[,HOST:PORT...])")
    scheme = "https" if parts.scheme == "etcds" else "http"
    return [f"{scheme}://{hostport.strip()}" for hostport in parts.netloc.split(",")]


WATCH_FOR = 10.0  # seconds per watch request: then watched again on the current endpoint


class EtcdStore(SharedStore):
    shared: Literal[True] = True  # several romanad replicas may append to one prefix

    def __init__(self, client: EtcdClient, prefix: str = "/romana") -> None:
        self.client = client
        self.prefix = prefix.rstrip("/").encode()
        self._closed = False
        self.store_id = self._open()

    def _key(self, *parts: str) -> bytes:
        return self.prefix + b"/" + "/".join(parts).encode()

    def _log_key(self, first: int) -> bytes:
        return self._key("log", f"{first:016d}")

    def _open(self) -> str:
        """The store id, made with ``head = 0`` if this prefix holds no store yet."""
        made = uuid.uuid4().hex
        self.client.txn(
            [{"key": b64(self._key("store_id")), "target": "CREATE", "create_revision": "0"}],
            [
                {"request_put": {"key": b64(self._key("store_id")), "value": b64(made)}},
                {"request_put": {"key": b64(self._key("head")), "value": b64("0")}},
            ],
        )
        found = self.client.get(self._key("store_id"))
        if found is None:
            raise StoreError("etcd lost the store id just written")
        return found.value.decode()

    # -- the log -----------------------------------------------------------------------------
    def head(self) -> int:
        self._check_open()
        found = self.client.get(self._key("head"))
        if found is None:
            raise StoreDamaged(f"etcd prefix {self.prefix.decode()} has no head key")
        return int(found.value)

    def append(self, facts: Sequence[FactJson], expected_revision: int) -> int:
        self._check_open()
        if not facts:
            return expected_revision
        request = uuid.uuid4().hex
        try:
            batch = json.dumps(
                {"first": expected_revision + 1, "request": request, "facts": list(facts)},
                separators=(",", ":"),
                allow_nan=False,
            ).encode()
        except (TypeError, ValueError) as exc:
            raise StoreError(f"a fact cannot be stored as JSON: {exc}") from exc
        if len(batch) > MAX_BATCH:
            raise StoreError(f"an append of {len(batch)} bytes is over etcd's request limit")
        new_head = expected_revision + len(facts)
        head_key = self._key("head")
        compare = [{"key": b64(head_key), "target": "VALUE", "value": b64(str(expected_revision))}]
        success = [
            {
                "request_put": {
                    "key": b64(self._log_key(expected_revision + 1)),
                    "value": b64(batch),
                }
            },
            {"request_put": {"key": b64(head_key), "value": b64(str(new_head))}},
        ]
        try:
            done, _ = self.client.txn(compare, success)
        except OutcomeUnknown:
            try:
                landed = self._appended(expected_revision + 1, request)
            except StoreError as exc:  # cannot even check: still unknown
                raise OutcomeUnknown(f"{exc}; whether the append landed is unknown") from exc
            if landed:
                return new_head
            raise
        if not done:
            raise RevisionConflict(expected_revision, self.head())
        return new_head

    def _appended(self, first: int, request: str) -> bool:
        """Whether our batch (by request id) is the one stored at ``first``."""
        found = self.client.get(self._log_key(first))
        return found is not None and json.loads(found.value).get("request") == request

    def read_since(self, revision: int, limit: int | None = None) -> list[tuple[int, FactJson]]:
        self._check_open()
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        log = self._key("log", "")
        # The batch holding revision + 1 starts at or before it.
        start = self.client.range(
            log, self._log_key(revision + 1) + b"\0", limit=1, descending=True
        )
        if not start:  # nothing at or before revision + 1: compacted, or nothing after it
            oldest = self.client.range(log, prefix_end(log), limit=1)
            first = int(json.loads(oldest[0].value)["first"]) if oldest else self.head() + 1
            if first > revision + 1:
                raise Compacted(revision, first)
            return []
        out: list[tuple[int, FactJson]] = []
        # Every batch holds a fact after revision, so ``limit`` batches are enough.
        for kv in self.client.range(start[0].key, prefix_end(log), limit=limit or 0):
            batch = json.loads(kv.value)
            first = int(batch["first"])
            out += [(first + i, f) for i, f in enumerate(batch["facts"]) if first + i > revision]
        return out if limit is None else out[:limit]

    async def watch_head(self) -> AsyncIterator[int]:
        """The head's new values as other writers move it, for as long as the caller
        iterates (watched again every WATCH_FOR s, so a member cut off from the others
        cannot keep the replica deaf; what happened between two watches is read by the
        caller's catch-up, not here)."""
        self._check_open()
        while True:
            async for kv in self.client.watch(self._key("head"), WATCH_FOR):
                yield int(kv.value)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "etcd",
            "endpoint": self.client.endpoint,
            "endpoints": list(self.client.endpoints),
            "prefix": self.prefix.decode(),
            "failovers": self.client.failovers,
        }

    def load(self) -> tuple[dict[str, Any] | None, list[tuple[int, FactJson]]]:
        self._check_open()
        for _ in range(2):  # another replica may swap the snapshot as we read it
            try:
                return self._load()
            except StoreDamaged:
                continue
        return self._load()

    def _load(self) -> tuple[dict[str, Any] | None, list[tuple[int, FactJson]]]:
        snapshot = self._snapshot()
        after = 0 if snapshot is None else int(snapshot["revision"])
        facts = self.read_since(after)
        for expected, (number, _) in enumerate(facts, start=after + 1):
            if number != expected:
                raise StoreDamaged(f"etcd log: revision {expected} is missing (next is {number})")
        return snapshot, facts

    # -- snapshots ---------------------------------------------------------------------------
    def _snapshot(self) -> dict[str, Any] | None:
        meta_kv = self.client.get(self._key("snapshot"))
        if meta_kv is None:
            return None
        meta = json.loads(meta_kv.value)
        base = self._key("chunks", meta["id"], "")
        pieces = self.client.range(base, prefix_end(base))
        text = b"".join(kv.value for kv in pieces)
        if len(pieces) != meta["chunks"] or hashlib.sha256(text).hexdigest() != meta["sha256"]:
            raise StoreDamaged(
                f"etcd snapshot at revision {meta['revision']} is incomplete or damaged"
            )
        return dict(json.loads(text))

    def save_snapshot(self, revision: int, snapshot: dict[str, Any]) -> None:
        self._check_open()
        if snapshot.get("revision", revision) != revision:
            raise StoreError(
                f"snapshot says revision {snapshot['revision']}, but is being saved as {revision}"
            )
        head = self.head()
        if not 0 <= revision <= head:
            raise StoreError(f"cannot snapshot revision {revision}: the log head is {head}")
        old = self.client.get(self._key("snapshot"))
        if old is not None and int(json.loads(old.value)["revision"]) >= revision:
            return  # another replica got there first
        text = json.dumps(snapshot, separators=(",", ":")).encode()
        ident = uuid.uuid4().hex
        pieces = [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)] or [b""]
        for i, piece in enumerate(pieces):
            self.client.put(self._key("chunks", ident, f"{i:06d}"), piece)
        meta = {"revision": revision, "id": ident, "chunks": len(pieces)}
        meta["sha256"] = hashlib.sha256(text).hexdigest()
        key = b64(self._key("snapshot"))
        # Switched only if nobody else switched it since we looked.
        unchanged = (
            {"key": key, "target": "MOD", "mod_revision": str(old.mod_revision)}
            if old is not None
            else {"key": key, "target": "CREATE", "create_revision": "0"}
        )
        done, _ = self.client.txn(
            [unchanged], [{"request_put": {"key": key, "value": b64(json.dumps(meta))}}]
        )
        ours = self._key("chunks", ident, "")
        if not done:
            self.client.delete_range(ours, prefix_end(ours))
            return
        if old is not None:
            stale = self._key("chunks", json.loads(old.value)["id"], "")
            self.client.delete_range(stale, prefix_end(stale))

    def compact(self, before_revision: int) -> int:
        """Delete batches wholly at or before ``min(before_revision, snapshot)``."""
        self._check_open()
        meta_kv = self.client.get(self._key("snapshot"))
        if meta_kv is None:
            return 0
        cut = min(before_revision, int(json.loads(meta_kv.value)["revision"]))
        log = self._key("log", "")
        keys = self.client.range(log, prefix_end(log), keys_only=True)
        firsts = [int(kv.key.rsplit(b"/", 1)[1]) for kv in keys]
        head = self.head()
        deleted = 0
        end = None
        for first, following in zip(firsts, [*firsts[1:], head + 1], strict=True):
            if following - 1 > cut:
                break
            end, deleted = following, deleted + (following - first)
        if end is not None:
            self.client.delete_range(log, self._log_key(end))
        return deleted

    # -- maintenance -------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Compact etcd's history, keeping the last HISTORY_KEPT revisions."""
        self._check_open()
        current = self.client.revision()
        if current > HISTORY_KEPT:
            self.client.compact_history(current - HISTORY_KEPT)

    def sync_marker(self, head: int | None = None) -> bool:
        return True  # the store id lives in etcd itself

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the etcd store is closed")


__all__ = ["EtcdStore", "parse_url"]
