"""Pod churn (allocations and releases) over three romanad replicas on a three-member etcd
cluster, with one replica paused (SIGSTOP) while the others assign and free blocks, and
another killed with SIGKILL and restarted: no replica ends by itself (a catch-up page that
assigns a block and frees it again once made them exit 70), and afterwards every replica
holds exactly the acknowledged allocations, the same feed, and the routes a tracker
rebuilt from that feed computes. Real processes, stopped by PID."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from romana.ipam import Engine, fact_from_json
from romana.routes import RouteTracker

from .etcd import EtcdMember
from .replicas import HOSTS, Replica, Storm, loopback_replicas

pytestmark = [pytest.mark.daemons, pytest.mark.etcd]

OPERATIONS = 600
RELEASES = 0.25  # of operations: a release of a name held, when there is one
TENANTS = 16  # many owners: blocks are assigned and emptied all the time


def rebuilt_routes(feed: list[dict[str, Any]]) -> dict[str, Any]:
    """Every host's routes as a tracker built from scratch over the replayed feed has them."""
    engine = Engine.replay(
        fact_from_json({k: v for k, v in c.items() if k != "revision"}) for c in feed
    )
    tracker = RouteTracker(lambda: engine.state)
    return {h: tracker.get(f"host:{h}").to_json() for h in HOSTS}


def served_routes(replica: Replica) -> dict[str, Any]:
    with replica.client() as c:
        sets = {h: c.get("/routes", params={"host": h}).json() for h in HOSTS}
    return {
        h: {k: v for k, v in s.items() if k not in ("revision", "store_id")}
        for h, s in sets.items()
    }


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[list[EtcdMember], list[Replica]]]:
    with loopback_replicas(tmp_path) as cluster:  # a paused replica is woken, then killed
        yield cluster


def test_churn_with_a_replica_paused_and_one_killed_ends_no_replica(
    cluster: tuple[list[EtcdMember], list[Replica]],
) -> None:
    _, replicas = cluster
    r1, r2, r3 = replicas
    churn = Storm(
        replicas, OPERATIONS, HOSTS, workers=16, tenants=TENANTS, releases=RELEASES, seed=23
    ).start()
    churn.wait_for(100)
    churn.set_aside(2)
    assert r3.proc is not None
    os.kill(r3.proc.pid, signal.SIGSTOP)
    try:
        # While r3 sleeps: a pod of a new tenant started and stopped (its block assigned
        # and freed), the churn goes on, and an address r3 had seen is released.
        with r1.client() as c:
            assert c.post("/address", json={"name": "sleeper", "host": "h0", "tenant": "new"})
            assert c.delete("/address", params={"name": "sleeper"}).status_code == 200
            woke = c.post("/address", json={"name": "woke", "host": "h1", "tenant": "new2"})
            assert woke.status_code == 200
        churn.wait_for(churn.progress() + 150)
    finally:
        os.kill(r3.proc.pid, signal.SIGCONT)
    with r3.client() as c:  # read-your-writes after the catch-up
        assert c.get("/address/woke").json()["ip"] == woke.json()["ip"]
        assert c.get("/address/sleeper").status_code == 404
    churn.aside.discard(2)
    churn.wait_for(churn.progress() + 100)
    r2.kill()
    churn.wait_for(churn.progress() + 80)
    r2.start()
    churn.wait(120)

    exited = {r.name: r.proc.poll() for r in replicas if r.proc is not None}
    assert exited == {"r1": None, "r2": None, "r3": None}, exited  # nobody ended by itself
    print(f"held {len(churn.held)}, released {len(churn.released)}, retried {churn.errors}")
    assert churn.failed == []
    assert len(churn.released) > OPERATIONS // 10
    held = {**churn.held, "woke": woke.json()["ip"]}
    assert len(set(held.values())) == len(held)  # no IP handed out twice
    for replica in replicas:
        assert replica.addresses() == held, replica.name
    feeds = [replica.feed() for replica in replicas]
    assert feeds[0] == feeds[1] == feeds[2]
    kinds = Counter(f["kind"] for f in feeds[0])
    assert kinds["block_freed"] > 0 and kinds["address_released"] >= len(churn.released)
    expected = rebuilt_routes(feeds[0])
    for replica in replicas:
        assert served_routes(replica) == expected, replica.name
