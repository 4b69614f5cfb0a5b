"""Failure paths of long-lived loops, injected with the fakes in tests/fakes: a failing store
under romanad's service, a scripted romanad and a refusing kernel table under the agent.
Nothing may stop silently: a loop that fails is logged with its traceback and restarted
(or ends the process), and health says so."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from romana.agent.follow import RouteAgent
from romana.agent.metrics import AgentMetrics
from romana.api.service import IpamService
from romana.errors import FeedRewound, OutcomeUnknown, StoreError, Unavailable, Unreachable
from romana.supervise import Supervisor

from .conftest import racks_topology
from .fakes.agent import FakeRouteTable, FakeUpstream
from .fakes.store import FailingStore, MemoryStore
from .wait import wait_until_async


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())


# -- romanad's service ------------------------------------------------------------------
def service_on(store: Any, fatal: list[BaseException], **kw: Any) -> IpamService:
    service = IpamService(store, on_fatal=fatal.append, **kw)
    service.mutate_before_serving(lambda: service.engine.apply_topology(racks_topology(2)))
    service.mutate_before_serving(
        lambda: service.engine.add_host("h1", "192.168.0.1", {"rack": "rack-1"})
    )
    return service


def test_a_failed_snapshot_restarts_maintenance_and_writes_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        store = FailingStore(MemoryStore())
        fatal: list[BaseException] = []
        service = service_on(store, fatal, snapshot_every=5)
        store.fail("save_snapshot", times=2)
        await service.start()
        for i in range(10):
            await service.mutate(lambda i=i: service.engine.allocate(f"a{i}", "h1"))
        await wait_until_async(lambda: service.supervisor.loops["maintenance"].restarts >= 1)
        _, health = service.health()
        assert health["loops"]["maintenance"]["last_error"].startswith("StoreError")
        # Writes never waited on it; the snapshot is written once the store works again.
        await service.mutate(lambda: service.engine.allocate("after", "h1"))
        await wait_until_async(lambda: bool(store.inner.snapshots), timeout=15)
        await wait_until_async(lambda: service.health()[0], timeout=5)
        assert not fatal
        await service.stop()

    with caplog.at_level(logging.ERROR):
        run(scenario)
    failures = [r for r in caplog.records if r.getMessage() == "loop failed; restarting"]
    assert failures and failures[0].exc_info is not None  # logged with the traceback


def test_a_failed_append_is_answered_503_undone_and_writes_go_on() -> None:
    async def scenario() -> None:
        store = FailingStore(MemoryStore())
        fatal: list[BaseException] = []
        service = service_on(store, fatal)
        await service.start()
        before = service.engine.snapshot()
        store.fail("append", exc=OSError(28, "No space left on device"))
        with pytest.raises(Unavailable, match="refused the change: OSError") as caught:
            await service.mutate(lambda: service.engine.allocate("x", "h1"))
        assert not isinstance(caught.value, OutcomeUnknown)
        # Nothing of the batch stays in memory: no read can show it, no later plan uses it.
        assert service.engine.snapshot() == before
        assert service.durable_revision == service.engine.revision == before["revision"]
        view = await service.mutate(lambda: service.engine.allocate("x", "h1"))
        assert view.ip == "10.1.0.0" and service.engine.revision == store.inner.head()
        assert not fatal and service.health()[0]
        assert service.health()[1]["store"]["failed_appends"] == 1
        assert service.health()[1]["store"]["undone"] == 1
        await service.stop()

    run(scenario)


def test_an_append_whose_answer_was_lost_is_read_back_and_a_retry_is_not_doubled() -> None:
    async def scenario() -> None:
        store = FailingStore(MemoryStore())
        fatal: list[BaseException] = []
        service = service_on(store, fatal)
        await service.start()
        store.fail("append", exc=OutcomeUnknown("injected: the answer was lost"), after=True)
        with pytest.raises(OutcomeUnknown, match="did not confirm") as caught:
            await service.mutate(lambda: service.engine.allocate("x", "h1"))
        assert "retrying the same request is safe" in str(caught.value.details)
        # The append did land: the next batch reads it back first, so the retry gets the
        # address already held instead of a second one.
        again = await service.mutate(lambda: service.engine.allocate("x", "h1"))
        other = await service.mutate(lambda: service.engine.allocate("y", "h1"))
        assert again.ip == "10.1.0.0" and other.ip == "10.1.0.1"
        rows = store.inner.read_since(0)
        allocated = [f for _, f in rows if f["kind"] == "address_allocated"]
        assert [f["name"] for f in allocated] == ["x", "y"]
        assert service.engine.revision == store.inner.head() and not fatal
        await service.stop()

    run(scenario)


def test_a_state_that_cannot_be_rebuilt_after_a_failed_append_is_fatal() -> None:
    async def scenario() -> None:
        store = FailingStore(MemoryStore())
        fatal: list[BaseException] = []
        service = service_on(store, fatal)
        await service.start()
        store.fail("append")
        store.fail("load", exc=OSError(5, "Input/output error"))
        # A blackout has no inverse: undoing it means rebuilding from the store.
        waiting = asyncio.create_task(
            service.mutate(lambda: service.engine.add_blackout("net", "10.1.0.0/30"))
        )
        await wait_until_async(lambda: bool(fatal))
        assert isinstance(fatal[0], OSError)
        ok, health = service.health()
        assert not ok and health["loops"]["group-commit"]["state"] == "failed"
        assert not waiting.done()  # never acknowledged: the process ends (on_fatal)
        waiting.cancel()
        await service.supervisor.stop()

    run(scenario)


def test_a_loop_that_returns_counts_as_failed_and_a_silent_one_as_stuck() -> None:
    async def scenario() -> None:
        fatal: list[BaseException] = []
        supervisor = Supervisor(fatal.append)

        async def returns(_: Any) -> None:
            return None

        async def silent(_: Any) -> None:
            await asyncio.sleep(3600)

        supervisor.start("returns", returns, restart=False)
        supervisor.start("silent", silent, restart=True, stuck_after=0.05)
        await wait_until_async(lambda: bool(fatal))
        assert "returned; it must run until stopped" in str(fatal[0])
        await wait_until_async(lambda: supervisor.health()[1]["silent"]["state"] == "stuck")
        ok, loops = supervisor.health()
        assert not ok and loops["silent"]["state"] == "stuck"
        await supervisor.stop()

    run(scenario)


class HeldStore(MemoryStore):
    """Appends wait for ``gate`` (they run in a worker thread, as SQLite's do)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()

    def append(self, facts: Any, expected_revision: int) -> int:
        self.gate.wait(10)
        return super().append(facts, expected_revision)


def test_reads_wait_for_durable_state() -> None:
    """A read never shows a change that is not durable yet (a crash would undo it)."""

    async def scenario() -> None:
        store = HeldStore()
        service = service_on(store, [])
        await service.start()
        store.gate.clear()
        write = asyncio.create_task(service.mutate(lambda: service.engine.allocate("w", "h1")))
        await wait_until_async(lambda: service.engine.revision > service.durable_revision)
        seen: list[int] = []

        async def read() -> None:
            async with service.durable_view():
                seen.append(len(service.engine.state.addresses))

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.1)
        assert not seen  # waiting: the allocation is applied in memory, not yet durable
        # Meanwhile a new write waits for the read, so the read cannot starve.
        second = asyncio.create_task(service.mutate(lambda: service.engine.allocate("w2", "h1")))
        await asyncio.sleep(0.05)
        assert "w2" not in service.engine.state.addresses
        store.gate.set()
        await reader
        assert seen == [1]
        await write
        await second
        await service.stop()

    run(scenario)


# -- the agent --------------------------------------------------------------------------
def agent_with(upstream: FakeUpstream, table: FakeRouteTable, **kw: Any) -> RouteAgent:
    return RouteAgent("h1", upstream, table, AgentMetrics(), **kw)  # type: ignore[arg-type]


LOCAL = {"prefix": "10.1.0.0/24", "via": "local", "gateway": None}
NEIGHBOUR = {"prefix": "10.1.1.0/24", "via": "host:h2", "gateway": "192.168.0.2"}


def test_the_repair_loop_survives_a_refused_sync() -> None:
    async def scenario() -> None:
        upstream, table = FakeUpstream(), FakeRouteTable()
        upstream.route_list = [LOCAL]
        agent = agent_with(upstream, table, resync_interval=0.05)
        supervisor = Supervisor(on_fatal=pytest.fail)
        await agent.sync("start")
        table.refuse(2)  # the next two syncs fail in the kernel
        table.routes.clear()  # someone flushed our table
        supervisor.start("repair", agent.resync_periodically, restart=True)
        await wait_until_async(lambda: "10.1.0.0/24" in table.routes)
        assert agent.metrics.errors.labels("OSError")._value.get() >= 1
        assert supervisor.loops["repair"].state == "running"  # the loop did not die
        await supervisor.stop()
        agent.close()

    run(scenario)


def test_an_unexpected_error_restarts_the_follow_loop(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        upstream, table = FakeUpstream(), FakeRouteTable()
        upstream.route_list = [LOCAL]
        upstream.script = [RuntimeError("a bug")]
        agent = agent_with(upstream, table, watch_timeout=0.05)
        supervisor = Supervisor(on_fatal=pytest.fail)
        supervisor.start("follow", agent.follow, restart=True)
        await wait_until_async(lambda: supervisor.loops["follow"].restarts == 1)
        upstream.route_list = [LOCAL, NEIGHBOUR]
        upstream.revision = 5
        upstream.script = [
            {"revision": 5, "store_id": "store-a", "changes": [{"kind": "block_assigned"}]}
        ]
        await wait_until_async(lambda: "10.1.1.0/24" in table.routes, timeout=10)
        await supervisor.stop()
        agent.close()

    with caplog.at_level(logging.ERROR):
        run(scenario)
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)


@pytest.mark.parametrize("change", ["another store", "revision went back"])
def test_the_agent_refuses_a_rewound_feed_and_keeps_its_routes(change: str) -> None:
    async def scenario() -> None:
        upstream, table = FakeUpstream(), FakeRouteTable()
        upstream.route_list = [LOCAL, NEIGHBOUR]
        upstream.revision = 100
        agent = agent_with(upstream, table, watch_timeout=0.05)
        supervisor = Supervisor(on_fatal=pytest.fail)
        supervisor.start("follow", agent.follow, restart=True)
        await wait_until_async(lambda: len(table.routes) == 2)
        good = dict(table.routes)
        # romanad comes back emptied (a new store) or behind (a lost tail): its route set
        # would remove everything.
        upstream.route_list = []
        if change == "another store":
            upstream.store_id = "store-b"
        else:
            upstream.revision = 40
        upstream.script = [
            {
                "revision": upstream.revision,
                "store_id": upstream.store_id,
                "changes": [{"kind": "topology_applied"}],
            }
        ]
        await wait_until_async(lambda: agent.rewound is not None)
        await asyncio.sleep(0.2)
        assert table.routes == good  # the last good state stays
        assert agent.metrics.errors.labels("FeedRewound")._value.get() >= 1
        with pytest.raises(FeedRewound):
            agent._check_feed(upstream.store_id, upstream.revision)
        await supervisor.stop()
        agent.close()

    run(scenario)


def test_a_refused_watch_keeps_the_agents_place_in_the_feed() -> None:
    """503 to a watch (romanad's long polls all taken) is not an outage: the agent watches
    again from where it was, without a full route sync on top of romanad's load."""

    async def scenario() -> None:
        upstream, table = FakeUpstream(), FakeRouteTable()
        upstream.route_list = [LOCAL]
        upstream.revision = 3
        busy = Unavailable("3000 watches are open (--max-watches)")
        upstream.script = [busy, busy, {"revision": 4, "store_id": "store-a", "changes": []}]
        agent = agent_with(upstream, table, watch_timeout=0.05)
        supervisor = Supervisor(on_fatal=pytest.fail)
        supervisor.start("follow", agent.follow, restart=True)
        await wait_until_async(lambda: upstream.calls.count("watch") >= 4, timeout=10)
        assert upstream.calls.count("routes") == 1  # the first sync only
        assert agent.romanad_up  # busy, not away
        await supervisor.stop()
        agent.close()

    run(scenario)


def test_an_outage_keeps_routes_and_backs_off() -> None:
    async def scenario() -> None:
        upstream, table = FakeUpstream(), FakeRouteTable()
        upstream.route_list = [LOCAL]
        agent = agent_with(upstream, table, watch_timeout=0.05)
        supervisor = Supervisor(on_fatal=pytest.fail)
        supervisor.start("follow", agent.follow, restart=True)
        await wait_until_async(lambda: agent.synced.is_set())
        upstream.down = True
        upstream.script = [Unreachable("gone")]
        await wait_until_async(lambda: not agent.romanad_up)
        calls = len(upstream.calls)
        await asyncio.sleep(0.3)
        assert len(upstream.calls) - calls < 10  # backing off, not spinning
        assert table.routes  # kept
        upstream.down = False
        await wait_until_async(lambda: agent.romanad_up, timeout=10)
        assert supervisor.loops["follow"].restarts == 0  # handled, not crashed
        await supervisor.stop()
        agent.close()

    run(scenario)


def test_store_errors_are_unavailable_not_internal() -> None:
    assert StoreError("x").status == 503
