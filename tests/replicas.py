"""romanad replicas on one etcd store, and a storm of allocations (and releases) spread
over them.

Replicas listen on unix sockets, so the test reaches them from the root namespace even
when they run inside a network namespace (the partition test). The storm retries a
request that failed or whose outcome is unknown with the same name, on the next replica,
as a client holding several romanad URLs would: allocations by name are idempotent, and a
release answered 404 after a lost answer was done by that lost attempt.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .conftest import racks_topology
from .daemon import Daemon
from .etcd import EtcdMember, etcd_cluster

HOSTS = [f"h{i}" for i in range(8)]


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


def start_replicas(root: Path, members: list[EtcdMember], netns: str = "") -> list[Replica]:
    """Three replicas on ``members``, each first on a different one (failover moves them
    on from there); the first loads the racks topology and registers ``HOSTS``."""
    topology = root / "topology.json"
    topology.write_text(json.dumps(racks_topology(4)))
    prefix = f"/romana-{uuid.uuid4().hex[:8]}"
    replicas = []
    for i in range(3):
        order = [m.url.removeprefix("http://") for m in members[i:] + members[:i]]
        extra = ("--topology", str(topology)) if i == 0 else ()
        replicas.append(
            Replica(root, f"r{i + 1}", "etcd://" + ",".join(order), prefix, *extra, netns=netns)
        )
    try:
        replicas[0].start()
        with replicas[0].client() as c:
            for i, host in enumerate(HOSTS):
                tags = {"rack": f"rack-{i % 4 + 1}"}
                answer = c.post(
                    "/hosts", json={"name": host, "ip": f"192.168.0.{i + 1}", "tags": tags}
                )
                assert answer.status_code in (200, 201), answer.text
        for replica in replicas[1:]:
            replica.start()
    except BaseException:
        kill_all(replicas)
        raise
    return replicas


def kill_all(replicas: list[Replica]) -> None:
    """SIGKILL by PID, each still running woken first (SIGCONT) in case it is paused."""
    for replica in replicas:
        if replica.proc is not None and replica.proc.poll() is None:
            os.kill(replica.proc.pid, signal.SIGCONT)
        replica.kill()


@contextmanager
def running_replicas(
    root: Path, members: list[EtcdMember], netns: str = ""
) -> Iterator[list[Replica]]:
    """``start_replicas``, every one killed by PID at the end."""
    replicas = start_replicas(root, members, netns)
    try:
        yield replicas
    finally:
        kill_all(replicas)


@contextmanager
def loopback_replicas(root: Path) -> Iterator[tuple[list[EtcdMember], list[Replica]]]:
    """A three-member etcd cluster on loopback and ``running_replicas`` on it."""
    with etcd_cluster(3) as members, running_replicas(root, members) as replicas:
        yield members, replicas


@dataclass
class Storm:
    """``count`` operations by ``workers`` concurrent clients, spread over the replicas not
    set aside: allocations of ``pod-<i>`` (tenant ``t<i % tenants>``, a host drawn from
    ``hosts``), and with ``releases`` > 0 that share of releases of a name held, when there
    is one. A request that fails or whose answer is lost is retried on the next replica
    until ``give_up_after`` seconds have passed; a refusal is never retried."""

    replicas: list[Replica]
    count: int
    hosts: list[str]
    workers: int = 24
    tenants: int = 4
    releases: float = 0.0
    seed: int = 11
    give_up_after: float = 90.0
    held: dict[str, str] = field(default_factory=dict)  # name -> IP, as answered; not released
    released: set[str] = field(default_factory=set)
    successes: list[float] = field(default_factory=list)  # monotonic times, one per operation
    errors: Counter[str] = field(default_factory=Counter)  # retried
    failed: list[str] = field(default_factory=list)  # never acknowledged, and why
    aside: set[int] = field(default_factory=set)  # replicas no request is sent to
    in_flight: Counter[int] = field(default_factory=Counter)
    _thread: threading.Thread | None = None

    def start(self) -> Storm:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float = 180.0) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the storm did not finish"

    def progress(self) -> int:
        """Operations acknowledged so far."""
        return len(self.successes)

    def wait_for(self, done: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.progress() < done:
            assert time.monotonic() < deadline, f"only {self.progress()} acknowledged"
            time.sleep(0.02)

    def longest_gap(self) -> float:
        times = sorted(self.successes)
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def set_aside(self, index: int) -> None:
        """No new request goes to replica ``index``; returns once none is in flight there
        (a request stuck in a paused replica would be carried out after its retry)."""
        self.aside.add(index)
        deadline = time.monotonic() + 15
        while self.in_flight[index]:
            assert time.monotonic() < deadline, "requests stuck on the replica set aside"
            time.sleep(0.01)

    async def _run(self) -> None:
        order = iter(range(self.count))
        rng = random.Random(self.seed)
        clients = [
            httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(uds=str(r.socket)),
                base_url="http://romanad",
                timeout=10,
            )
            for r in self.replicas
        ]
        claimed: set[str] = set()  # held names a worker is releasing

        async def worker(w: int) -> None:
            while (i := next(order, None)) is not None:
                free = [n for n in self.held if n not in claimed] if self.releases else []
                if free and rng.random() < self.releases:
                    name = rng.choice(free)
                    claimed.add(name)
                    await self._release(clients, i + w, name)
                else:
                    host, tenant = rng.choice(self.hosts), f"t{i % self.tenants}"
                    body = {"name": f"pod-{i}", "host": host, "tenant": tenant}
                    await self._allocate(clients, i + w, body)

        try:
            await asyncio.gather(*(worker(w) for w in range(self.workers)))
        finally:
            for c in clients:
                await c.aclose()

    async def _send(
        self, clients: list[httpx.AsyncClient], start: int, method: str, path: str, **kw: Any
    ) -> tuple[int, dict[str, Any], int] | None:
        """(status, body, attempts), retried on the next replica after a transport error or
        a 5xx, as a client holding several romanad URLs does; None after giving up."""
        give_up = time.monotonic() + self.give_up_after
        attempt = 0
        while time.monotonic() < give_up:
            index = (start + attempt) % len(clients)
            attempt += 1
            if index in self.aside:
                continue
            self.in_flight[index] += 1
            try:
                answer = await clients[index].request(method, path, **kw)
            except httpx.TransportError as exc:
                self.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
                continue
            finally:
                self.in_flight[index] -= 1
            if answer.status_code >= 500:
                code = answer.json().get("error", {}).get("code", "")
                self.errors[f"{answer.status_code} {code}"] += 1
                await asyncio.sleep(0.05)
                continue
            return answer.status_code, answer.json(), attempt
        return None

    async def _allocate(
        self, clients: list[httpx.AsyncClient], start: int, body: dict[str, Any]
    ) -> None:
        sent = await self._send(clients, start, "POST", "/address", json=body)
        if sent is not None and sent[0] in (200, 201):
            self.held[body["name"]] = sent[1]["ip"]
            self.successes.append(time.monotonic())
        else:
            self.failed.append(f"allocate {body['name']}: {sent or 'gave up'}")

    async def _release(self, clients: list[httpx.AsyncClient], start: int, name: str) -> None:
        sent = await self._send(clients, start, "DELETE", "/address", params={"name": name})
        # A 404 after an attempt whose answer was lost: that attempt released it.
        if sent is not None and (sent[0] == 200 or (sent[0] == 404 and sent[2] > 1)):
            del self.held[name]
            self.released.add(name)
            self.successes.append(time.monotonic())
        else:
            self.failed.append(f"release {name}: {sent or 'gave up'}")
