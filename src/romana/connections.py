"""Connection hygiene for Romana's HTTP servers: a header timeout and a connection cap.

uvicorn arms its keep-alive timer only after a response, so a connection that never sends
a request, or sends its headers a byte at a time, is held forever; about a thousand of
them exhaust the usual 1,024 descriptors, after which every ``accept()`` fails and the
loop spins writing errors. Here each connection must finish its request headers within
``header_timeout`` seconds of connecting (or of the previous response), and at most
``max_connections`` are open at once: one more is answered ``503`` and closed at once.
The process's descriptor limit is raised to what the cap needs, when the hard limit
allows, and the cap lowered otherwise, so accepting never runs out of descriptors.
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
SPARE_DESCRIPTORS = 128  # the store, log files, netlink and BIRD sockets, threads...
_REFUSAL_BODY = (
    b'{"error": {"code": "unavailable", "message": "too many connections", "details": []}}'
)
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


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
        self.count = 0
        self._since = 0
        self._last = 0.0

    def refused(self, open_now: int) -> None:
        self.count += 1
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
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the header timeout and the connection cap."""
    refusals = _Refusals()

    class GuardedHttp(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                refusals.refused(len(self.connections))
                transport.write(_REFUSAL)
                transport.close()
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # The next request's headers get the same time, counted from now.
            if not self.transport.is_closing():
                self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

    return GuardedHttp
