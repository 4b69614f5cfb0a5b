"""Outbound NAT (``nat_outgoing``): the map's fields, the compiled table, and real traffic.

Layout of the end-to-end tests (every namespace created here, removed afterwards)::

    outside 172.31.255.1/24 (and 172.30.0.1/16, a cluster range) ── sw ext0 172.31.255.254
    sw: bridge br0 192.168.9.1/24 ── h1 eth0 .11 (romana-agent)
                                  └─ h2 eth0 .12 (romana-agent)

``outside`` stands for the internet: it routes everything back through ``sw`` and runs a
tiny TCP server that answers each connection with the source address it saw. ``sw`` is
the fabric; it routes the pod network to the hosts (as BGP announcements would), so that
without NAT a pod reaches the outside too and the outside sees the pod's own address.
Pods are namespaces with a veth to their host, a /32 from romanad and a default route via
169.254.1.1, as in ``test_agent_e2e``. The pod network 10.78.0.0/16 is used by no other
test.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from romana.agent.nat import NatKeeper, NatPlan, NatTable, plan_from_topology, render
from romana.api.client import RomanaClient
from romana.errors import Internal, NotFound, RomanaError
from romana.ipam import Engine
from romana.topology import Topology, check, validate

from .daemon import Daemon
from .lab import Lab, Netns, romana_argv
from .wait import wait_until

NFT = shutil.which("nft")
needs_nft = pytest.mark.skipif(NFT is None, reason="needs nftables")

OUTSIDE = "172.31.255.1"  # the internet
IN_CLUSTER = "172.30.0.1"  # also in the outside namespace, but inside cluster_ranges
NODES = {"h1": "192.168.9.11", "h2": "192.168.9.12"}
PORT = 7000
CLUSTER_RANGES = ["192.168.9.0/24", "172.30.0.0/16"]


def topology(nat: bool | None, ranges: list[str] | None = CLUSTER_RANGES) -> dict[str, Any]:
    network: dict[str, Any] = {"name": "pods", "cidr": "10.78.0.0/16", "block_mask": 28}
    if nat is not None:
        network["nat_outgoing"] = nat
    doc: dict[str, Any] = {
        "networks": [network, {"name": "other", "cidr": "10.79.0.0/16"}],
        "topologies": [
            {
                "networks": ["pods", "other"],
                "map": [{"name": "rack-1", "routing": "block-host-routes", "groups": []}],
            }
        ],
    }
    if ranges is not None:
        doc["cluster_ranges"] = ranges
    return doc


# -- the map: validation and canonical form ----------------------------------------------


def test_old_maps_and_stored_snapshots_load_unchanged() -> None:
    """A map without the new fields is stored exactly as before (no NAT), and what a
    release before outbound NAT stored loads to the same document."""
    old = json.loads((Path(__file__).parent / "data" / "pre-areas.json").read_text())
    for stored in (old["snapshot"]["topology"], old["facts"][0]["topology"]):
        assert Topology.model_validate(stored).to_json() == stored
        assert not plan_from_topology(stored).enabled
    plain = topology(None, None)
    assert check(plain)[0].to_json() == plain


def test_defaults_spelled_out_are_stored_as_absent_and_ranges_canonical() -> None:
    spelled = topology(False, [])
    assert check(spelled)[0].to_json() == topology(None, None)
    messy = topology(True, [" 192.168.9.0/255.255.255.0", "172.30.0.0/16"])
    stored = check(messy)[0].to_json()
    assert stored["networks"][0]["nat_outgoing"] is True
    assert "nat_outgoing" not in stored["networks"][1]
    assert stored["cluster_ranges"] == ["172.30.0.0/16", "192.168.9.0/24"]  # sorted
    assert check(stored)[0].to_json() == stored  # canonical: a fixed point


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ({"nat_outgoing": "yes"}, "networks[0].nat_outgoing", "expected true or false"),
        ({"nat_outgoing": 1}, "networks[0].nat_outgoing", "expected true or false"),
        ({"cluster_ranges": "10.0.0.0/8"}, "cluster_ranges", "expected a list of CIDRs"),
        ({"cluster_ranges": ["10.0.0.1/8"]}, "cluster_ranges[0]", 'did you mean "10.0.0.0/8"'),
        ({"cluster_ranges": ["nope"]}, "cluster_ranges[0]", "is not an IPv4 CIDR"),
        ({"cluster_ranges": [7]}, "cluster_ranges[0]", "expected a CIDR"),
        ({"cluster_ranges": ["10.96.0.0/12"] * 2}, "cluster_ranges[1]", "listed twice"),
        ({"nat_outgoin": True}, "networks[0].nat_outgoin", 'did you mean "nat_outgoing"'),
        ({"cluster_range": []}, "cluster_range", 'did you mean "cluster_ranges"'),
    ],
)
def test_invalid_fields_are_reported_with_path_and_hint(
    change: dict[str, Any], path: str, message: str
) -> None:
    doc = topology(None, None)
    target = doc if "cluster" in next(iter(change)) else doc["networks"][0]
    target.update(change)
    errors = [p for p in validate(doc) if p.severity == "error"]
    assert [p.path for p in errors] == [path], errors
    assert message in str(errors[0])


def test_warnings_name_what_nat_would_translate_by_surprise() -> None:
    def warnings(doc: dict[str, Any]) -> list[str]:
        return [str(p) for p in validate(doc) if p.severity == "warning"]

    assert warnings(topology(True)) == []
    assert warnings(topology(False, None)) == []
    (alone,) = warnings(topology(True, None))
    assert alone.startswith("warning: networks[0].nat_outgoing: no cluster_ranges")
    inside, overlap = warnings(topology(True, ["10.78.1.0/24", "192.168.0.0/16", "192.168.9.0/24"]))
    assert "inside pod network" in inside and "overlaps 192.168.0.0/16" in overlap


def test_topology_show_marks_nat_networks_and_lists_cluster_ranges(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(json.dumps(topology(True)))
    romana = str(Path(sys.executable).parent / "romana")
    shown = subprocess.run(
        [romana, "topology", "show", str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},  # one line per network, however wide
    ).stdout
    assert "pods 10.78.0.0/16 (/28 blocks, outbound NAT), other 10.79.0.0/16 (/29 blocks)" in shown
    assert "cluster ranges (never translated) 172.30.0.0/16, 192.168.9.0/24" in shown
    as_json = subprocess.run(
        [romana, "topology", "show", "--json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    document = json.loads(as_json)
    assert document["cluster_ranges"] == ["172.30.0.0/16", "192.168.9.0/24"]
    assert document["networks"][0]["nat_outgoing"] is True


# -- the plan and the table --------------------------------------------------------------


def test_plan_translates_nat_networks_to_anything_but_pod_networks_and_cluster_ranges() -> None:
    """Read from the annotated map romanad serves (the agent's input)."""
    engine = Engine()
    engine.apply_topology(topology(True, ["192.168.9.0/25", "192.168.9.128/25", "10.0.0.0/8"]))
    engine.add_host("h1", NODES["h1"], {})
    plan = plan_from_topology(engine.topology_document())
    assert plan.networks == ("pods",)
    assert plan.sources == (IPv4Network("10.78.0.0/16"),)  # not "other": it did not ask
    # Every pod network (the other one too: pod-to-pod is never translated) and the
    # ranges, collapsed: 10.78 and 10.79 lie in 10.0.0.0/8, the two halves make a /24.
    assert plan.never_translated == (IPv4Network("10.0.0.0/8"), IPv4Network("192.168.9.0/24"))
    assert not plan_from_topology(topology(False)).enabled
    assert not plan_from_topology(None).enabled


def test_rendered_table_masquerades_only_nat_sources_to_the_outside() -> None:
    script = render(plan_from_topology(topology(True)))
    assert script.startswith("table ip romana-nat {}\ndelete table ip romana-nat\n")
    assert "type nat hook postrouting priority srcnat; policy accept;" in script
    assert "ip saddr @nat-sources ip daddr != @never-translated counter masquerade" in script
    assert render(NatPlan()) == "table ip romana-nat {}\ndelete table ip romana-nat\n"


@pytest.mark.root
@needs_nft
def test_table_loads_atomically_is_checked_against_the_kernel_and_goes(tmp_path: Path) -> None:
    """Real nft in a namespace of its own: load, load again (idempotent), a foreign edit
    found by check, and removal when nothing asks for NAT."""
    with Lab("nt", tmp_path) as lab:
        ns = lab.netns("node")
        nft = tmp_path / "nft"
        nft.write_text(f'#!/bin/sh\nexec ip netns exec {ns.name} {NFT} "$@"\n')
        nft.chmod(0o755)
        table = NatTable(str(nft))
        plan = plan_from_topology(topology(True))
        assert table.check(plan) == "table ip romana-nat is missing"
        assert table.load(plan) is None
        assert table.check(plan) is None
        assert table.load(plan) is None  # again: same table, no error
        listed = ns.exec("nft", "list", "table", "ip", "romana-nat").stdout
        assert listed.count("masquerade") == 1
        ns.exec("nft", "add", "element", "ip", "romana-nat", "never-translated", "{ 8.8.8.8 }")
        assert "set never-translated" in (table.check(plan) or "")
        ns.exec("nft", "add", "rule", "ip", "romana-nat", "postrouting", "accept")
        assert table.load(plan) is None
        assert table.check(plan) is None  # whole load: the foreign rule and element gone
        assert table.check(NatPlan()) is not None  # present though nothing asks
        assert table.load(NatPlan()) is None
        assert ns.exec("nft", "list", "tables").stdout.strip() == ""
        assert table.check(NatPlan()) is None
        assert table.load(NatPlan()) is None  # removing no table is no error


# -- end to end ---------------------------------------------------------------------------

SERVER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", %d))
s.listen(64)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode())
    c.close()
"""
PROBE = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    print(s.recv(64).decode())
"""


@dataclass
class Pod:
    ns: Netns
    ip: str
    host: str


class Cluster:
    def __init__(self, lab: Lab, romanad: Daemon, workdir: Path) -> None:
        self.lab, self.workdir = lab, workdir
        self.url = romanad.url
        self.client = RomanaClient(romanad.url)
        self.hosts: dict[str, Netns] = {}
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.pods: dict[str, Pod] = {}
        self.sw = sw = lab.switch("sw", "192.168.9.1/24")
        self.outside = outside = lab.netns("outside")
        for name, ip in NODES.items():
            self.hosts[name] = lab.host(name, f"{ip}/24", sw)
            self.client.add_host(name, ip, {})
        lab.veth(sw, "ext0", outside, "eth0")
        sw.ip("addr", "add", "172.31.255.254/24", "dev", "ext0")
        outside.ip("addr", "add", f"{OUTSIDE}/24", "dev", "eth0")
        outside.ip("addr", "add", f"{IN_CLUSTER}/16", "dev", "eth0")
        outside.ip("route", "add", "default", "via", "172.31.255.254")
        sw.ip("route", "add", "172.30.0.0/16", "via", OUTSIDE)
        for name in NODES:
            self.start_agent(name)
        self.pods["a"] = self.add_pod("a", "h1")
        self.pods["b"] = self.add_pod("b", "h2")
        self.route_pods_in_fabric()
        for ns in (outside, self.hosts["h2"], self.pods["b"].ns):
            self.serve(ns)

    def start_agent(self, name: str) -> None:
        self.agents[name] = self.lab.agent(
            self.hosts[name],
            name,
            self.url,
            serving=self.agent_socket(name),
            listen=f"unix:{self.agent_socket(name)}",
            no_policy=True,
            resync_interval=1,
        )

    def stop_agent(self, name: str) -> None:
        self.lab.stop(self.agents.pop(name))

    def agent_socket(self, name: str) -> Path:
        return self.workdir / f"agent-{name}.sock"

    def health(self, name: str) -> dict[str, Any]:
        transport = httpx.HTTPTransport(uds=str(self.agent_socket(name)))
        with httpx.Client(transport=transport, base_url="http://agent", timeout=5) as c:
            return c.get("/healthz").json()  # type: ignore[no-any-return]

    def metric(self, name: str, metric: str) -> float:
        transport = httpx.HTTPTransport(uds=str(self.agent_socket(name)))
        with httpx.Client(transport=transport, base_url="http://agent", timeout=5) as c:
            text = c.get("/metrics").text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(metric))

    def add_pod(self, pod: str, host: str) -> Pod:
        ip = self.client.allocate(pod, host)["ip"]
        ns = self.lab.endpoint(self.hosts[host], f"cali{pod}", f"pod-{pod}", ip)
        return Pod(ns, ip, host)

    def route_pods_in_fabric(self) -> None:
        """What BGP announcements would give the fabric: routes to each host's area."""
        for route in self.client.routes(group="rack-1")["routes"]:
            gateway = route["gateway"]
            assert gateway is not None, route  # a rack's routes lead to its hosts
            self.sw.ip("route", "replace", route["prefix"], "via", gateway)

    def serve(self, ns: Netns) -> None:
        self.lab.spawn(ns, sys.executable, "-S", "-c", SERVER % PORT)
        wait_until(lambda: f":{PORT}" in ns.exec("ss", "-Hltn").stdout, 10, what="the server")

    def source_seen(self, pod: str, destination: str) -> str:
        """The source address ``destination``'s server saw for a connection from ``pod``."""
        done = self.pods[pod].ns.exec(
            sys.executable, "-S", "-c", PROBE, destination, str(PORT), check=False
        )
        assert done.returncode == 0, f"{pod} -> {destination}: {done.stderr.strip()[-300:]}"
        return done.stdout.strip()

    def nat_table(self, name: str) -> str | None:
        shown = self.hosts[name].exec("nft", "list", "table", "ip", "romana-nat", check=False)
        return shown.stdout if shown.returncode == 0 else None

    def wait_nat(self, networks: list[str]) -> None:
        """Every agent reports the map's NAT in its kernel (and the table is there or not)."""
        for name in NODES:
            wait_until(
                lambda n=name: (
                    (h := self.health(n)["nat"])["in_sync"] and h["networks"] == networks
                ),
                15,
                what=f"{name}'s NAT to follow the map",
            )
            assert (self.nat_table(name) is not None) == bool(networks)


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if NFT is None or shutil.which("ss") is None:
        pytest.skip("needs nftables and iproute2")
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(request.param))
    socket = tmp_path / "romanad.sock"
    romanad = Daemon(tmp_path / "data", "--topology", str(path), socket=socket)
    romanad.start()
    try:
        with Lab("nat", tmp_path) as lab:
            c = Cluster(lab, romanad, tmp_path)
            try:
                yield c
            finally:
                c.client.close()
    finally:
        romanad.stop()


@pytest.mark.root
@pytest.mark.daemons
@pytest.mark.parametrize("cluster", [topology(True)], indirect=True)
def test_pods_reach_the_outside_with_their_nodes_address_and_each_other_with_their_own(
    cluster: Cluster,
) -> None:
    cluster.wait_nat(["pods"])
    a, b = cluster.pods["a"], cluster.pods["b"]
    assert cluster.source_seen("a", OUTSIDE) == NODES["h1"]
    assert cluster.source_seen("b", OUTSIDE) == NODES["h2"]
    # Pod to pod across nodes: never translated.
    assert cluster.source_seen("a", b.ip) == a.ip
    # Destinations in cluster_ranges: a node's address, and an outside one listed there.
    assert cluster.source_seen("a", NODES["h2"]) == a.ip
    assert cluster.source_seen("a", IN_CLUSTER) == a.ip
    table = cluster.nat_table("h1")
    assert table is not None and "packets 0 " not in table  # the rule did the work
    health = cluster.health("h1")["nat"]
    assert health["sources"] == ["10.78.0.0/16"]
    assert health["never_translated"] == ["10.78.0.0/15", "172.30.0.0/16", "192.168.9.0/24"]
    assert cluster.metric("h1", "romana_agent_nat_networks") == 1


@pytest.mark.root
@pytest.mark.daemons
@pytest.mark.parametrize("cluster", [topology(None)], indirect=True)
def test_nat_follows_the_map_is_repaired_and_survives_agent_restarts(cluster: Cluster) -> None:
    a = cluster.pods["a"]
    # No network asks: nothing is translated, and no table is made.
    cluster.wait_nat([])
    assert cluster.source_seen("a", OUTSIDE) == a.ip

    # Asked for by applying a new map: every agent loads the table.
    cluster.client.apply_topology(topology(True))
    cluster.wait_nat(["pods"])
    assert cluster.source_seen("a", OUTSIDE) == NODES["h1"]

    # Someone deletes it (e.g. an nftables service restart): loaded again.
    repairs = cluster.health("h1")["nat"]["repairs"]
    cluster.hosts["h1"].exec("nft", "delete", "table", "ip", "romana-nat")
    wait_until(lambda: cluster.nat_table("h1") is not None, 15, what="the table repaired")
    assert cluster.health("h1")["nat"]["repairs"] == repairs + 1
    assert cluster.source_seen("a", OUTSIDE) == NODES["h1"]

    # The table stays while the agent is stopped (traffic keeps flowing) ...
    cluster.stop_agent("h1")
    assert cluster.source_seen("a", OUTSIDE) == NODES["h1"]
    # ... and a table lost meanwhile is back when it starts.
    cluster.hosts["h1"].exec("nft", "flush", "ruleset")
    cluster.start_agent("h1")
    cluster.wait_nat(["pods"])
    assert cluster.source_seen("a", OUTSIDE) == NODES["h1"]

    # Switched off in the map while h1's agent is down: removed when it comes back.
    cluster.stop_agent("h1")
    no_nat = copy.deepcopy(topology(True))
    no_nat["networks"][0]["nat_outgoing"] = False
    cluster.client.apply_topology(no_nat)
    cluster.start_agent("h1")
    cluster.wait_nat([])
    assert cluster.source_seen("a", OUTSIDE) == a.ip
    assert cluster.source_seen("b", OUTSIDE) == cluster.pods["b"].ip


class MapSource:
    """romanad's ``GET /topology`` as the keeper sees it (None: no map applied yet)."""

    def __init__(self, document: dict[str, Any] | None) -> None:
        self.document = document
        self.failure: RomanaError | None = None  # romanad's answer instead of the map
        self.reads = 0

    async def topology(self) -> dict[str, Any]:
        self.reads += 1
        if self.failure is not None:
            raise self.failure
        if self.document is None:
            raise NotFound("no topology applied yet")
        return self.document


@pytest.mark.root
@needs_nft
def test_keeper_reports_a_refused_load_and_retries_it_at_the_next_sync(tmp_path: Path) -> None:
    with Lab("nk", tmp_path) as lab:
        ns = lab.netns("node")
        nft = tmp_path / "nft"
        nft.write_text(f'#!/bin/sh\nexec ip netns exec {ns.name} {NFT} "$@"\n')
        nft.chmod(0o755)
        source = MapSource(None)
        working = NatTable(str(nft))
        keeper = NatKeeper(source, working, CollectorRegistry())  # type: ignore[arg-type]
        asyncio.run(keeper.after_sync("start", True))
        assert keeper.health()["networks"] == [] and keeper.health()["problem"] is None

        keeper.table = NatTable("false")  # an nft that refuses everything
        source.document = topology(True)
        asyncio.run(keeper.after_sync("watch", True))
        health = keeper.health()
        assert health["networks"] == ["pods"] and not health["in_sync"]
        assert health["problem"].startswith("nft refused the NAT table")

        keeper.table = working  # nft works again: the next periodic sync loads
        asyncio.run(keeper.after_sync("periodic", False))
        assert keeper.health()["in_sync"] and keeper.health()["problem"] is None
        assert "masquerade" in ns.exec("nft", "list", "table", "ip", "romana-nat").stdout

        source.document = topology(False)
        asyncio.run(keeper.after_sync("periodic", False))  # the map is read on changes only
        assert ns.exec("nft", "list", "tables").stdout.strip() != ""
        asyncio.run(keeper.after_sync("watch", True))
        assert ns.exec("nft", "list", "tables").stdout.strip() == ""
        assert keeper.health()["in_sync"] and keeper.health()["loads"] == 3


@pytest.mark.root
@needs_nft
def test_cleanup_removes_the_nat_table(tmp_path: Path) -> None:
    with Lab("nc", tmp_path) as lab:
        ns = lab.netns("node")
        nft = tmp_path / "nft"
        nft.write_text(f'#!/bin/sh\nexec ip netns exec {ns.name} {NFT} "$@"\n')
        nft.chmod(0o755)
        assert NatTable(str(nft)).load(plan_from_topology(topology(True))) is None
        assert "romana-nat" in ns.exec("nft", "list", "tables").stdout
        ns.exec(*romana_argv("romana-agent", cleanup=True, table=77))
        assert "romana-nat" not in ns.exec("nft", "list", "tables").stdout


@pytest.mark.root
@needs_nft
def test_an_unreadable_map_is_the_keepers_problem_not_the_route_syncs(tmp_path: Path) -> None:
    """The hook runs after the routes are programmed: romanad failing ``GET /topology``
    must not fail the sync (readiness, revision), only leave NAT as it was until the map
    can be read again."""
    with Lab("nm", tmp_path) as lab:
        ns = lab.netns("node")
        nft = tmp_path / "nft"
        nft.write_text(f'#!/bin/sh\nexec ip netns exec {ns.name} {NFT} "$@"\n')
        nft.chmod(0o755)
        source = MapSource(None)
        source.failure = Internal("romanad: 500")
        keeper = NatKeeper(source, NatTable(str(nft)), CollectorRegistry())  # type: ignore[arg-type]
        asyncio.run(keeper.after_sync("start", True))  # no exception: nothing known yet
        assert keeper.health()["map_unread"] and "500" in keeper.health()["problem"]
        assert ns.exec("nft", "list", "tables").stdout.strip() == ""

        source.failure, source.document = None, topology(True)
        asyncio.run(keeper.after_sync("periodic", False))  # read again without a change
        assert keeper.health()["in_sync"] and not keeper.health()["map_unread"]
        assert "romana-nat" in ns.exec("nft", "list", "tables").stdout

        source.failure = Internal("romanad: 500")
        asyncio.run(keeper.after_sync("watch", True))  # the map changed, unreadable
        assert "romana-nat" in ns.exec("nft", "list", "tables").stdout  # the last plan stays
        assert keeper.health()["map_unread"] and keeper.health()["problem"] is not None
        reads = source.reads
        source.failure, source.document = None, topology(False)
        asyncio.run(keeper.after_sync("periodic", False))
        assert source.reads == reads + 1 and keeper.health()["problem"] is None
        assert ns.exec("nft", "list", "tables").stdout.strip() == ""
