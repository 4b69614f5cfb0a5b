"""romanad's outermost layers: body limits, request ids, timing, and the catch-all 500;
with ``--auth-reads``, the token on reads too."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import os
import time
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from romana.api.metrics import Metrics
from romana.errors import Internal, RomanaError, TooLarge, Unauthorized

MAX_BODY = 1 << 20
# An oversized body is read and thrown away up to this much (and this long) before the 413:
# answering while the client still sends makes its next write fail with a reset, and it
# sees no answer at all. Past the cap the 413 goes out at once and the connection closes.
DRAIN_MAX = 8 * MAX_BODY
DRAIN_SECONDS = 5.0


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: text that UTF-8 cannot carry (a lone surrogate in a
    store from before the name rules) still makes a valid answer instead of a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            content, ensure_ascii=True, allow_nan=False, separators=(",", ":")
        ).encode()


log = logging.getLogger("romanad")


class LimitsAndTiming:
    """Refuses oversized bodies up front, times every request, names it (``x-request-id``)
    and answers anything unexpected with a JSON 500 whose id is in the log with its
    traceback (pure ASGI: cheap)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._requests = itertools.count(1)
        self._prefix = os.urandom(3).hex()  # tells restarts apart in logs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"{self._prefix}-{next(self._requests)}"
        started_response = False

        async def named(message: Message) -> None:
            nonlocal started_response
            if message["type"] == "http.response.start":
                started_response = True
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        started = time.perf_counter()
        try:
            too_large = TooLarge(f"request body over {MAX_BODY} bytes")
            for key, value in scope["headers"]:
                if key == b"content-length" and (not value.isdigit() or int(value) > MAX_BODY):
                    if value.isdigit() and int(value) <= DRAIN_MAX:
                        await _drain(receive, 0)
                    await _answer(too_large, scope, receive, named)
                    return
            body = await _read_body(receive)
            if body is None:
                await _drain(receive, MAX_BODY)
                await _answer(too_large, scope, receive, named)
                return
            await self.app(scope, _replay(body, receive), named)
        except Exception as exc:
            log.error(
                "unexpected error",
                exc_info=exc,
                extra={
                    "request_id": request_id,
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                },
            )
            if not started_response:
                await _answer(
                    Internal(
                        f"internal error (request {request_id}); romanad's log has the traceback",
                        [request_id],
                    ),
                    scope,
                    receive,
                    named,
                )
        finally:
            route = scope.get("route")
            self.metrics.observe(
                scope["method"], getattr(route, "path", "unmatched"), time.perf_counter() - started
            )


# Open to anyone who reaches romanad even with --auth-reads: kubelet's probes carry no
# token, and Prometheus scrapes without one by default; /metrics holds counts per group and
# network, never an address, a name of a pod or a policy (docs/security.md).
OPEN_WITHOUT_TOKEN = frozenset({"/healthz", "/readyz", "/metrics"})


class TokenForReads:
    """``romanad --auth-reads``: every request but :data:`OPEN_WITHOUT_TOKEN` needs
    ``Authorization: Bearer <token>`` (compared in constant time), reads included. Writes
    are checked again by the API's own dependency, which is what they always needed."""

    def __init__(
        self, app: ASGIApp, token: str, open_paths: frozenset[str] = OPEN_WITHOUT_TOKEN
    ) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            given = b""
            for key, value in scope["headers"]:
                if key == b"authorization":
                    given = value
                    break
            if not hmac.compare_digest(given, self.expected):
                await _answer(Unauthorized(), scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _answer(exc: RomanaError, scope: Scope, receive: Receive, send: Send) -> None:
    await AsciiJSONResponse(exc.to_json(), status_code=exc.status)(scope, receive, send)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, or None past MAX_BODY (Content-Length may be absent: chunked)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _drain(receive: Receive, already: int) -> None:
    """Read and discard the rest of a refused body, up to DRAIN_MAX bytes and DRAIN_SECONDS."""
    size = already
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            while size <= DRAIN_MAX:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                size += len(message.get("body", b""))


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # e.g. http.disconnect
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
