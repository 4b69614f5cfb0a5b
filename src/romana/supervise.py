"""Supervised long-lived tasks: nothing that must run forever may stop silently.

A daemon's loops (group commit, snapshots, the agent's follow and repair loops, the CNI
server) run under a :class:`Supervisor`. A loop that raises, or returns although it should
run forever, is logged with its traceback and then either restarted after a jittered
backoff (``restart=True``: it can recover by itself, e.g. a failed snapshot) or handed to
``on_fatal`` (the process ends with a non-zero status, e.g. a failed durable append, after
which memory holds changes the store lacks). Loops call :meth:`Loop.beat` as they make
progress; one silent for longer than its ``stuck_after`` is reported stuck. ``health()``
is what ``/healthz`` shows: every loop's state, restarts and last error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from romana.backoff import Backoff

log = logging.getLogger("romana.supervise")
RECOVERED_AFTER = 60.0  # seconds of running that reset a loop's restart backoff


@dataclass(slots=True)
class Loop:
    name: str
    restart: bool
    stuck_after: float | None
    state: str = "starting"  # running | restarting | failed | stopped
    restarts: int = 0
    last_error: str | None = None
    last_beat: float = field(default_factory=time.monotonic)

    def beat(self) -> None:
        """The loop made progress (or is idle by design): it is alive."""
        self.last_beat = time.monotonic()

    @property
    def stuck(self) -> bool:
        return (
            self.state == "running"
            and self.stuck_after is not None
            and time.monotonic() - self.last_beat > self.stuck_after
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "state": "stuck" if self.stuck else self.state,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "seconds_since_progress": round(time.monotonic() - self.last_beat, 1),
        }


Body = Callable[[Loop], Awaitable[None]]


class Supervisor:
    def __init__(
        self,
        on_fatal: Callable[[BaseException], None],
        backoff: Callable[[], Backoff] = lambda: Backoff(0.5, 30.0),
    ) -> None:
        self.on_fatal = on_fatal
        self._backoff = backoff
        self.loops: dict[str, Loop] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(
        self, name: str, body: Body, *, restart: bool, stuck_after: float | None = None
    ) -> Loop:
        """Run ``body(loop)`` forever under supervision (see the module docstring)."""
        loop = self.loops[name] = Loop(name, restart, stuck_after)
        self._tasks[name] = asyncio.create_task(self._run(loop, body), name=name)
        return loop

    async def _run(self, loop: Loop, body: Body) -> None:
        backoff = self._backoff()
        while True:
            loop.state = "running"
            loop.beat()
            started = time.monotonic()
            try:
                await body(loop)
                raise RuntimeError(f"loop {loop.name} returned; it must run until stopped")
            except asyncio.CancelledError:
                loop.state = "stopped"
                raise
            except Exception as exc:
                loop.last_error = f"{type(exc).__name__}: {exc}"
                if not loop.restart:
                    loop.state = "failed"
                    log.critical(
                        "loop failed; ending the process", exc_info=exc, extra={"loop": loop.name}
                    )
                    self.on_fatal(exc)
                    return
                loop.state = "restarting"
                loop.restarts += 1
                if time.monotonic() - started > RECOVERED_AFTER:
                    backoff.reset()  # it had been running fine: not a crash loop
                delay = backoff.next()
                log.error(
                    "loop failed; restarting",
                    exc_info=exc,
                    extra={
                        "loop": loop.name,
                        "restarts": loop.restarts,
                        "retry_in": round(delay, 2),
                    },
                )
                await asyncio.sleep(delay)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(all running and none stuck, every loop's state)."""
        ok = all(loop.state == "running" and not loop.stuck for loop in self.loops.values())
        return ok, {name: loop.to_json() for name, loop in self.loops.items()}

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
