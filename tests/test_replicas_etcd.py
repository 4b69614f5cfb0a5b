"""Three romanad replicas on a three-member etcd cluster, all real processes stopped by
PID: allocations spread over every replica, the etcd leader and a replica killed with
SIGKILL mid-storm, a member's link cut mid-storm (members in network namespaces on a
bridge). After each: every acknowledged allocation is on every replica, no IP twice, no
name allocated twice in the log, and every replica's changes feed is the same."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from .etcd import EtcdMember, etcd_cluster
from .lab import Lab
from .replicas import HOSTS, Replica, Storm, loopback_replicas, running_replicas
from .wait import wait_until

pytestmark = [pytest.mark.daemons, pytest.mark.etcd]

PUBLISHER = str(Path(sys.executable).parent / "romana-publisher")


def check_agreement(replicas: list[Replica], storm: Storm) -> None:
    print(f"errors retried: {dict(storm.errors)}; longest gap {storm.longest_gap():.2f} s")
    assert storm.failed == [], f"never acknowledged: {storm.failed[:5]} ({storm.errors})"
    assert len(storm.held) == storm.count
    assert len(set(storm.held.values())) == storm.count  # no IP handed out twice
    for replica in replicas:  # read-your-writes: no waiting for a replica to catch up
        assert replica.addresses() == storm.held, replica.name
    feeds = [replica.feed() for replica in replicas]
    assert feeds[0] == feeds[1] == feeds[2]  # the same facts in the same order
    allocated = Counter(f["name"] for f in feeds[0] if f["kind"] == "address_allocated")
    assert set(allocated) == set(storm.held) and max(allocated.values()) == 1
    routes = []
    for replica in replicas:
        with replica.client() as c:
            sets = [c.get("/routes", params={"host": h}).json() for h in HOSTS]
            sets.append(c.get("/routes", params={"group": "/"}).json())
            routes.append([{k: v for k, v in s.items() if k != "revision"} for s in sets])
    assert routes[0] == routes[1] == routes[2]


def store_health(replica: Replica) -> dict[str, object]:
    with replica.client() as c:
        return dict(c.get("/healthz").json()["store"])


@pytest.fixture
def loopback_cluster(tmp_path: Path) -> Iterator[tuple[list[EtcdMember], list[Replica]]]:
    with loopback_replicas(tmp_path) as cluster:
        yield cluster


def test_two_thousand_allocations_over_three_replicas(
    loopback_cluster: tuple[list[EtcdMember], list[Replica]],
) -> None:
    _, replicas = loopback_cluster
    storm = Storm(replicas, 2000, HOSTS).start()
    storm.wait()
    check_agreement(replicas, storm)
    health = [store_health(r) for r in replicas]
    assert sum(int(str(h["conflicts"])) for h in health) > 0  # they did race
    # The BIRD publisher, unchanged, renders the same configuration from any replica.
    rendered = []
    for replica in replicas:
        out = replica.log.with_suffix(".bird.conf")
        publisher = [PUBLISHER, "--url", replica.url, "--output", str(out), "--once"]
        done = subprocess.run(
            [*publisher, "--router", "rack-1", "--local-as", "65001"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        rendered.append(out.read_text())
    assert rendered[0] == rendered[1] == rendered[2]
    assert "protocol bgp" in rendered[0]
    assert all(h["kind"] == "etcd" and h["shared"] for h in health)
    with replicas[0].client() as c:
        metrics = c.get("/metrics").text
    conflicts = re.search(r"^romana_store_conflicts_total (\S+)$", metrics, re.M)
    assert conflicts is not None and float(conflicts.group(1)) == health[0]["conflicts"]
    assert all(int(str(h["appends"])) > 0 for h in health)  # every replica wrote


def test_the_etcd_leader_and_a_replica_killed_mid_storm(
    loopback_cluster: tuple[list[EtcdMember], list[Replica]],
) -> None:
    members, replicas = loopback_cluster
    storm = Storm(replicas, 2000, HOSTS).start()
    storm.wait_for(300)
    leader = next(m for m in members if m.is_leader())
    leader.kill()  # SIGKILL: no graceful handover
    killed_at = time.monotonic()
    storm.wait_for(storm.progress() + 300)
    resumed = min(t for t in storm.successes if t > killed_at)
    replicas[1].kill()
    storm.wait_for(storm.progress() + 300)
    leader.start()
    replicas[1].start()
    wait_until(leader.healthy, 20, what="the old leader to rejoin")
    storm.wait()
    check_agreement(replicas, storm)
    # How long writes paused is a figure, not a pass mark (the machine may be loaded).
    print(f"first write {resumed - killed_at:.2f} s after the leader's kill")


def run_in(ns: str, *cmd: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *cmd],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    return done.stdout


@pytest.mark.root
def test_a_member_cut_off_mid_storm_and_restored(tmp_path: Path) -> None:
    with Lab("ha", tmp_path) as lab:
        lan = lab.netns("lan")
        lab.bridge(lan, "br0")
        placed = []
        for i, name in enumerate(["e1", "e2", "e3", "rd"]):
            ns = lab.netns(name)
            lab.veth(ns, "eth0", lan, f"p{i}")
            lan.ip("link", "set", f"p{i}", "master", "br0")
            ns.ip("addr", "add", f"192.168.0.{201 + i}/24", "dev", "eth0")
            placed.append((f"192.168.0.{201 + i}", ns.name))
        clients = placed.pop()[1]
        with (
            etcd_cluster(placed=placed) as members,
            running_replicas(tmp_path, members, netns=clients) as replicas,
        ):
            storm = Storm(replicas, 2000, HOSTS).start()
            storm.wait_for(300)
            status = json.loads(
                run_in(
                    clients,
                    "etcdctl",
                    "--endpoints",
                    ",".join(m.url for m in members),
                    "endpoint",
                    "status",
                    "-w",
                    "json",
                )
            )
            leader_id = status[0]["Status"]["leader"]
            cut = next(
                m
                for m, s in zip(members, status, strict=True)
                if s["Status"]["header"]["member_id"] == leader_id
            )
            assert cut.netns is not None
            run_in(cut.netns, "ip", "link", "set", "eth0", "down")
            cut_at = time.monotonic()
            storm.wait_for(storm.progress() + 400)
            resumed = min(t for t in storm.successes if t > cut_at)
            run_in(cut.netns, "ip", "link", "set", "eth0", "up")
            wait_until(cut.healthy, 20, what="the cut member to rejoin")
            storm.wait()
            check_agreement(replicas, storm)
            print(f"first write {resumed - cut_at:.2f} s after the cut")
