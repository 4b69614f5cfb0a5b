"""Several romanad services on one shared log (tests/fakes' MemoryStore with
``shared=True``, in one event loop): the conflict-retry loop, undo and rebuild, catch-up
and read-your-writes, without etcd. tests/test_replicas_etcd.py runs the same against
real etcd and real romanad processes."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from romana.api.service import CATCH_UP_PAGE, IpamService
from romana.ipam import AddressView, Engine, fact_from_json, fact_to_json
from romana.ipam.addr import ip_to_str
from romana.ipam.facts import Fact
from romana.routes import RouteTracker

from .conftest import racks_topology
from .fakes.store import MemoryStore
from .test_undo import outcome, routes, tracked


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())


async def replicas(
    store: MemoryStore, n: int, fatal: list[BaseException] | None = None
) -> list[IpamService]:
    """``n`` services on ``store``; a loop failure that would end romanad lands in
    ``fatal`` instead."""
    fatal = [] if fatal is None else fatal
    first = IpamService(store, on_fatal=fatal.append)
    first.mutate_before_serving(lambda: first.engine.apply_topology(racks_topology(2)))
    for i in range(4):
        first.mutate_before_serving(
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
            return await service.mutate(
                lambda: service.engine.allocate(f"pod-{i}", host, f"t{i % 3}")
            )

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
            view = await a.mutate(lambda i=i: a.engine.allocate(f"p{i}", "h0"))
            async with b.durable_view():  # no waiting for the tail or the idle check
                assert b.engine.address(f"p{i}").to_json() == view.to_json()
        for service in (a, b):
            await service.stop()

    run(scenario)


def test_a_lost_race_with_a_fact_without_inverse_rebuilds_from_the_store() -> None:
    async def scenario() -> None:
        store = MemoryStore(shared=True)
        a, b = await replicas(store, 2)
        await b.mutate(lambda: b.engine.allocate("first", "h0"))  # a has not seen it yet
        assert a.durable_revision < store.head()
        # A blackout changes every pool at once (no inverse): losing its race means a
        # rebuild; the blackout then lands after b's allocation.
        await a.mutate(lambda: a.engine.add_blackout("net", "10.1.128.0/24"))
        assert a.stats.conflicts == 1 and a.stats.reloads == 1
        async with b.durable_view():
            assert b.engine.blackouts("net") == ["10.1.128.0/24"]
            assert b.engine.snapshot() == a.engine.snapshot()
        view = await a.mutate(lambda: a.engine.allocate("second", "h0"))
        assert view.ip != b.engine.address("first").ip
        for service in (a, b):
            await service.stop()

    run(scenario)


def test_a_replica_behind_a_trimmed_log_rebuilds_from_the_snapshot() -> None:
    async def scenario() -> None:
        store = MemoryStore(shared=True)
        a, b = await replicas(store, 2)
        for i in range(30):
            await a.mutate(lambda i=i: a.engine.allocate(f"p{i}", f"h{i % 4}"))
        async with a.durable_view():
            snapshot: dict[str, Any] = a.engine.snapshot()
        store.save_snapshot(snapshot["revision"], snapshot)
        store.compact(snapshot["revision"])  # b never read those facts: they are gone
        view = await b.mutate(lambda: b.engine.allocate("late", "h1"))
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
        await a.mutate(lambda: a.engine.add_host("late", "192.168.0.50", {"rack": "rack-1"}))
        view = await a.mutate(lambda: a.engine.allocate("p", "late"))
        assert b.durable_revision < store.head()  # b has heard nothing yet
        # On b's stale state "late" does not exist and "p" is free: it must not say so.
        again = await b.mutate(lambda: b.engine.allocate("p", "late"))
        assert again.to_json() == view.to_json()
        for service in (a, b):
            await service.stop()

    run(scenario)


def routes_of(service: IpamService) -> dict[str, Any]:
    return {name: s.to_json() for name, s in service.routes.all_sets().items()}


def rebuilt_routes(service: IpamService) -> dict[str, Any]:
    """The route sets a tracker made from scratch over ``service``'s state computes."""
    fresh = RouteTracker(lambda: service.engine.state)
    return {name: s.to_json() for name, s in fresh.all_sets().items()}


def test_a_page_that_assigns_and_frees_a_block_is_caught_up_fact_by_fact() -> None:
    """A pod started and stopped on a new tenant while a replica looked away: the replica
    reads a block assigned and freed in one page. It answers correctly afterwards, its
    routes equal routes rebuilt from scratch, and no loop failed (romanad exited 70)."""

    async def scenario() -> None:
        store = MemoryStore(shared=True)
        fatal: list[BaseException] = []
        a, b = await replicas(store, 2, fatal)
        await a.mutate(lambda: a.engine.allocate("warm", "h0", "t0"))
        async with b.durable_view():
            pass
        behind = a.durable_revision
        await b.mutate(lambda: b.engine.allocate("x", "h0", "t9"))
        await b.mutate(lambda: b.engine.release("x"))
        kinds = [f["kind"] for _, f in store.read_since(behind)]
        assert "block_assigned" in kinds and "block_freed" in kinds
        async with a.durable_view():  # one page: both facts at once
            assert a.durable_revision == store.head()
            assert a.engine.snapshot() == b.engine.snapshot()
            assert routes_of(a) == rebuilt_routes(a)
        view = await a.mutate(lambda: a.engine.allocate("y", "h0", "t9"))
        async with b.durable_view():
            assert b.engine.address("y").to_json() == view.to_json()
        assert fatal == []
        for service in (a, b):
            await service.stop()

    run(scenario)


def test_a_replica_behind_by_pages_of_churn_tracks_the_same_routes() -> None:
    """Thousands of foreign facts (pods started and stopped on every host and tenant, hosts
    added meanwhile) caught up in pages of a thousand: the same state, the same routes."""

    async def scenario() -> None:
        store = MemoryStore(shared=True)
        fatal: list[BaseException] = []
        (b,) = await replicas(store, 1, fatal)
        a = IpamService(store, on_fatal=fatal.append)  # started once b is far ahead
        rng = random.Random(5)
        held: list[str] = []
        for i in range(2400):
            if i == 300:  # rebuilds the tracker: facts after it in its page must not
                await b.mutate(lambda: b.engine.add_host("late", "192.168.1.1", {"rack": "rack-1"}))
            if held and rng.random() < 0.4:  # mostly a recent pod: its block may go too
                name = held.pop(rng.randrange(max(0, len(held) - 4), len(held)))
                await b.mutate(lambda name=name: b.engine.release(name))
            else:
                name, host, tenant = f"p{i}", f"h{rng.randrange(4)}", f"t{rng.randrange(40)}"
                await b.mutate(lambda n=name, h=host, t=tenant: b.engine.allocate(n, h, t))
                held.append(name)
        assert store.head() - a.durable_revision > 2 * CATCH_UP_PAGE  # three pages
        await a.start()
        async with a.durable_view():
            assert a.durable_revision == store.head()
            assert a.engine.snapshot() == b.engine.snapshot()
            assert routes_of(a) == rebuilt_routes(a)
        async with b.durable_view():
            assert routes_of(b) == rebuilt_routes(b)
        assert fatal == []
        for service in (a, b):
            await service.stop()

    run(scenario)


def test_a_page_that_fails_to_apply_is_not_applied_again_on_top_of_itself() -> None:
    """Should applying a page fail half-way (a bug in an observer), the replica rebuilds
    its memory from the store instead of retrying the page on a half-changed state."""

    async def scenario() -> None:
        store = MemoryStore(shared=True)
        fatal: list[BaseException] = []
        a, b = await replicas(store, 2, fatal)
        failures = [RuntimeError("an observer's bug")]

        def failing_once(facts: list[Fact]) -> None:
            if failures:
                raise failures.pop()

        a.engine.observers.append(failing_once)
        for i in range(5):
            await b.mutate(lambda i=i: b.engine.allocate(f"p{i}", "h1", f"t{i}"))
        async with a.durable_view():
            assert a.engine.snapshot() == b.engine.snapshot()
            assert routes_of(a) == rebuilt_routes(a)
        assert a.stats.reloads == 1 and fatal == []
        view = await a.mutate(lambda: a.engine.allocate("next", "h1", "t0"))
        assert view.ip not in {b.engine.address(f"p{i}").ip for i in range(5)}
        for service in (a, b):
            await service.stop()

    run(scenario)


def churn_op(kind: str, name: int, host: int, tenant: int, rack: int) -> tuple[Any, ...]:
    if kind == "alloc":
        return ("alloc", name, host, tenant, 0)
    if kind == "alloc_labeled":
        return ("alloc_labeled", name, host, {"app": "web"})
    if kind == "release":
        return ("release", name)
    if kind == "add":
        return ("add", host + 2, {"rack": f"rack-{rack}"})
    return ("remove", host + 2)


# Pods started and stopped (few names, so releases hit), now and then a host added or
# removed: about one example in ten has a page that assigns a block and frees it again.
CHURN = st.builds(
    churn_op,
    st.sampled_from(["alloc"] * 6 + ["alloc_labeled"] * 2 + ["release"] * 6 + ["add", "remove"]),
    st.integers(0, 8),
    st.integers(0, 5),
    st.integers(0, 4),
    st.integers(1, 3),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    racks=st.integers(1, 3),
    block_mask=st.integers(27, 29),
    ops=st.lists(CHURN, min_size=40, max_size=150),
    pages=st.lists(st.integers(1, 200), min_size=1, max_size=6),
)
def test_a_follower_applying_the_log_in_pages_of_any_size_tracks_the_same_routes(
    racks: int, block_mask: int, ops: list[tuple[Any, ...]], pages: list[int]
) -> None:
    """Whatever a page of the log holds (blocks assigned and freed, areas reserved and
    given back, blocks lent, hosts added and removed), a follower that applies it page by
    page holds the writer's state and the routes a tracker made from scratch computes."""
    doc = racks_topology(racks, "10.1.0.0/24", block_mask)  # small: hosts borrow blocks
    facts: list[Fact] = []
    writer = Engine(sink=facts.extend)
    writer.apply_topology(doc)
    for op in [("add", i, {"rack": f"rack-{i % racks + 1}"}) for i in range(6)] + ops:
        outcome(writer, doc, op)
    follower = Engine()
    tracker = tracked(follower)
    rest = [fact_from_json(fact_to_json(f)) for f in facts]
    for size in itertools.cycle(pages):
        page, rest = rest[:size], rest[size:]
        follower.apply_durable(page)
        assert routes(tracker) == routes(tracked(Engine.from_snapshot(follower.snapshot())))
        if not rest:
            break
    assert follower.snapshot() == writer.snapshot()
