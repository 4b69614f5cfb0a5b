"""The long-poll budget: how many ``GET /watch`` requests may wait at once.

A long poll holds its connection for up to its timeout (30 s by default, 300 at most) and
needs no token. Counted only against the connection limit, 1,000 of them made romanad
answer 503 to every write and to ``/healthz`` (whose liveness probe would then restart a
healthy romanad). So watches have a budget of their own, smaller than the connection
limit (:func:`romana.connections.watch_budget` keeps connections in reserve): past it, a
watch is answered at once with 503 ``unavailable``, ``Retry-After`` and ``Connection:
close``, so a refused watcher holds neither a wait nor a connection. Romana's followers
(agents, publishers) take any 503 as "romanad busy or away" and retry with backoff.

A watch whose client went away stops waiting at once (its place is free for another),
instead of waiting out its timeout for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from typing import TypeVar

from starlette.requests import Request

from romana.errors import Unavailable

T = TypeVar("T")
RETRY_AFTER = 5  # seconds a refused watcher is asked to wait
DEFAULT_LIMIT = 3000  # romanad --max-watches: ~1,000 nodes (docs/romanad.md)


class WatchBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0  # since start

    def refusal(self) -> Unavailable | None:
        """The answer to one more watch when the budget is spent (counted), else None."""
        if self.open < self.limit:
            return None
        self.refused += 1
        return Unavailable(
            f"{self.open} watches are open, as many as romanad serves at once (--max-watches)",
            [f"watch again in {RETRY_AFTER} s, or raise --max-watches"],
        )

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """One place taken while the block runs (after :meth:`refusal` said None)."""
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1

    def to_json(self) -> dict[str, int]:
        return {"open": self.open, "limit": self.limit, "refused": self.refused}


async def unless_gone(request: Request, answer: Awaitable[T]) -> T | None:
    """``answer``, or None as soon as the client disconnects (the answer is abandoned)."""
    waiting = asyncio.ensure_future(answer)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not waiting.done():
            waiting.cancel()
    if waiting.done() and not waiting.cancelled():
        return waiting.result()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting  # unwinds at once: it waited on a condition or a thread's answer
    return None


async def _disconnected(request: Request) -> None:
    # The request (a GET, its body read already) has nothing more to deliver: the next
    # message the server gives is the client's disconnection.
    while (await request.receive())["type"] != "http.disconnect":
        pass
