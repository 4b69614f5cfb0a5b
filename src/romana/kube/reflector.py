"""List, then watch, one kind of object into a cache (what client-go calls a reflector).

- Start: a paged list (its resourceVersion is where the watch begins); every key that
  changed, appeared or vanished since the previous list is reported, so a re-list after a
  gap is a reconciliation, deletions included.
- Then one watch from that version, with bookmarks: each event updates the cache and the
  version (a BOOKMARK only the version), so a reconnect resumes where it left off.
- A watch that ends or breaks (connection cut, server error, 429) is resumed from the
  last version after a jittered backoff; 410 Gone (the history was compacted past it)
  is answered by a new list at once.
- An event of a type the protocol does not have, or an object of another kind than the
  one watched, is ignored (counted, logged once per type or kind): only a broken or
  hostile API server sends them, and neither may enter the cache.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.core.resource import NamespacedResource

from romana.backoff import Backoff
from romana.kube.connect import OtherKind, watch
from romana.supervise import Loop

log = logging.getLogger("romana.kube")
PAGE = 500
IGNORED_KINDS = 32  # distinct unknown types/kinds counted (and logged) on their own
Changed = Callable[[str, str], None]  # (kind, key): something about this key changed


def object_key(obj: Any) -> str:
    meta = obj.metadata
    return f"{meta.namespace}/{meta.name}" if meta.namespace else str(meta.name)


class Reflector:
    def __init__(
        self, client: AsyncClient, resource: Any, changed: Changed, backoff: Backoff | None = None
    ) -> None:
        self.client, self.resource, self.changed = client, resource, changed
        self.kind = str(resource.__name__)
        # Every namespace ("*"); lightkube would otherwise use the configuration's own.
        self.namespace = "*" if issubclass(resource, NamespacedResource) else None
        self.backoff = backoff or Backoff(0.2, 30.0)
        self.cache: dict[str, Any] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()
        self.lists = self.expired = self.broken = self.events = self.bookmarks = 0
        self.ignored: dict[str, int] = {}  # "type X" / "kind X" -> events ignored

    def to_json(self) -> dict[str, Any]:
        return {
            "objects": len(self.cache),
            "resource_version": self.resource_version,
            "synced": self.synced.is_set(),
            "lists": self.lists,
            "expired": self.expired,
            "broken_watches": self.broken,
            "events": self.events,
            "bookmarks": self.bookmarks,
            "ignored": dict(self.ignored),
        }

    async def run(self, loop: Loop) -> None:
        while True:
            try:
                if not self.resource_version:
                    await self._list()
                    loop.beat()
                await self._follow(loop)
            except ApiError as exc:
                if exc.status.code == 410:
                    self.expired += 1
                    log.info(
                        "watch history expired; listing again",
                        extra={"kind": self.kind, "resource_version": self.resource_version},
                    )
                    self.resource_version = ""
                    continue
                await self._pause(exc, loop)
            except (httpx2.HTTPError, OSError) as exc:
                await self._pause(exc, loop)

    async def _pause(self, exc: Exception, loop: Loop) -> None:
        self.broken += 1
        delay = self.backoff.next()
        log.warning(
            "watch failed; resuming",
            extra={
                "kind": self.kind,
                "error": f"{type(exc).__name__}: {exc}",
                "resource_version": self.resource_version,
                "retry_in": round(delay, 2),
            },
        )
        loop.beat()  # waiting out the API server is this loop's job, not a hang
        await asyncio.sleep(delay)

    async def _list(self) -> None:
        listing = self.client.list(self.resource, namespace=self.namespace, chunk_size=PAGE)
        fresh = {object_key(obj): obj async for obj in listing}
        version = listing.resourceVersion
        old, self.cache = self.cache, fresh
        self.resource_version = version
        self.lists += 1
        for key in old.keys() - fresh.keys():
            self.changed(self.kind, key)
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None or before.metadata.resourceVersion != obj.metadata.resourceVersion:
                self.changed(self.kind, key)
        self.synced.set()
        log.info(
            "listed",
            extra={"kind": self.kind, "objects": len(fresh), "resource_version": version},
        )

    async def _follow(self, loop: Loop) -> None:
        stream = watch(self.client, self.resource, self.namespace, self.resource_version)
        async for event, obj in stream:
            self.backoff.reset()
            loop.beat()
            if obj is None or isinstance(obj, OtherKind):
                self._ignore(f"type {event}" if obj is None else f"kind {obj.kind}")
                continue
            version = obj.metadata.resourceVersion
            if event == "BOOKMARK":
                self.bookmarks += 1
                self.resource_version = version
                continue
            self.events += 1
            key = object_key(obj)
            if event == "DELETED":
                self.cache.pop(key, None)
            else:
                self.cache[key] = obj
            self.resource_version = version
            self.changed(self.kind, key)

    def _ignore(self, what: str) -> None:
        if what not in self.ignored and len(self.ignored) >= IGNORED_KINDS:
            what = "other"  # a server inventing names must not grow this without bound
        seen = self.ignored.get(what, 0)
        self.ignored[what] = seen + 1
        if not seen:
            log.warning(
                "watch event ignored: the API server sent what no watch of this kind has",
                extra={"kind": self.kind, "ignored": what},
            )
