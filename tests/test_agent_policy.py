"""The agent's policy loop on its failure paths, with a scripted romanad and an in-memory
policy table (``tests/fakes``): what a resync keeps and drops, one endpoint per IP, and
that the reported revision never runs ahead of the table. (The real table and the real
romanad are in tests/test_policy_e2e.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from romana.agent.policy import PolicyEnforcer
from romana.errors import PolicyError, Unavailable
from romana.policy.k8s import NetworkPolicy
from romana.policy.model import Endpoint
from romana.supervise import Loop

from .fakes.agent import FakeNftTable, FakeUpstream
from .wait import wait_until_async

DENY = NetworkPolicy.model_validate(
    {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "t"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": []},
    }
).translate()


def endpoint(name: str, ip: str, app: str) -> dict[str, Any]:
    return {
        "name": name,
        "ip": ip,
        "host": "h1",
        "tenant": "t",
        "segment": "",
        "labels": {"app": app},
        "ports": [],
    }


class FlowLog:
    """Stands in for deleting tracked flows (the kernel's are in tests/test_policy_faults.py):
    records which IPs each call asked for."""

    def __init__(self) -> None:
        self.calls: list[set[str]] = []

    def __call__(self, ips: Iterable[str]) -> int:
        self.calls.append(set(ips))
        return 0


def enforcer() -> tuple[PolicyEnforcer, FakeUpstream, FakeNftTable]:
    upstream = FakeUpstream()
    upstream.policy_document = {
        "hosts": {"h1": "192.168.0.1"},
        "endpoints": [endpoint("a", "10.1.0.3", "web")],
        "blocks": [["10.1.0.0/29", "h1", "t", ""]],
        "policies": [DENY.to_json()],
    }
    table = FakeNftTable()
    agent = PolicyEnforcer(
        "h1",
        upstream,  # type: ignore[arg-type]
        table,  # type: ignore[arg-type]
        CollectorRegistry(),
        flow_forgetter=FlowLog(),
    )
    return agent, upstream, table


def verdicts(table: FakeNftTable) -> set[str]:
    assert table.loaded is not None
    return {e.split(" : ")[0] for e in table.loaded.sets["ingress_of"].elements}


def test_a_resync_keeps_admitted_pods_and_drops_what_romanad_no_longer_has() -> None:
    async def scenario() -> None:
        agent, upstream, table = enforcer()
        await agent.load_state()
        assert verdicts(table) == set()  # a is web: not isolated
        await agent.admit(Endpoint("b", "10.1.0.4", "h1", "t", "", {"app": "db"}))
        assert verdicts(table) == {"10.1.0.4"}  # isolated before the feed knows it
        # romanad's state lost "a" (released while we were away) and does not show "b"
        # yet: after a resync, "a" is gone and "b" stays isolated.
        upstream.policy_document["endpoints"] = []
        await agent.load_state()
        assert agent.inputs is not None
        assert set(agent.inputs.endpoints) == {"b"}
        assert verdicts(table) == {"10.1.0.4"}
        # Once the feed has shown b's allocation, b is romanad's to keep or drop.
        agent._confirmed([{"kind": "address_allocated", "name": "b"}])
        await agent.load_state()
        assert agent.inputs.endpoints == {} and verdicts(table) == set()

    asyncio.run(scenario())


def test_an_ip_given_to_a_new_pod_drops_its_stale_holder() -> None:
    async def scenario() -> None:
        agent, _, table = enforcer()
        await agent.load_state()
        await agent.admit(Endpoint("old", "10.1.0.5", "h1", "t", "", {"app": "web"}))
        # Its release never reached us; romanad now gives 10.1.0.5 to a db pod.
        await agent.admit(Endpoint("new", "10.1.0.5", "h1", "t", "", {"app": "db"}))
        assert agent.inputs is not None and "old" not in agent.inputs.endpoints
        assert agent.inputs.ip_owners["10.1.0.5"] == "new"
        assert verdicts(table) == {"10.1.0.5"}  # new's policies only: isolated
        assert table.loaded is not None and table.loaded.isolated == {"new": ("k8s:t:deny",)}

    asyncio.run(scenario())


def test_the_reported_revision_waits_for_the_table() -> None:
    async def scenario() -> None:
        agent, upstream, table = enforcer()
        upstream.revision = 5
        task = asyncio.ensure_future(agent.follow(Loop("policy", restart=True, stuck_after=None)))
        try:
            await wait_until_async(lambda: agent.revision == 5)
            table.refuse(4)  # two loads (whole, then per policy), twice: the table stays
            with pytest.raises(PolicyError):
                await agent.admit(Endpoint("c", "10.1.0.6", "h1", "t", "", {"app": "db"}))
            assert agent.pending.endpoints == {"c"} and agent.last_error is not None
            # A quiet feed answer at a later revision: the table still lacks c, so the
            # revision must not move; the loop retries the pending change (refused
            # again), then reloads and succeeds.
            upstream.revision = 9
            upstream.script = [{"revision": 9, "store_id": upstream.store_id, "changes": []}]
            ahead = []

            def check() -> bool:  # sampled all along: never revision 9 without c loaded
                if agent.revision == 9 and "10.1.0.6" not in verdicts(table):
                    ahead.append(agent.revision)
                return agent.revision == 9

            await wait_until_async(check, timeout=10)
            assert not ahead and table.refusals == 0  # the retry was refused, then loaded
            assert verdicts(table) == {"10.1.0.6"} and agent.last_error is None
        finally:
            task.cancel()

    asyncio.run(scenario())


def test_a_pod_cannot_start_before_the_first_table() -> None:
    async def scenario() -> None:
        agent, _, _ = enforcer()
        agent.admit_timeout = 0.05
        with pytest.raises(Exception, match="not loaded yet"):
            await agent.admit(Endpoint("d", "10.1.0.7", "h1", "t", "", {}))

    asyncio.run(scenario())


class RefusingFlowLog(FlowLog):
    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    def __call__(self, ips: Iterable[str]) -> int:
        if self.times:
            self.times -= 1
            raise OSError(95, "injected: conntrack refused")
        return super().__call__(ips)


def test_flows_of_an_ip_are_deleted_when_it_changes_hands() -> None:
    """ADD deletes the new pod's IP's flows once it is in the table; DEL once it is out;
    a release in the feed on any host, unless this host's CNI did it already; a resync
    for every IP whose holder changed while the feed was not followed."""

    async def scenario() -> None:
        agent, upstream, table = enforcer()
        flows = agent.flow_forgetter
        assert isinstance(flows, FlowLog)
        await agent.load_state()
        await agent.admit(Endpoint("b", "10.1.0.4", "h1", "t", "", {"app": "db"}))
        assert flows.calls == [{"10.1.0.4"}] and verdicts(table) == {"10.1.0.4"}
        await agent.forget("b")
        assert flows.calls[-1] == {"10.1.0.4"} and verdicts(table) == set()
        # The feed shows b's release (already done here by the DEL) and another host's
        # pod released: only the other one is deleted here.
        upstream.revision = 3
        upstream.script = [
            {
                "revision": 3,
                "store_id": upstream.store_id,
                "changes": [
                    {"kind": "address_released", "name": "b", "network": "n", "ip": "10.1.0.4"},
                    {"kind": "address_released", "name": "a", "network": "n", "ip": "10.1.0.3"},
                ],
            }
        ]
        calls = len(flows.calls)
        task = asyncio.ensure_future(agent.follow(Loop("policy", restart=True, stuck_after=None)))
        try:
            await wait_until_async(lambda: len(flows.calls) > calls)
            assert flows.calls[calls:] == [{"10.1.0.3"}]
        finally:
            task.cancel()
        # A reload that finds 10.1.0.9 held by someone else than before.
        upstream.policy_document["endpoints"] = [endpoint("c", "10.1.0.9", "web")]
        await agent.load_state()
        upstream.policy_document["endpoints"] = [endpoint("d", "10.1.0.9", "web")]
        await agent.load_state()
        assert flows.calls[-1] == {"10.1.0.9"}

    asyncio.run(scenario())


def test_an_add_whose_flows_cannot_be_deleted_fails_and_a_release_is_retried() -> None:
    async def scenario() -> None:
        agent, upstream, _ = enforcer()
        agent.flow_forgetter = RefusingFlowLog(2)
        await agent.load_state()
        with pytest.raises(PolicyError, match="tracked flows"):  # fail closed: no ADD
            await agent.admit(Endpoint("b", "10.1.0.4", "h1", "t", "", {"app": "db"}))
        upstream.revision = 3
        released = {"kind": "address_released", "name": "a", "network": "n", "ip": "10.1.0.3"}
        upstream.script = [
            {"revision": 3, "store_id": upstream.store_id, "changes": [released]},
            {"revision": 4, "store_id": upstream.store_id, "changes": []},
        ]
        task = asyncio.ensure_future(agent.follow(Loop("policy", restart=True, stuck_after=None)))
        try:
            # Refused once (left pending, shown in health), deleted with the next answer.
            await wait_until_async(lambda: agent.flow_forgetter.calls == [{"10.1.0.3"}])  # type: ignore[attr-defined]
            assert agent.flows_pending == set()
            assert agent.metrics.errors.labels("conntrack")._value.get() == 2
        finally:
            task.cancel()

    asyncio.run(scenario())


def test_a_refused_watch_keeps_its_place_in_the_feed() -> None:
    """romanad answering a watch 503 (its long polls all taken) is busy, not away: the
    loop watches again from where it was, without re-reading the whole state."""

    async def scenario() -> None:
        agent, upstream, _ = enforcer()
        upstream.revision = 4
        busy = Unavailable("4 watches are open, as many as romanad serves at once")
        upstream.script = [
            busy,
            busy,
            {"revision": 6, "store_id": upstream.store_id, "changes": []},
        ]
        task = asyncio.ensure_future(agent.follow(Loop("policy", restart=True, stuck_after=None)))
        try:
            await wait_until_async(lambda: agent.revision == 6, timeout=10)
            assert upstream.calls.count("policy_state") == 1
            assert upstream.calls.count("watch") >= 3
        finally:
            task.cancel()

    asyncio.run(scenario())


def test_a_table_found_changed_is_loaded_whole_and_health_says_so_until_it_is() -> None:
    async def scenario() -> None:
        agent, _, table = enforcer()
        await agent.load_state()
        await agent.admit(Endpoint("b", "10.1.0.4", "h1", "t", "", {"app": "db"}))
        table.problem = "set ingress_of: 0 instead of 1"
        table.refuse(1)  # the first repair fails: the table is not intact, and says why
        assert await agent.check() == "set ingress_of: 0 instead of 1"
        health = agent.health()["table"]
        assert not health["intact"] and health["problem"].startswith("set ingress_of")
        assert health["repairs"] == 0 and agent.last_error is not None
        assert await agent.check() == "set ingress_of: 0 instead of 1"  # tried again
        health = agent.health()["table"]
        assert health["intact"] and health["repairs"] == 1 and health["checks"] == 2
        assert health["last_repairs"][-1]["found_by"] == "check"
        assert verdicts(table) == {"10.1.0.4"}  # the whole ruleset, loaded again
        assert await agent.check() is None and agent.health()["table"]["repairs"] == 1

    asyncio.run(scenario())
