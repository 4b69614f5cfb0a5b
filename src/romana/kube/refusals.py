"""Objects romanad refused: each one is its own problem, never the others'.

A write romanad refuses with a 4xx (:class:`~romana.errors.InvalidRequest` such as a Node
in a zone the map lacks, :class:`~romana.errors.TooLarge`, :class:`~romana.errors.Conflict`,
:class:`~romana.errors.Exhausted`, ...) says something about that object: it is recorded
here (logged at error level and posted as a Warning Event on the object once per distinct
message, listed in ``/healthz``), and the sync goes on with the other objects. It is tried
again when the object changes and, quietly, at every full resync; it leaves the list once
a write succeeds or the object is gone.

Only errors that say romanad itself is away or broken (:func:`is_transient`) stop a
pass, which is then retried with backoff: retrying another object could not succeed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from romana.errors import (
    Conflict,
    Exhausted,
    Internal,
    InvalidRequest,
    NotFound,
    RomanaError,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger("romana.kube")

API_VERSIONS = {
    "Node": "v1",
    "Namespace": "v1",
    "Pod": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}
# The Event reason when romanad refuses a write about an object of this kind.
REFUSED = {
    "Node": "RomanaHostRefused",
    "Namespace": "RomanaTenantRefused",
    "Pod": "RomanaEndpointRefused",
    "NetworkPolicy": "RomanaPolicyRefused",
}
NOT_ENFORCED = "RomanaPolicyNotEnforced"  # a NetworkPolicy whose stand-in isolates instead


@dataclass(frozen=True, slots=True)
class Subject:
    """The Kubernetes object an Event is about."""

    kind: str
    name: str
    namespace: str | None = None
    uid: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


Warn = Callable[[Subject, str, str], None]  # (object, reason, message): a Warning Event


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # the Event reason
    message: str
    error: str  # romanad's error code, or what refused it locally
    fail_closed: bool = False  # a NetworkPolicy's isolating stand-in is enforced instead


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` says romanad is away, broken or not ours to use (unavailable,
    unreachable, an internal error, a wrong token, a 5xx or 429 that is not romanad's own
    answer): the whole pass waits. A refusal of one object (a 4xx about it) is not."""
    if isinstance(exc, Unavailable | Internal | Unauthorized):
        return True
    if isinstance(exc, InvalidRequest | NotFound | Conflict | Exhausted):
        return False
    return isinstance(exc, RomanaError) and (exc.status >= 500 or exc.status in (408, 429))


def refusal_of(kind: str, exc: BaseException) -> Refusal:
    if isinstance(exc, RomanaError):
        message = "; ".join([exc.message, *map(str, exc.details)])
        return Refusal(REFUSED[kind], message, exc.wire_code)
    # Not romanad's answer but a bug met on this object: it must not stop the others.
    log.error("unexpected error while syncing an object", exc_info=exc, extra={"kind": kind})
    return Refusal(REFUSED[kind], f"internal error: {type(exc).__name__}: {exc}", "internal")


@dataclass(frozen=True, slots=True)
class _Stuck:
    subject: Subject
    refusal: Refusal
    since: float  # wall clock


class Refusals:
    """The stuck objects, by (kind, key). Written by the sync's thread, read by /healthz's:
    every access holds the lock."""

    def __init__(self, warn: Warn) -> None:
        self.warn = warn
        self._lock = threading.Lock()
        self._stuck: dict[tuple[str, str], _Stuck] = {}

    def refused(self, subject: Subject, refusal: Refusal) -> None:
        """Record it; log and post an Event only when the message is new for the object."""
        where = (subject.kind, subject.key)
        with self._lock:
            before = self._stuck.get(where)
            since = before.since if before is not None else time.time()
            self._stuck[where] = _Stuck(subject, refusal, since)
        if before is not None and before.refusal.message == refusal.message:
            return  # said already; every resync tries again quietly
        log.error(
            "romanad refused an object; the others go on"
            if not refusal.fail_closed
            else "NetworkPolicy not enforced as written; its pods are isolated instead",
            extra={
                "kind": subject.kind,
                "object": subject.key,
                "reason": refusal.reason,
                "error": refusal.error,
                "why": refusal.message,
            },
        )
        self.warn(subject, refusal.reason, refusal.message)

    def cleared(self, kind: str, key: str) -> None:
        with self._lock:
            gone = self._stuck.pop((kind, key), None)
        if gone is not None:
            log.info("object accepted by romanad now", extra={"kind": kind, "object": key})

    def keep_only(self, kind: str, keys: Container[str]) -> None:
        """Forget the stuck objects of ``kind`` that are not in ``keys`` (gone)."""
        with self._lock:
            for where in [w for w in self._stuck if w[0] == kind and w[1] not in keys]:
                del self._stuck[where]

    def counts(self) -> dict[str, int]:
        with self._lock:
            stuck = list(self._stuck)
        return {kind: sum(1 for k, _ in stuck if k == kind) for kind in REFUSED}

    def to_json(self) -> list[dict[str, Any]]:
        with self._lock:
            stuck = sorted(self._stuck.items())
        return [
            {
                "kind": kind,
                "key": key,
                "reason": s.refusal.reason,
                "error": s.refusal.error,
                "message": s.refusal.message,
                "fail_closed": s.refusal.fail_closed,
                "since": datetime.fromtimestamp(s.since, UTC).isoformat(timespec="seconds"),
            }
            for (kind, key), s in stuck
        ]
