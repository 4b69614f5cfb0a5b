"""Deleting a released IP's tracked connections (``romana.netlink.conntrack``) against the
kernel's conntrack in a throwaway namespace: both ways (two filtered dumps per address,
one walk of the table) delete exactly the flows an address started or was sent, and
nothing else; and the benchmarks that measure it and the policy path run at a tiny size,
so they cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

INSIDE = """
import json, socket, sys
from romana.netlink.conntrack import forget_flows

def count():
    with open("/proc/sys/net/netfilter/nf_conntrack_count") as f:
        return int(f.read())

def touched(address, started, received):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        for i in range(started):
            s.sendto(b"x", ("127.1.0.1", 3000 + i))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(received):
            s.sendto(b"x", (address, 4000 + i))

results = {}
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # flows of nobody concerned
    for i in range(200):
        s.sendto(b"x", ("127.2.0.1", 5000 + i))
unrelated = count()
for one_walk in (False, True):
    touched("127.0.5.1", 3, 2)
    touched("127.0.5.2", 1, 4)
    touched("127.0.5.3", 2, 2)
    before = count()
    first = forget_flows(["127.0.5.1"], one_walk)
    rest = forget_flows(["127.0.5.2", "127.0.5.3", "127.0.5.4"], one_walk)
    results[str(one_walk)] = [before - unrelated, first, rest, count() - unrelated]
print(json.dumps(results))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"rt{os.getpid() % 100000}ct"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        inside = ["ip", "netns", "exec", name]
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True)
        rule = "add table inet t; add chain inet t out { type filter hook output priority 0; };"
        subprocess.run([*inside, "nft", rule + " add rule inet t out ct state new accept"])
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_both_ways_delete_exactly_the_flows_of_the_addresses(netns: str) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", INSIDE],
        capture_output=True,
        text=True,
        check=True,
    )
    for one_walk, (tracked, first, rest, left) in json.loads(done.stdout).items():
        assert tracked == 14, one_walk  # 5 + 5 + 4 flows of the three addresses
        assert (first, rest, left) == (5, 9, 0), one_walk  # the 200 others are all there


def run_benchmark(script: str, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def test_the_conntrack_benchmark_runs_at_a_tiny_size() -> None:
    figures = run_benchmark("conntrack_bench.py", "--entries", "300", "--repeat", "1")
    assert figures["flows_deleted_per_run"] == [50]
    assert figures["burst_chooses_one_walk"] is True  # few flows tracked: one walk wins


def test_the_policy_benchmark_runs_at_a_tiny_size() -> None:
    figures = run_benchmark(
        "policy_bench.py",
        *("--endpoints", "100", "--namespaces", "5", "--hosts", "2", "--policies", "10"),
        *("--changes", "2", "--repeat", "1", "--wide", "20"),
    )
    wide = figures["end_to_end"]["wide_policy_then_other_namespace_deny_all"]  # type: ignore[index]
    assert wide["refused"] == [] and wide["elements"] >= 40  # 20 blocks + 20 ports, 1 rule
    assert figures["end_to_end"]["table_back_after_nft_flush_ruleset"]["n"] == 2  # type: ignore[index]
