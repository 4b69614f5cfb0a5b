"""End to end on the real kernel: romanad, four agents, two racks, routers, pinging pods.

Layout (every namespace created here, removed afterwards):

    spine ──172.16.0.0/30── tor-1 (bridge 192.168.1.1/24) ── h11 .11, h12 .12
          ──172.16.0.4/30── tor-2 (bridge 192.168.2.1/24) ── h21 .11, h22 .12

Racks are L2 segments (``block-host-routes``): agents install routes to their neighbours'
areas; or L3-to-host (``prefix-announce-bgp``): hosts route only their own areas and the
holes in them. Hosts default to their ToR; the ToRs' and the spine's pod routes are filled
from ``GET /routes?group=...`` (the BIRD publisher makes that dynamic). Pods are namespaces with a
veth to their host, a /32 from romanad, and a default route via 169.254.1.1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from romana.api.client import RomanaClient

from .daemon import Daemon
from .lab import Lab, Netns, romana_argv
from .wait import wait_until

pytestmark = [pytest.mark.root, pytest.mark.daemons]

TABLE = "10"
RACKS = {1: ("h11", "h12"), 2: ("h21", "h22")}


def topology(mode: str) -> dict[str, Any]:
    return {
        "networks": [{"name": "pods", "cidr": "10.1.0.0/16", "block_mask": 29}],
        "topologies": [
            {
                "networks": ["pods"],
                "map": [
                    {
                        "name": f"rack-{r}",
                        "routing": mode,
                        "assignment": {"rack": f"rack-{r}"},
                        "groups": [],
                    }
                    for r in RACKS
                ],
            }
        ],
    }


def host_ip(name: str) -> str:
    return f"192.168.{name[1]}.1{name[2]}"


@dataclass
class Pod:
    name: str
    ns: Netns
    ip: str
    host: str
    link: str


class Cluster:
    def __init__(self, lab: Lab, romanad: Daemon, socket: Path) -> None:
        self.lab = lab
        self.romanad = romanad
        self.socket = socket
        self.client = RomanaClient(romanad.url)
        self.spine = lab.netns("spine")
        self.tors: dict[int, Netns] = {}
        self.hosts: dict[str, Netns] = {}
        self.agents: dict[str, Any] = {}
        self.pods: dict[str, Pod] = {}
        self._links = 0
        self._wire()

    def _wire(self) -> None:
        for rack, names in RACKS.items():
            tor = self.tors[rack] = self.lab.switch(f"tor{rack}", f"192.168.{rack}.1/24")
            uplink = 4 * (rack - 1)
            self.lab.veth(tor, "up0", self.spine, f"down{rack}")
            tor.ip("addr", "add", f"172.16.0.{uplink + 1}/30", "dev", "up0")
            self.spine.ip("addr", "add", f"172.16.0.{uplink + 2}/30", "dev", f"down{rack}")
            tor.ip("route", "add", "default", "via", f"172.16.0.{uplink + 2}")
            for name in names:
                self.hosts[name] = self.lab.host(name, f"{host_ip(name)}/24", tor)
                self.client.add_host(name, host_ip(name), {"rack": f"rack-{rack}"})

    # -- agents -------------------------------------------------------------------------
    def start_agent(self, name: str, resync: float = 60) -> None:
        """Periodic resync is off by default (60 s): only the changes feed moves routes."""
        self.agents[name] = self.lab.agent(
            self.hosts[name],
            name,
            f"unix:{self.socket}",
            resync_interval=resync,
            log_level="debug",
        )

    def stop_agent(self, name: str) -> int:
        return self.lab.stop(self.agents.pop(name))

    def kernel_routes(self, name: str, proto: str = "82") -> set[tuple[str, str | None]]:
        shown = self.hosts[name].ip(
            "-j", "route", "show", "table", TABLE, "proto", proto, check=False
        )
        if "FIB table does not exist" in shown.stderr:  # the kernel drops empty tables
            return set()
        rows = json.loads(shown.stdout)
        return {(r["dst"] if "/" in r["dst"] else r["dst"] + "/32", r.get("gateway")) for r in rows}

    def expected_routes(self, name: str) -> set[tuple[str, str | None]]:
        return {(r["prefix"], r["gateway"]) for r in self.client.routes(host=name)["routes"]}

    def wait_in_sync(self, timeout: float = 10.0) -> None:
        for name in self.hosts:
            wait_until(
                lambda n=name: self.kernel_routes(n) == self.expected_routes(n),
                timeout,
                what=f"{name}'s table to match romanad",
            )

    # -- routers: filled from the route sets romanad computes ----------------------------
    def program_routers(self) -> None:
        uplinks = {f"group:rack-{r}": f"172.16.0.{4 * (r - 1) + 1}" for r in RACKS}
        self._program(self.spine, self.client.routes(group="/"), uplinks)
        for rack, tor in self.tors.items():
            self._program(tor, self.client.routes(group=f"rack-{rack}"), {})

    def _program(self, ns: Netns, route_set: dict[str, Any], gateways: dict[str, str]) -> None:
        ns.ip("route", "flush", "proto", "static", check=False)
        for route in route_set["routes"]:
            gateway = route["gateway"] or gateways[route["via"]]
            ns.ip("route", "replace", route["prefix"], "via", gateway, "proto", "static")

    # -- pods: what the CNI plugin will do ------------------------------------------------
    def add_pod(self, pod: str, host: str) -> Pod:
        ip = self.client.allocate(pod, host)["ip"]
        self._links += 1
        link = f"cali{self._links}"
        ns = self.lab.endpoint(self.hosts[host], link, f"pod{self._links}", ip)
        self.pods[pod] = Pod(pod, ns, ip, host, link)
        return self.pods[pod]

    def remove_pod(self, pod: str) -> None:
        p = self.pods.pop(pod)
        self.hosts[p.host].ip("link", "del", p.link)
        self.client.release(pod)

    def reaches(self, a: str, b: str) -> bool:
        """One retry: a loaded CI machine may drop a first packet (neighbour resolution)."""
        ns, ip = self.pods[a].ns, self.pods[b].ip
        return ns.ping(ip, count=1, wait=1) or ns.ping(ip, count=1, wait=2)


@pytest.fixture(params=["block-host-routes"])
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(topology(request.param)))
    socket = tmp_path / "romanad.sock"
    romanad = Daemon(
        tmp_path / "data", "--topology", str(path), "--listen", f"unix:{socket}"
    ).start()
    try:
        with Lab("ag", tmp_path) as lab:
            c = Cluster(lab, romanad, socket)
            try:
                yield c
            finally:
                c.client.close()
    finally:
        romanad.stop()


def assert_all_reach(cluster: Cluster, pairs: list[tuple[str, str]]) -> None:
    failed = [(a, b) for a, b in pairs if not cluster.reaches(a, b)]
    assert not failed, f"no ping: {failed}"


def test_agents_route_pods_across_hosts_racks_and_restarts(cluster: Cluster) -> None:
    for name in cluster.hosts:
        cluster.start_agent(name)
    cluster.add_pod("a1", "h11")
    cluster.add_pod("a2", "h11")
    cluster.add_pod("b1", "h12")
    cluster.add_pod("c1", "h21")
    cluster.add_pod("d1", "h22")
    cluster.program_routers()
    cluster.wait_in_sync()
    # h11's table: its own area unreachable, h12's area via h12; nothing for rack 2.
    assert cluster.kernel_routes("h11") == {("10.1.0.0/18", None), ("10.1.64.0/18", "192.168.1.12")}
    assert_all_reach(
        cluster,
        [
            ("a1", "a2"),
            ("a1", "b1"),
            ("b1", "a2"),
            ("a1", "c1"),
            ("c1", "a1"),
            ("d1", "b1"),
            ("c1", "d1"),
        ],
    )
    # Same-rack traffic goes host to host: h11 routes b1's block straight to h12.
    via = cluster.hosts["h11"].exec("ip", "route", "get", cluster.pods["b1"].ip).stdout
    assert "via 192.168.1.12" in via

    # Release the only pod of h12's block: the block goes back, h12's area route stays.
    cluster.remove_pod("b1")
    # Re-allocate on h12: its area gives the same block back; no route had to move.
    b2 = cluster.add_pod("b2", "h12")
    assert b2.ip == "10.1.64.0"
    cluster.wait_in_sync()
    assert ("10.1.64.0/18", "192.168.1.12") in cluster.kernel_routes("h11")
    assert_all_reach(cluster, [("a1", "b2"), ("c1", "b2")])

    # Restart an agent: routes stay while it is down, and it resyncs when back.
    assert cluster.stop_agent("h11") == 0
    assert ("10.1.64.0/18", "192.168.1.12") in cluster.kernel_routes("h11")
    assert cluster.reaches("a1", "b2")
    cluster.start_agent("h11")
    cluster.wait_in_sync()

    # Stop romanad: agents keep routes and keep running; start it again, they follow.
    assert cluster.romanad.stop() == 0

    def all_see_romanad_gone() -> bool:  # agents notice (the watch fails) and back off
        return all(
            agent_get(cluster.hosts[n], "/healthz")["romanad"] == "unreachable"
            for n in cluster.agents
        )

    wait_until(all_see_romanad_gone, 10, what="every agent sees romanad gone")
    assert all(p.poll() is None for p in cluster.agents.values()), "an agent died"
    assert cluster.reaches("a1", "c1")
    cluster.romanad.start()
    cluster.add_pod("e1", "h12")  # h12 already has a block with room: no new route
    # h22 gives up half of its rack to a newcomer: h21 learns h22's smaller area.
    cluster.client.add_host("h23", "192.168.2.13", {"rack": "rack-2"})
    cluster.client.allocate("newcomer", "h23")
    h22 = cluster.client.host("h22")["groups"]["pods"]["areas"]
    wait_until(
        lambda: (h22[0], "192.168.2.12") in cluster.kernel_routes("h21"),
        10,
        what="h21 to learn h22's new area after romanad restarted",
    )
    cluster.program_routers()
    assert_all_reach(cluster, [("e1", "a1"), ("c1", "e1"), ("d1", "a1")])


def test_agent_removes_stale_routes_and_never_touches_foreign_ones(cluster: Cluster) -> None:
    cluster.start_agent("h11", resync=1)
    cluster.add_pod("a1", "h11")
    h11 = cluster.hosts["h11"]
    wait_until(
        lambda: cluster.kernel_routes("h11") == cluster.expected_routes("h11"),
        10,
        what="first sync",
    )
    # A stale route carrying the agent's protocol: removed by the periodic resync (1 s).
    h11.ip("route", "add", "10.1.200.0/29", "via", "192.168.1.12", "table", TABLE, "proto", "82")
    # Someone else's route in the same table, and one of ours changed behind our back.
    h11.ip("route", "add", "10.1.201.0/29", "via", "192.168.1.1", "table", TABLE, "proto", "static")
    h11.ip("route", "replace", "10.1.0.0/17", "via", "192.168.1.1", "table", TABLE, "proto", "82")
    wait_until(
        lambda: cluster.kernel_routes("h11") == {("10.1.0.0/17", None)},
        5,
        what="the stale route removed and the changed one restored",
    )
    done = periodic_syncs(h11)
    wait_until(lambda: periodic_syncs(h11) >= done + 2, 10, what="two more resyncs")
    # ...and the foreign route is still there, unchanged
    assert cluster.kernel_routes("h11", proto="static") == {("10.1.201.0/29", "192.168.1.1")}

    # Health and metrics, read from inside the host's namespace.
    health = agent_get(h11, "/healthz")
    assert health["synced"] and health["romanad"] == "up" and health["host"] == "h11"
    metrics = h11.exec(sys.executable, "-c", _GET.format(path="/metrics")).stdout
    assert "romana_agent_routes_managed 1.0" in metrics
    assert 'romana_agent_syncs_total{reason="periodic"}' in metrics
    deleted = [
        line
        for line in metrics.splitlines()
        if line.startswith('romana_agent_route_changes_total{op="delete"}')
    ]
    assert deleted and float(deleted[0].split()[-1]) >= 1

    # --cleanup removes the agent's routes and rules, and nothing else.
    assert cluster.stop_agent("h11") == 0
    h11.exec(*romana_argv("romana-agent", host="h11", cleanup=True))
    assert cluster.kernel_routes("h11") == set()
    assert cluster.kernel_routes("h11", proto="static") == {("10.1.201.0/29", "192.168.1.1")}
    assert "lookup 10" not in h11.ip("rule").stdout


@pytest.mark.parametrize("cluster", ["prefix-announce-bgp"], indirect=True)
def test_l3_host_sends_a_loan_inside_its_area_to_its_router(cluster: Cluster) -> None:
    """L3-to-host: h11 routes its area as unreachable, but a block lent to h12 inside it must
    leave through h11's default route (a ``throw`` route) to the ToR, which knows h12."""
    for name in ("h11", "h12"):
        cluster.start_agent(name)
    cluster.add_pod("a1", "h11")
    area = cluster.client.host("h11")["groups"]["pods"]["areas"][0]
    assert area == "10.1.0.0/17"  # h11 is alone in rack-1: the whole rack is its area
    # A pod of h12 given an address inside h11's area (a pinned IP, as a loan would be).
    pinned = cluster.client.allocate("lent", "h12", ip="10.1.100.1")
    ns = cluster.lab.endpoint(cluster.hosts["h12"], "calilent", "podlent", pinned["ip"])
    cluster.pods["lent"] = Pod("lent", ns, pinned["ip"], "h12", "calilent")
    cluster.add_pod("b1", "h12")
    cluster.program_routers()
    for name in ("h11", "h12"):
        wait_until(
            lambda n=name: cluster.kernel_routes(n) == cluster.expected_routes(n),
            10,
            what=f"{name}'s table to match romanad",
        )
    shown = cluster.hosts["h11"].ip("route", "show", "table", TABLE).stdout
    assert f"throw {pinned['block']}" in shown and f"unreachable {area}" in shown
    assert_all_reach(cluster, [("a1", "lent"), ("lent", "a1"), ("a1", "b1")])
    got = cluster.hosts["h11"].exec("ip", "route", "get", pinned["ip"]).stdout
    assert "via 192.168.1.1" in got  # out through the ToR, not dropped by the area route


def agent_get(ns: Netns, path: str) -> Any:
    """The agent's JSON answer at ``path``, read from inside the host's namespace."""
    return json.loads(ns.exec(sys.executable, "-c", _GET.format(path=path)).stdout)


def periodic_syncs(ns: Netns) -> float:
    metrics = ns.exec(sys.executable, "-c", _GET.format(path="/metrics")).stdout
    for line in metrics.splitlines():
        if line.startswith('romana_agent_syncs_total{reason="periodic"}'):
            return float(line.split()[-1])
    return 0.0


_GET = (
    "import urllib.request;"
    "print(urllib.request.urlopen('http://127.0.0.1:9604{path}', timeout=5).read().decode())"
)
