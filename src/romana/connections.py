"""Connection hygiene for Romana's HTTP servers: a header timeout and a connection cap.

uvicorn arms its keep-alive timer only after a response, so a connection that never sends
a request, or sends its headers a byte at a time, is held forever; about a thousand of
them exhaust the usual 1,024 descriptors, after which every ``accept()`` fails and the
loop spins writing errors. Here each connection must finish its request headers within
``header_timeout`` seconds of connecting (or of the previous response), in at most 64 KiB
(httptools would buffer an endless header), and its body within ``body_timeout`` more;
at most ``max_connections`` are open at once: one more is answered ``503`` and closed.
The process's descriptor limit is raised to what the cap needs, when the hard limit
allows, and the cap lowered otherwise, so accepting never runs out of descriptors.
Long polls, which hold a connection for long, get a smaller budget of their own
(:func:`watch_budget`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("romana.connections")

DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0  # for the body once the head is in (bodies are 1 MiB at most)
MAX_HEAD = 64 << 10  # request line and headers; romana's clients send well under 1 KiB
SPARE_DESCRIPTORS = 128  # the store, log files, netlink and BIRD sockets, threads...
MIN_RESERVED = 32  # connections long polls never take (see watch_budget)
_REFUSAL_BODY = (
    b'{"error": {"code": "unavailable", "message": "too many connections", "details": []}}'
)
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"connection: close\r\ncontent-length: 0\r\n\r\n"
)
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


def watch_budget(connections: int, wanted: int) -> int:
    """How many long polls may wait at once: ``wanted``, but leaving a quarter of the
    ``connections`` (at least 32) to everything else, so that writes and the liveness
    probe are served however many watchers come (see :mod:`romana.api.watches`)."""
    reserved = max(MIN_RESERVED, connections // 4)
    allowed = max(1, min(wanted, connections - reserved))
    if allowed < wanted:
        log.warning(
            "watch limit too close to the connection limit; lowered",
            extra={"wanted": wanted, "allowed": allowed, "connections": connections},
        )
    return allowed


def descriptor_budget(wanted: int) -> int:
    """Raise the open-file limit towards ``wanted`` + spares; the connections it allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + SPARE_DESCRIPTORS
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    allowed = max(16, min(wanted, soft - SPARE_DESCRIPTORS))
    if allowed < wanted:
        log.warning(
            "open-file limit too low for the connection limit; lowered",
            extra={"wanted": wanted, "allowed": allowed, "nofile": soft},
        )
    return allowed


class _Refusals:
    """Counts refused connections; logs at most one line per interval (floods stay small)."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._since = 0
        self._last = 0.0

    def refused(self, open_now: int) -> None:
        self._since += 1
        now = time.monotonic()
        if now - self._last >= self.interval:
            log.warning(
                "connection limit reached: refusing new connections",
                extra={"open": open_now, "refused": self._since},
            )
            self._last, self._since = now, 0


def guarded_http(
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the header timeout and the connection cap."""
    refusals = _Refusals()

    class GuardedHttp(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None
        _head_bytes = 0  # bytes of the current request's head received so far
        _in_head = True
        _message_done = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                refusals.refused(len(self.connections))
                transport.write(_REFUSAL)
                transport.close()
                return
            self._arm(header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            in_head = self._in_head
            super().data_received(data)
            # Counted only while the head is still incomplete after this chunk (a chunk that
            # finishes the head may carry body bytes): httptools buffers an unfinished
            # header without limit.
            if in_head and self._in_head and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD:
                    self.transport.write(_TOO_LARGE)
                    self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._message_done = False

        def on_headers_complete(self) -> None:
            self._in_head, self._head_bytes = False, 0
            self._arm(body_timeout)  # the body (1 MiB at most) has its own deadline
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._message_done = True
            self._disarm()  # the request is in: the handler takes what it takes
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # The next request's head gets the same time, counted from now.
            self._in_head = True
            if not self.transport.is_closing():
                self._arm(header_timeout)

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _too_slow(self) -> None:
            """A head or body that did not arrive in time: the connection goes."""
            self._timer = None
            if not self._message_done or self.cycle is None or self.cycle.response_complete:
                self.transport.close()

    return GuardedHttp
