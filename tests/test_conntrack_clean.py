"""Which CNI ADDs may skip deleting their address's tracked flows (``maybe_tracked`` in
``romana.agent.policy``), against the kernel's conntrack in a throwaway namespace: the
agent's policy loop (scripted romanad, in-memory nft table) runs inside the namespace with
the real sweep and the real forgetter, the latter counted, and flows are made for pod
addresses on loopback before and between its steps.

What must hold: the start-up sweep deletes the flows of unheld addresses and keeps held
ones'; after it a fresh address's ADD makes no dump, but an address that may carry flows
(its previous holder's release not processed here, a holder the feed showed) still dumps,
and the dump deletes them; after a DEL here the address is clean again; a block this host
gains is swept before its ADDs skip; a sweep that fails leaves a dump at every ADD."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conntrack_lab import FLOW_HELPERS, tracking_netns

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parent.parent
# Shared by every scenario: run inside the namespace, print one JSON object. The fakes are
# the tests' own (tests/fakes), so the checkout goes first on the script's path.
PRELUDE = (
    FLOW_HELPERS
    + f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
"""
    + """
import asyncio, json, socket
from prometheus_client import CollectorRegistry
from romana.agent.policy import PolicyEnforcer
from romana.netlink.conntrack import forget_flows, sweep_flows
from romana.policy.model import Endpoint
from romana.supervise import Loop
from tests.fakes.agent import FakeNftTable, FakeUpstream
from tests.wait import wait_until_async

class Dumps:
    # The real forgetter, counted: each call is the dumps of one deletion.
    def __init__(self):
        self.calls = []
    def __call__(self, ips):
        ips = sorted(ips)
        self.calls.append(ips)
        return forget_flows(ips)

def failing_sweep(condemned):
    raise OSError(95, "injected: conntrack refused the walk")

# The pods live on loopback here, which the local table routes whatever the main table
# says; "routing drops this block's unheld addresses" is therefore given (routed=...).
# The real lookup (romana.agent.route_table.routing_drops) is tested in test_agent_route_table.py.
def agent(sweeper=sweep_flows, endpoints=(("a", "127.0.5.3"),), routed=True):
    upstream = FakeUpstream()
    upstream.policy_document = {
        "hosts": {"h1": "192.168.0.1", "h2": "192.168.0.2"},
        "endpoints": [
            {"name": n, "ip": ip, "host": "h1", "tenant": "t", "segment": "", "labels": {}}
            for n, ip in endpoints
        ],
        "blocks": [["127.0.5.0/29", "h1", "t", ""], ["127.0.7.0/29", "h2", "t", ""]],
        "policies": [],
    }
    dumps = Dumps()
    enforcer = PolicyEnforcer(
        "h1", upstream, FakeNftTable(), CollectorRegistry(),
        flow_forgetter=dumps, flow_sweeper=sweeper, route_drops=lambda ip: routed,
    )
    return enforcer, upstream, dumps

def pod(name, ip):
    return Endpoint(name, ip, "h1", "t", "", {})

out = {}
"""
)

SWEEP_THEN_FRESH_ADD = """
async def main():
    plant("127.0.5.4", 2, 2)   # unheld address of this host's block: swept
    plant("127.0.5.3", 3, 3)   # held by a: kept
    plant("127.0.7.4", 1, 1)   # unheld address of another host's block: swept
    plant("127.0.9.9", 5, 0)   # outside every block: left alone
    out["before"] = count()
    enforcer, _, dumps = agent()
    await enforcer.load_state()
    out["after_sweep"] = count()
    out["sweep"] = enforcer.health()["flows"]
    await enforcer.admit(pod("b", "127.0.5.5"))
    out["calls"] = dumps.calls
    out["skipped"] = enforcer.metrics.dumps_skipped._value.get()
    out["tracked"] = sorted(enforcer.maybe_tracked)
asyncio.run(main())
print(json.dumps(out))
"""

UNPROCESSED_RELEASE_DUMPS = """
async def main():
    plant("127.0.5.3", 3, 3)
    enforcer, upstream, dumps = agent()
    upstream.revision = 2
    allocated = {"kind": "address_allocated", "name": "x", "network": "n", "ip": "127.0.5.6"}
    upstream.script = [{"revision": 3, "store_id": upstream.store_id, "changes": [allocated]}]
    task = asyncio.ensure_future(enforcer.follow(Loop("policy", restart=True, stuck_after=None)))
    try:
        await wait_until_async(
            lambda: enforcer.inputs is not None and "x" in enforcer.inputs.endpoints, 10
        )
        plant("127.0.5.6", 2, 1)  # x, which the feed showed, sends and receives
        held = count()
        # romanad gives a's address to "new" before this host saw a's release.
        await enforcer.admit(pod("new", "127.0.5.3"))
        out["after_first"] = [held - count(), list(dumps.calls)]
        # Likewise x's, known only from the feed.
        await enforcer.admit(pod("other", "127.0.5.6"))
        out["after_second"] = [held - count(), list(dumps.calls)]
        out["skipped"] = enforcer.flow_dumps_skipped
    finally:
        task.cancel()
asyncio.run(main())
print(json.dumps(out))
"""

DEL_THEN_ADD = """
async def main():
    enforcer, _, dumps = agent()
    await enforcer.load_state()
    base = count()
    await enforcer.admit(pod("b", "127.0.5.6"))  # fresh: skipped
    plant("127.0.5.6", 2, 2)
    out["planted"] = count() - base
    await enforcer.forget("b")                   # DEL here: dumps and deletes
    out["after_del"] = [count() - base, list(dumps.calls)]
    await enforcer.admit(pod("c", "127.0.5.6"))  # clean again: skipped
    out["after_add"] = [count() - base, list(dumps.calls)]
    out["skipped"] = enforcer.flow_dumps_skipped
    out["tracked"] = sorted(enforcer.maybe_tracked)
asyncio.run(main())
print(json.dumps(out))
"""

BLOCK_GAINED = """
async def main():
    # Flows towards an address of a block that belongs elsewhere, then comes to this host.
    plant("127.0.6.2", 2, 2)
    enforcer, upstream, dumps = agent()
    await enforcer.load_state()
    out["kept_by_start_sweep"] = count()  # not in any block yet: not swept
    upstream.revision = 2
    assigned = {"kind": "block_assigned", "cidr": "127.0.6.0/29", "host": "h1",
                "tenant": "t", "segment": "", "network": "n"}
    upstream.script = [{"revision": 3, "store_id": upstream.store_id, "changes": [assigned]}]
    # Before the feed shows the block, an ADD in it is not known clean: it dumps.
    await enforcer.admit(pod("early", "127.0.6.3"))
    task = asyncio.ensure_future(enforcer.follow(Loop("policy", restart=True, stuck_after=None)))
    try:
        await wait_until_async(
            lambda: (enforcer.sweep["last"] or {}).get("why") == "block gained", 10
        )
        out["after_gain_sweep"] = count()
        await enforcer.admit(pod("b", "127.0.6.2"))
        await enforcer.admit(pod("c", "127.0.6.3"))  # held by "early" since: dumps
        out["calls"] = dumps.calls
        out["skipped"] = enforcer.flow_dumps_skipped
    finally:
        task.cancel()
asyncio.run(main())
print(json.dumps(out))
"""

NOT_ROUTED_OR_NOT_OURS = """
async def main():
    # A block routing does not drop yet (the route loop has not programmed it).
    enforcer, _, dumps = agent(routed=False)
    await enforcer.load_state()
    await enforcer.admit(pod("b", "127.0.5.5"))
    out["unrouted_calls"] = dumps.calls
    out["unrouted_clean_blocks"] = enforcer.health()["flows"]["clean_blocks"]
    # A routed block, but the pod's interface is another plugin's (IPAM mode).
    enforcer, _, dumps = agent()
    await enforcer.load_state()
    await enforcer.admit(pod("c", "127.0.5.6"), routed_here=False)
    out["ipam_calls"] = dumps.calls
    out["skipped"] = enforcer.flow_dumps_skipped
asyncio.run(main())
print(json.dumps(out))
"""

FAILED_SWEEP = """
async def main():
    plant("127.0.5.4", 2, 2)
    enforcer, _, dumps = agent(sweeper=failing_sweep)
    await enforcer.load_state()
    out["left"] = count()                        # nothing swept
    await enforcer.admit(pod("b", "127.0.5.5"))
    await enforcer.admit(pod("c", "127.0.5.4"))  # the planted flows go with this dump
    out["after"] = count()
    out["calls"] = dumps.calls
    out["skipped"] = enforcer.flow_dumps_skipped
    out["health"] = enforcer.health()["flows"]
    out["errors"] = enforcer.metrics.errors.labels("conntrack")._value.get()
asyncio.run(main())
print(json.dumps(out))
"""

ADD_DURING_A_SWEEP = """
import threading
walking, go_on = threading.Event(), threading.Event()
sweeps = []

def held_up_sweep(condemned):
    # The second sweep (the gained block's) waits, mid-walk, for the test.
    sweeps.append(1)
    if len(sweeps) == 2:
        walking.set()
        go_on.wait()
    return sweep_flows(condemned)

async def main():
    enforcer, upstream, dumps = agent(sweeper=held_up_sweep)
    assigned = {"kind": "block_assigned", "cidr": "127.0.6.0/29", "host": "h1",
                "tenant": "t", "segment": "", "network": "n"}
    upstream.script = [{"revision": 3, "store_id": upstream.store_id, "changes": [assigned]}]
    task = asyncio.ensure_future(enforcer.follow(Loop("policy", restart=True, stuck_after=None)))
    try:
        await wait_until_async(walking.is_set, 10)
        # 127.0.5.5 is clean, but the walking sweep started while it was unheld.
        add = asyncio.ensure_future(enforcer.admit(pod("b", "127.0.5.5")))
        await wait_until_async(lambda: "b" in enforcer.admitted, 10)
        out["done_before_the_sweep"] = add.done()
        go_on.set()
        await add
        out["calls"] = dumps.calls
        out["skipped"] = enforcer.flow_dumps_skipped
        out["tracked"] = sorted(enforcer.maybe_tracked)
    finally:
        go_on.set()
        task.cancel()
asyncio.run(main())
print(json.dumps(out))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    with tracking_netns("cc") as name:
        yield name


def inside(netns: str, scenario: str) -> dict[str, Any]:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", PRELUDE + scenario],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.splitlines()[-1]))


def test_the_sweep_deletes_unheld_flows_and_a_fresh_add_makes_no_dump(netns: str) -> None:
    out = inside(netns, SWEEP_THEN_FRESH_ADD)
    assert out["before"] == 4 + 6 + 2 + 5
    assert out["after_sweep"] == 6 + 5  # a's and the flows outside every block stay
    sweep = out["sweep"]
    assert sweep["swept"] is True and sweep["sweeps"]["last"]["deleted"] == 6
    # Sources seen: the four planted addresses, 127.1.0.1 (replies to the flows they
    # started) and 127.0.0.1 (the flows sent to them).
    assert sweep["sweeps"]["last"]["seen"] == 6
    assert out["calls"] == [] and out["skipped"] == 1  # no dump for 127.0.5.5
    assert out["tracked"] == ["127.0.5.3", "127.0.5.5"]  # the held, now with b's


def test_an_add_whose_previous_holder_may_have_flows_dumps(netns: str) -> None:
    out = inside(netns, UNPROCESSED_RELEASE_DUMPS)
    assert out["after_first"] == [6, [["127.0.5.3"]]]  # a's flows deleted by the dump
    assert out["after_second"] == [9, [["127.0.5.3"], ["127.0.5.6"]]]
    assert out["skipped"] == 0


def test_an_add_after_a_del_here_makes_no_dump(netns: str) -> None:
    out = inside(netns, DEL_THEN_ADD)
    assert out["planted"] == 4
    assert out["after_del"] == [0, [["127.0.5.6"]]]  # only the DEL dumped
    assert out["after_add"] == [0, [["127.0.5.6"]]]
    assert out["skipped"] == 2
    assert out["tracked"] == ["127.0.5.3", "127.0.5.6"]


def test_a_gained_block_is_swept_before_its_adds_skip(netns: str) -> None:
    out = inside(netns, BLOCK_GAINED)
    assert out["kept_by_start_sweep"] == 4
    assert out["after_gain_sweep"] == 0  # 127.0.6.2 unheld in the gained block: swept
    assert out["calls"] == [["127.0.6.3"], ["127.0.6.3"]]  # "b" skipped, "c" dumped
    assert out["skipped"] == 1


def test_a_failed_sweep_leaves_a_dump_at_every_add(netns: str) -> None:
    out = inside(netns, FAILED_SWEEP)
    assert out["left"] == 4
    assert out["calls"] == [["127.0.5.5"], ["127.0.5.4"]]
    assert out["after"] == 0 and out["skipped"] == 0
    assert out["health"]["swept"] is False and out["health"]["sweeps"]["failed"] == 1
    assert out["errors"] == 1


def test_an_add_during_a_sweep_waits_for_it_and_dumps(netns: str) -> None:
    """A sweep condemns what no endpoint held when it began: an ADD that skipped its dump
    meanwhile would let the pod start while the sweep may still delete its first flows."""
    out = inside(netns, ADD_DURING_A_SWEEP)
    assert out["done_before_the_sweep"] is False
    assert out["calls"] == [["127.0.5.5"]] and out["skipped"] == 0
    assert out["tracked"] == ["127.0.5.3", "127.0.5.5"]


def test_no_skip_where_routing_does_not_drop_or_another_plugin_routes(netns: str) -> None:
    """Flows to an unheld address are confirmed if routing forwards it: a block not yet
    routed unreachable here, or an IPAM-mode pod whose main plugin keeps its routes after
    our DEL, cannot be known clean."""
    out = inside(netns, NOT_ROUTED_OR_NOT_OURS)
    assert out["unrouted_calls"] == [["127.0.5.5"]] and out["unrouted_clean_blocks"] == 0
    assert out["ipam_calls"] == [["127.0.5.6"]] and out["skipped"] == 0
