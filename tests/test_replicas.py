"""Several romanad services on one shared log (romana.testing's MemoryStore with
``shared=True``, in one event loop): the conflict-retry loop, undo and rebuild, catch-up
and read-your-writes, without etcd. tests/test_replicas_etcd.py runs the same against
real etcd and real romanad processes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from romana.api.service import IpamService
from romana.ipam import AddressView
from romana.ipam.addr import ip_to_str
from romana.testing import MemoryStore

from .conftest import racks_topology


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())


async def replicas(store: MemoryStore, n: int) -> list[IpamService]:
    fatal: list[BaseException] = []
    first = IpamService(store, on_fatal=fatal.append)
    first.run_now(lambda: first.engine.apply_topology(racks_topology(2)))
    for i in range(4):
        first.run_now(
            lambda i=i: first.engine.add_host(
                f"h{i}", f"192.168.0.{i + 1}", {"rack": f"rack-{i % 2 + 1}"}
            )
        )
    services = [first] + [IpamService(store, on_fatal=fatal.append) for _ in range(n - 1)]
    for service in services:
        await service.start()
    return services


def test_concurrent_allocations_on_three_replicas_never_share_an_ip() -> None:
    async def scenario() -> None:
        store = MemoryStore(shared=True)
        services = await replicas(store, 3)
        rng = random.Random(7)

        async def allocate(i: int) -> AddressView:
            service = services[i % 3]
            host = f"h{rng.randrange(4)}"
            return await service.run(lambda: service.engine.allocate(f"pod-{i}", host, f"t{i % 3}"))

        views = await asyncio.gather(*(allocate(i) for i in range(600)))
        assert len({v.ip for v in views}) == 600  # no IP handed out twice
        assert sum(s.stats.conflicts for s in services) > 0  # the races did happen
        assert all(s.stats.reloads == 0 for s in services)  # every conflict was undone
        for service in services:  # every acknowledged allocation on every replica
            async with service.durable_view():
                held = {name: a.ip for name, a in service.engine.state.addresses.items()}
            assert {name: ip_to_str(ip) for name, ip in held.items()} == {
                v.name: v.ip for v in views
            }
        snapshots = [s.engine.snapshot() for s in services]
        assert snapshots[0] == snapshots[1] == snapshots[2]
        allocated = [f for _, f in store.read_since(0) if f["kind"] == "address_allocated"]
        assert len(allocated) == 600
        for service in services:
            await service.stop()

    run(scenario)


def test_a_write_acknowledged_by_one_replica_is_read_by_another_at_once() -> None:
    async def scenario() -> None:
        store = MemoryStore(shared=True)
        a, b = await replicas(store, 2)
        for i in range(20):
            view = await a.run(lambda i=i: a.engine.allocate(f"p{i}", "h0"))
            async with b.durable_view():  # no waiting for the tail or the idle check
                assert b.engine.address(f"p{i}").to_json() == view.to_json()
        for service in (a, b):
            await service.stop()

    run(scenario)


def test_a_lost_race_with_a_fact_without_inverse_rebuilds_from_the_store() -> None:
    async def scenario() -> None:
        store = MemoryStore(shared=True)
        a, b = await replicas(store, 2)
        await b.run(lambda: b.engine.allocate("first", "h0"))  # a has not seen it yet
        assert a.durable_revision < store.head()
        # A blackout changes every pool at once (no inverse): losing its race means a
        # rebuild; the blackout then lands after b's allocation.
        await a.run(lambda: a.engine.add_blackout("net", "10.1.128.0/24"))
        assert a.stats.conflicts == 1 and a.stats.reloads == 1
        async with b.durable_view():
            assert b.engine.blackouts("net") == ["10.1.128.0/24"]
            assert b.engine.snapshot() == a.engine.snapshot()
        view = await a.run(lambda: a.engine.allocate("second", "h0"))
        assert view.ip != b.engine.address("first").ip
        for service in (a, b):
            await service.stop()

    run(scenario)


def test_a_replica_behind_a_trimmed_log_rebuilds_from_the_snapshot() -> None:
    async def scenario() -> None:
        store = MemoryStore(shared=True)
        a, b = await replicas(store, 2)
        for i in range(30):
            await a.run(lambda i=i: a.engine.allocate(f"p{i}", f"h{i % 4}"))
        async with a.durable_view():
            snapshot: dict[str, Any] = a.engine.snapshot()
        store.save_snapshot(snapshot["revision"], snapshot)
        store.compact(snapshot["revision"])  # b never read those facts: they are gone
        view = await b.run(lambda: b.engine.allocate("late", "h1"))
        assert b.stats.reloads == 1
        assert view.ip not in {a.engine.address(f"p{i}").ip for i in range(30)}
        async with a.durable_view():
            assert a.engine.snapshot() == b.engine.snapshot()
        for service in (a, b):
            await service.stop()

    run(scenario)


def test_a_refusal_is_never_judged_on_a_stale_state() -> None:
    """A request that changes nothing (refused, or repeated) has no compare-and-swap to
    catch a stale state: the replica checks the head first."""

    async def scenario() -> None:
        store = MemoryStore(shared=True)
        a, b = await replicas(store, 2)
        await a.run(lambda: a.engine.add_host("late", "192.168.0.50", {"rack": "rack-1"}))
        view = await a.run(lambda: a.engine.allocate("p", "late"))
        assert b.durable_revision < store.head()  # b has heard nothing yet
        # On b's stale state "late" does not exist and "p" is free: it must not say so.
        again = await b.run(lambda: b.engine.allocate("p", "late"))
        assert again.to_json() == view.to_json()
        for service in (a, b):
            await service.stop()

    run(scenario)
