"""romanad replicas on one etcd store, and a storm of allocations spread over them.

Replicas listen on unix sockets, so the test reaches them from the root namespace even
when they run inside a network namespace (the partition test). The storm retries a
request that failed or whose outcome is unknown with the same name, on the next replica,
as a client holding several romanad URLs would: allocations by name are idempotent.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .daemon import Daemon


class Replica(Daemon):
    """romanad ``name`` on the etcd store at ``store`` (``etcd://...``), under ``prefix``."""

    def __init__(
        self, root: Path, name: str, store: str, prefix: str, *extra: str, netns: str = ""
    ) -> None:
        flags = ("--store", store, "--etcd-prefix", prefix, *extra)
        super().__init__(root / f"{name}-data", *flags, socket=root / f"{name}.sock", netns=netns)
        self.name = name

    def addresses(self) -> dict[str, str]:
        """Every address, name -> IP, read through every page."""
        out: dict[str, str] = {}
        after: str | None = None
        with self.client() as c:
            while True:
                params: dict[str, Any] = {"limit": 1000}
                if after:
                    params["after"] = after
                page = c.get("/addresses", params=params).json()
                out.update({a["name"]: a["ip"] for a in page["addresses"]})
                after = page.get("next")
                if not after:
                    return out

    def feed(self) -> list[dict[str, Any]]:
        """The whole changes feed, as agents and publishers read it."""
        facts: list[dict[str, Any]] = []
        since = 0
        with self.client() as c:
            while True:
                answer = c.get("/watch", params={"since": since, "timeout": 0, "limit": 5000})
                page = answer.json()
                if not page["changes"]:
                    return facts
                facts += page["changes"]
                since = page["revision"]


@dataclass
class Storm:
    """``count`` allocations by ``workers`` concurrent clients, spread over ``replicas``."""

    replicas: list[Replica]
    count: int
    hosts: list[str]
    workers: int = 24
    give_up_after: float = 90.0
    acked: dict[str, str] = field(default_factory=dict)  # name -> IP, as answered
    successes: list[float] = field(default_factory=list)  # monotonic times
    errors: Counter[str] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)  # never acknowledged before giving up
    _thread: threading.Thread | None = None
    _done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Storm:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float = 180.0) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the storm did not finish"

    def progress(self) -> int:
        return len(self.acked)

    def wait_for(self, acked: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < acked:
            assert time.monotonic() < deadline, f"only {len(self.acked)} acknowledged"
            time.sleep(0.02)

    def longest_gap(self) -> float:
        times = sorted(self.successes)
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    async def _run(self) -> None:
        names = iter(range(self.count))
        lock = asyncio.Lock()
        rng = random.Random(11)
        clients = [
            httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(uds=str(r.socket)),
                base_url="http://romanad",
                timeout=10,
            )
            for r in self.replicas
        ]

        async def worker(w: int) -> None:
            while True:
                async with lock:
                    i = next(names, None)
                if i is None:
                    return
                body = {"name": f"pod-{i}", "host": rng.choice(self.hosts), "tenant": f"t{i % 4}"}
                await self._allocate(clients, i + w, body)

        try:
            await asyncio.gather(*(worker(w) for w in range(self.workers)))
        finally:
            for c in clients:
                await c.aclose()

    async def _allocate(
        self, clients: list[httpx.AsyncClient], start: int, body: dict[str, Any]
    ) -> None:
        give_up = time.monotonic() + self.give_up_after
        attempt = 0
        while time.monotonic() < give_up:
            client = clients[(start + attempt) % len(clients)]
            attempt += 1
            try:
                answer = await client.post("/address", json=body)
            except httpx.TransportError as exc:
                self.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
                continue
            if answer.status_code in (200, 201):
                self.acked[body["name"]] = answer.json()["ip"]
                self.successes.append(time.monotonic())
                return
            self.errors[
                f"{answer.status_code} {answer.json().get('error', {}).get('code', '')}"
            ] += 1
            if answer.status_code < 500:
                self.failed.append(body["name"])  # a refusal: never retried
                return
            await asyncio.sleep(0.05)
        self.failed.append(body["name"])
