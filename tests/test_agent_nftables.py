"""The agent's nftables table against the real nft in a throwaway namespace: what
``NftTable.check`` says of a table as loaded (nothing, for every shape of policy: a false
alarm would reload the table forever) and of a table someone changed (each change named),
and what ``TableEvents`` reports of the kernel's notifications (only other processes'
transactions on our table)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from romana.agent.nftables import NftTable
from romana.policy.compile import compile_host

from .test_policy_units import k8s, populated

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def netns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A namespace and an ``nft`` wrapper that runs there (as the agent runs nft)."""
    name = f"rt{os.getpid() % 100000}nftchk"
    subprocess.run(["ip", "netns", "add", name], check=True)
    wrapper = tmp_path_factory.mktemp("nft") / "nft"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {name} nft "$@"\n')
    wrapper.chmod(0o755)
    try:
        yield name, str(wrapper)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def nft(netns: str, *args: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", *args], capture_output=True, text=True, check=True
    )
    return done.stdout


SHAPES = st.lists(
    st.tuples(st.sampled_from(["blocks", "ports", "named", "pods", "mixed"]), st.integers(1, 40)),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(shapes=SHAPES)
def test_a_table_as_loaded_checks_clean(
    netns: tuple[str, str], shapes: list[tuple[str, int]]
) -> None:
    engine, _ = populated()
    for i, (shape, n) in enumerate(shapes):
        blocks = [{"ipBlock": {"cidr": f"172.16.{2 * j}.0/24"}} for j in range(n)]
        if shape in ("blocks", "mixed") and n > 1:  # adjacent ranges and an except
            blocks.append({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}})
        ports = [{"port": 1000 + 3 * j, "endPort": 1001 + 3 * j} for j in range(n)]
        named = [{"port": "http"}, {"port": 53, "protocol": "UDP"}]
        pods = [{"podSelector": {"matchLabels": {"app": a}}} for a in ("web", "db")[: 1 + n % 2]]
        rule = {
            "blocks": {"from": blocks},
            "ports": {"ports": ports},
            "named": {"ports": named},
            "pods": {"from": pods},
            "mixed": {"from": blocks + pods, "ports": ports + named},
        }[shape]
        extra = k8s("t0", f"shape{i}", {"podSelector": {}, "ingress": [rule]})
        engine.add_policies([extra], replace=True)  # type: ignore[list-item]
    table = NftTable(netns[1], pod_interfaces="rmn*")
    table.reload(compile_host(engine.policy_inputs(), "h1"))
    assert table.check() is None


def test_every_change_to_the_table_is_named(netns: tuple[str, str]) -> None:
    engine, _ = populated()
    table = NftTable(netns[1], pod_interfaces="rmn*")
    ruleset = compile_host(engine.policy_inputs(), "h1")
    table.reload(ruleset)
    name = netns[0]
    elements = sorted(ruleset.sets["ingress_of"].elements)
    nft(
        name,
        "delete",
        "element",
        "inet",
        "romana",
        "ingress_of",
        f"{{ {elements[0].split(' : ')[0]} }}",
    )
    assert table.check() == f"set ingress_of: {len(elements) - 1} instead of {len(elements)}"
    table.reload(ruleset)
    nft(name, "flush", "chain", "inet", "romana", "antispoof")
    assert table.check() == "chain antispoof: 0 instead of 1"
    table.reload(ruleset)
    nft(name, "add", "chain", "inet", "romana", "extra")
    assert table.check() == "chain extra: not ours"
    table.reload(ruleset)
    nft(name, "delete", "table", "inet", "romana")
    assert table.check() == "table inet romana is missing"
    table.reload(ruleset)
    assert table.check() is None


EVENTS = """
import asyncio, json
from romana.agent.nftables import NftTable
from romana.agent.nftevents import TableEvents
from romana.policy.compile import compile_host
from romana.policy.inputs import PolicyInputs

async def main() -> None:
    table = NftTable("nft")
    events = TableEvents("romana", table.own_pids)
    table.reload(compile_host(PolicyInputs(), "h1"))  # the agent's own: never reported
    print("loaded", flush=True)
    while True:
        change = await events.next()
        print(json.dumps([change.pid, change.process, change.lost]), flush=True)

asyncio.run(main())
"""


def test_notifications_report_other_processes_changes_to_our_table_only(
    netns: tuple[str, str], tmp_path: Path
) -> None:
    name = netns[0]
    script = tmp_path / "events.py"
    script.write_text(EVENTS)
    watcher = subprocess.Popen(
        ["ip", "netns", "exec", name, sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None and watcher.stdout.readline().strip() == "loaded"
        nft(name, "add", "table", "inet", "other")  # another table: not reported
        nft(name, "add", "chain", "inet", "other", "c")
        nft(name, "flush", "ruleset")  # ours among others: reported once
        pid, process, lost = json.loads(watcher.stdout.readline())
        assert (process, lost) == ("nft", False) and pid > 0
        nft(name, "add", "table", "inet", "romana")  # made again by someone else
        assert json.loads(watcher.stdout.readline())[1] == "nft"
    finally:
        watcher.kill()
        watcher.wait()
        nft(name, "flush", "ruleset")
