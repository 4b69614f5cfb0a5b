"""Deleting a released IP's tracked connections (``romana.netlink.conntrack``) against the
kernel's conntrack in a throwaway namespace: both ways (two filtered dumps per address,
one walk of the table) delete exactly the flows an address started or was sent, and
nothing else; the agent's sweep reports every source it saw and deletes exactly the
condemned addresses' flows. (conntrack_bench.py measures it: tests/test_benchmarks.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from .conntrack_lab import FLOW_HELPERS, tracking_netns

pytestmark = pytest.mark.root

INSIDE = (
    FLOW_HELPERS
    + """
import json, socket, sys
from romana.netlink.conntrack import forget_flows

results = {}
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # flows of nobody concerned
    for i in range(200):
        s.sendto(b"x", ("127.2.0.1", 5000 + i))
unrelated = count()
for one_walk in (False, True):
    plant("127.0.5.1", 3, 2)
    plant("127.0.5.2", 1, 4)
    plant("127.0.5.3", 2, 2)
    before = count()
    first = forget_flows(["127.0.5.1"], one_walk)
    rest = forget_flows(["127.0.5.2", "127.0.5.3", "127.0.5.4"], one_walk)
    results[str(one_walk)] = [before - unrelated, first, rest, count() - unrelated]
print(json.dumps(results))
"""
)


@pytest.fixture
def netns() -> Iterator[str]:
    with tracking_netns("ct") as name:
        yield name


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


SWEEP = (
    FLOW_HELPERS
    + """
import json, socket
from romana.netlink.conntrack import sweep_flows

plant("127.0.5.1", 3, 2)
plant("127.0.5.2", 1, 4)
plant("127.0.5.3", 2, 0)
asked = []
def condemned(ip):
    asked.append(ip)
    return ip in ("127.0.5.1", "127.0.5.3")
swept = sweep_flows(condemned)
again = sweep_flows(lambda ip: False)
print(json.dumps({
    "seen": sorted(swept.seen), "deleted": swept.deleted, "failed": sorted(swept.failed),
    "asked": sorted(asked), "left": count(), "seen_after": sorted(again.seen),
}))
"""
)


def test_the_sweep_deletes_the_condemned_and_reports_every_source(netns: str) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", SWEEP],
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(done.stdout)
    # Original sources: the three, and 127.0.0.1 (flows sent to them); reply sources: the
    # three (flows sent to them) and 127.1.0.1 (replies to the flows they started).
    sources = ["127.0.0.1", "127.0.5.1", "127.0.5.2", "127.0.5.3", "127.1.0.1"]
    assert out["seen"] == sources and out["asked"] == sources  # each asked about once
    assert out["deleted"] == 5 + 2 and out["failed"] == []
    assert out["left"] == 5  # 127.0.5.2's flows only
    assert out["seen_after"] == ["127.0.0.1", "127.0.5.2", "127.1.0.1"]
