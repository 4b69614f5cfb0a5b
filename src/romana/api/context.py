"""What romanad's handlers may ask for: the process's state, the writer, a durable engine.

Each router module declares its handlers at module level and takes what it needs through
these dependencies, so a handler's signature says what it touches:

- :data:`DurableEngine`, the engine inside :meth:`IpamService.durable_view` for the whole
  handler: the only way a read reaches IPAM state, so no GET can show memory that a crash
  could still take back (the view ends when the handler returns, before the answer is
  serialised);
- :data:`Writer`, the service after the bearer token is checked: every mutation goes through
  :meth:`IpamService.mutate`;
- :data:`State`, the rest (metrics, the watch budget, the build).
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import monotonic
from typing import Annotated, Any, cast

from fastapi import Depends, Query, Request
from fastapi.responses import Response

from romana.api.metrics import Metrics
from romana.api.middleware import AsciiJSONResponse
from romana.api.service import IpamService
from romana.api.watches import WatchBudget
from romana.buildinfo import BuildInfo
from romana.errors import Unauthorized
from romana.ipam import Engine
from romana.responses import ErrorBody


@dataclass(slots=True)
class Romanad:
    """One romanad's serving state, held in ``app.state.romanad`` by ``create_app``."""

    service: IpamService
    metrics: Metrics
    watches: WatchBudget
    token: str | None
    build: BuildInfo
    store_kind: str
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=monotonic)


# async: FastAPI runs a plain def dependency in a worker thread (~0.2 ms per request).
async def _romanad(request: Request) -> Romanad:
    return cast(Romanad, request.app.state.romanad)


State = Annotated[Romanad, Depends(_romanad)]


async def _writer(request: Request, romanad: State) -> IpamService:
    if romanad.token is not None:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {romanad.token}".encode()):
            raise Unauthorized()
    return romanad.service


Writer = Annotated[IpamService, Depends(_writer)]


async def _durable_engine(romanad: State) -> AsyncIterator[Engine]:
    async with romanad.service.durable_view():
        yield romanad.service.engine


# scope="function": the view (a turn between write batches) ends with the handler, not
# after the answer has been sent to a possibly slow client.
DurableEngine = Annotated[Engine, Depends(_durable_engine, scope="function")]

# Every operation may answer these with an ErrorBody (each router declares them).
ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "refused: the error names what and why"},
    "5XX": {"model": ErrorBody, "description": "failed or unavailable (x-request-id logged)"},
}

PAGE = 1000
PageSize = Annotated[int, Query(ge=1, le=10_000, description="Items per page.")]
Cursor = Annotated[
    str | None, Query(max_length=253, description="The previous page's next; absent: first page.")
]


def page(revision: int, key: str, items: list[Any], cursor: str | None) -> Response:
    """A list page, serialised directly: FastAPI's generic encoder would cost ~20 ms for
    1,000 items on the event loop; the items are their declared shapes already (views)."""
    return AsciiJSONResponse({"revision": revision, key: items, "next": cursor})
