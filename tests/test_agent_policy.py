"""The agent's policy loop on its failure paths, with a scripted romanad and an in-memory
policy table (``romana.testing``): what a resync keeps and drops, one endpoint per IP, and
that the reported revision never runs ahead of the table. (The real table and the real
romanad are in tests/test_policy_e2e.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from romana.agent.policy import PolicyEnforcer
from romana.errors import PolicyError
from romana.policy.k8s import NetworkPolicy
from romana.policy.model import Endpoint
from romana.supervise import Loop
from romana.testing import FakeNftTable, FakeUpstream

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


def enforcer() -> tuple[PolicyEnforcer, FakeUpstream, FakeNftTable]:
    upstream = FakeUpstream()
    upstream.policy_document = {
        "hosts": {"h1": "192.168.0.1"},
        "endpoints": [endpoint("a", "10.1.0.3", "web")],
        "blocks": [["10.1.0.0/29", "h1", "t", ""]],
        "policies": [DENY.to_json()],
    }
    table = FakeNftTable()
    agent = PolicyEnforcer("h1", upstream, table, CollectorRegistry())  # type: ignore[arg-type]
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
            await until(lambda: agent.revision == 5)
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

            await until(check, timeout=10)
            assert not ahead and table.refusals == 0  # the retry was refused, then loaded
            assert verdicts(table) == {"10.1.0.6"} and agent.last_error is None
        finally:
            task.cancel()

    asyncio.run(scenario())


async def until(predicate: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_a_pod_cannot_start_before_the_first_table() -> None:
    async def scenario() -> None:
        agent, _, _ = enforcer()
        agent.admit_timeout = 0.05
        with pytest.raises(Exception, match="not loaded yet"):
            await agent.admit(Endpoint("d", "10.1.0.7", "h1", "t", "", {}))

    asyncio.run(scenario())
