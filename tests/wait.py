"""Waiting for a condition in a test: poll it until it holds, or fail saying what never came.

Tests wait for conditions, never for a fixed time: a loaded machine only makes them slower.
``wait_until`` is for threads and plain tests, ``wait_until_async`` for code on an event
loop (it yields to the loop between polls, so the tasks under test make progress).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    *,
    what: str = "",
    interval: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """``predicate()``'s first truthy value. An exception of a type in ``ignoring`` counts as
    not yet (a server still starting); after ``timeout`` s, fails with the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: object = predicate()
        except ignoring as exc:
            last = exc
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what or predicate}: last {last!r}"
            )
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], T], timeout: float = 5.0, *, what: str = "", interval: float = 0.01
) -> T:
    """As :func:`wait_until`, on an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what or predicate}: last {last!r}"
            )
        await asyncio.sleep(interval)
