"""Route publishing end to end: real romanad, real BIRD in network namespaces, real pings.

The fabric: two racks (L3-to-host, ``prefix-announce-bgp``), each a ToR namespace with a
rack bridge and two hosts, and a spine namespace linked to both ToRs. Every host, ToR and
the spine runs its own BIRD; hosts' configurations come from ``romana-publisher --host``,
rack-1's ToR from ``romana-publisher --router rack-1 --strict`` (follow mode), rack-2's
ToR and the spine from ``romana bird router-config`` (once). Hosts have one static route,
their default route to the ToR (infrastructure); every pod route comes from BGP.

The publishers run in the root namespace (romanad listens on 127.0.0.1 there): they only
write files and talk to the BIRDs' control sockets, which reach across namespaces.

What it shows: ToRs hold one route per host (its area), the spine exactly one route per
rack, also while a lone host's area is the whole rack; endpoints in different racks ping
each other; a rogue host's announcements (outside its group, and inside a neighbour's area)
are filtered at the strict ToR while traffic keeps reaching the rightful owners; releasing
a block's last address moves no route; a broken template leaves BIRD on the previous
configuration; an area change does not reset any BGP session.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from romana.api.client import RomanaClient
from romana.cli.bird import app as bird_app

from .conftest import ROOT
from .daemon import Daemon, free_port, running
from .lab import Lab, Netns, romana_argv, run
from .test_bird_control import stop_birds
from .wait import wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.daemons,
    pytest.mark.bird,
    pytest.mark.skipif(
        shutil.which("bird") is None or shutil.which("ping") is None, reason="needs bird2 and ping"
    ),
]

TEMPLATES = ROOT / "examples" / "bird"
POD = ipaddress.IPv4Network("10.1.0.0/16")
HOST_AS, SPINE_AS = 65001, 65000


def rack_as(rack: int) -> int:
    return 65100 + rack


TOPOLOGY = {
    "networks": [{"name": "pods", "cidr": "10.1.0.0/16", "block_mask": 29}],
    "topologies": [
        {
            "networks": ["pods"],
            "map": [
                {
                    "name": f"rack-{r}",
                    "assignment": {"rack": f"rack-{r}"},
                    "routing": "prefix-announce-bgp",
                    "groups": [],
                }
                for r in (1, 2)
            ],
        }
    ],
}
# name -> (rack, IP); h5 is a registered host of rack-1 that turns rogue.
HOSTS = {
    "h1": (1, "192.168.1.11"),
    "h2": (1, "192.168.1.12"),
    "h5": (1, "192.168.1.15"),
    "h3": (2, "192.168.2.13"),
    "h4": (2, "192.168.2.14"),
}


class Bird:
    """One BIRD daemon in a namespace: config, control socket and PID file in a temp dir."""

    def __init__(self, ns: Netns, workdir: Path) -> None:
        self.ns = ns
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "bird.conf"
        self.sock = workdir / "bird.ctl"
        self.pidfile = workdir / "bird.pid"

    def start(self, text: str) -> None:
        self.conf.write_text(text)
        self.ns.exec("bird", "-c", str(self.conf), "-s", str(self.sock), "-P", str(self.pidfile))
        wait_until(self.sock.exists, 5, what=f"BIRD socket {self.sock}")

    def birdc(self, *args: str) -> str:
        return run("birdc", "-s", str(self.sock), *args).stdout

    def protocol(self, name: str) -> tuple[str, str]:
        """(since, info) of a protocol: a later ``since`` means it was restarted."""
        for line in self.birdc("show", "protocols", name).splitlines():
            fields = line.split()
            if fields and fields[0] == name:
                return fields[4], " ".join(fields[5:])
        raise AssertionError(f"no protocol {name}")

    def assert_not_restarted(self, name: str, before: tuple[str, str]) -> None:
        """The protocol is in the same state since the same moment as ``before``.

        BIRD prints ``since`` by converting its monotonic clock to wall time at each call,
        so one moment can print a millisecond apart; a restart moves it by far more.
        """
        since, info = self.protocol(name)
        assert info == before[1], (name, info, before)
        drift = abs(clock_seconds(since) - clock_seconds(before[0]))
        assert drift < 0.02, (name, since, before)


def clock_seconds(since: str) -> float:
    """Seconds into the day of a BIRD ``since`` field (HH:MM:SS.mmm)."""
    hours, minutes, seconds = since.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def bootstrap(router_id: str) -> str:
    """What a freshly installed BIRD runs before the publisher's first configuration."""
    return f"router id {router_id};\nprotocol device {{}}\n"


def pod_routes(ns: Netns) -> dict[str, str]:
    """Pod-network routes of a namespace: prefix -> gateway (or route type)."""
    out = {}
    for route in ns.routes():
        dst = route.get("dst", "")
        if dst == "default" or not ipaddress.IPv4Network(dst).subnet_of(POD):
            continue
        out[str(ipaddress.IPv4Network(dst))] = route.get("gateway") or route.get("type", "")
    return out


def proto_of_pod_routes(ns: Netns) -> set[str]:
    return {
        r.get("protocol", "?")
        for r in ns.routes()
        if r.get("dst", "default") != "default" and ipaddress.IPv4Network(r["dst"]).subnet_of(POD)
    }


def metric(port: int, name: str, labels: str = "") -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


@dataclass
class Fabric:
    lab: Lab
    daemon: Daemon
    client: RomanaClient
    work: Path
    template: Path
    ns: dict[str, Netns] = field(default_factory=dict)
    birds: dict[str, Bird] = field(default_factory=dict)
    metrics: dict[str, int] = field(default_factory=dict)
    ips: dict[str, str] = field(default_factory=dict)  # endpoint -> its address
    since: dict[str, tuple[str, str]] = field(default_factory=dict)

    # -- building ---------------------------------------------------------------------
    def build(self) -> None:
        spine = self.ns["spine"] = self.lab.netns("spine")
        for r in (1, 2):
            tor = self.ns[f"tor{r}"] = self.lab.switch(f"tor{r}", f"192.168.{r}.1/24")
            self.lab.veth(tor, "uplink", spine, f"r{r}")
            tor.ip("addr", "add", f"172.16.{r}.1/24", "dev", "uplink")
            spine.ip("addr", "add", f"172.16.{r}.2/24", "dev", f"r{r}")
            for name, (rack, ip) in HOSTS.items():
                if rack == r:
                    self.ns[name] = self.lab.host(name, f"{ip}/24", tor)

    def endpoint(self, name: str, host: str, segment: str) -> str:
        """Allocate an address in romanad and plumb it as the CNI would."""
        ip = self.client.allocate(name, host, "t", segment)["ip"]
        self.ips[name] = ip
        host_ns = self.ns[host]
        self.ns[name] = self.lab.endpoint(host_ns, f"cali{len(self.ips)}", name, ip)
        return ip

    def bird(self, name: str, router_id: str) -> Bird:
        bird = self.birds[name] = Bird(self.ns[name], self.work / name)
        bird.start(bootstrap(router_id))
        return bird

    def publisher(self, name: str, **flags: object) -> None:
        """romana-publisher for ``name``'s BIRD, with ``flags`` (see ``romana_argv``)."""
        port = self.metrics[name] = free_port()
        bird = self.birds[name]
        argv = romana_argv(
            "romana-publisher",
            url=self.daemon.url,
            output=bird.conf,
            bird_socket=bird.sock,
            poll_interval=1,
            metrics_listen=f"127.0.0.1:{port}",
            **flags,
        )
        self.lab.spawn(None, *argv, log=self.work / f"publisher-{name}.log")

    def router_config(self, name: str, *args: str) -> None:
        bird = self.birds[name]
        result = CliRunner().invoke(
            bird_app,
            [
                "router-config",
                "--url",
                self.daemon.url,
                "--output",
                str(bird.conf),
                "--bird-socket",
                str(bird.sock),
                *args,
            ],
        )
        assert result.exit_code == 0, result.output

    def start(self) -> None:
        for name, (rack, ip) in HOSTS.items():
            if name == "h5":
                continue  # the rogue runs a hand-written configuration, later
            self.bird(name, ip)
            self.publisher(
                name,
                host=name,
                template=self.template,
                local_as=HOST_AS,
                neighbor_ip=f"192.168.{rack}.1",
                neighbor_as=rack_as(rack),
            )
        for r in (1, 2):
            self.bird(f"tor{r}", f"172.16.{r}.1")
        self.bird("spine", "172.16.0.1")
        self.publisher(
            "tor1",
            router="rack-1",
            strict=True,
            local_as=rack_as(1),
            peer_as=HOST_AS,
            neighbor_ip="172.16.1.2",
            neighbor_as=SPINE_AS,
            router_id="172.16.1.1",
        )
        self.router_config(
            "tor2",
            "--group",
            "rack-2",
            "--local-as",
            str(rack_as(2)),
            "--peer-as",
            str(HOST_AS),
            "--neighbor-ip",
            "172.16.2.2",
            "--neighbor-as",
            str(SPINE_AS),
            "--router-id",
            "172.16.2.1",
        )
        self.router_config(
            "spine",
            "--group",
            "/",
            "--local-as",
            str(SPINE_AS),
            "--peer",
            f"rack-1=172.16.1.1@{rack_as(1)}",
            "--peer",
            f"rack-2=172.16.2.1@{rack_as(2)}",
            "--router-id",
            "172.16.0.1",
        )

    def wait_routes(self, name: str, expected: dict[str, str], timeout: float = 15) -> None:
        last: dict[str, Any] = {}

        def check() -> bool:
            last["routes"] = pod_routes(self.ns[name])
            return bool(last["routes"] == expected)

        try:
            wait_until(check, timeout, what=f"{name}'s pod routes", interval=0.1)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}: have {last['routes']}, want {expected}\n"
                + self.birds[name].birdc("show", "protocols")
            ) from None


@pytest.fixture(scope="module")
def fabric(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fabric]:
    work = tmp_path_factory.mktemp("bird-e2e")
    template = work / "templates" / "bird.conf"
    template.parent.mkdir()
    shutil.copy(TEMPLATES / "host-bgp.conf.j2", template)
    with (
        running(work / "romanad") as daemon,
        RomanaClient(daemon.url) as client,
        Lab("bgp", work) as lab,
    ):
        f = Fabric(lab, daemon, client, work, template)
        try:
            client.apply_topology(TOPOLOGY)
            for name, (rack, ip) in HOSTS.items():
                client.add_host(name, ip, {"rack": f"rack-{rack}"})
            f.build()
            # Before any BIRD runs: h1 and h3 already have a block each.
            f.endpoint("e1", "h1", "a")
            f.endpoint("e3", "h3", "a")
            f.start()
            # h1 is alone in rack-1 with blocks: its area is the whole rack, the very
            # prefix the ToR announces upward; its route beats the ToR's own aggregate.
            f.wait_routes("tor1", {"10.1.0.0/17": "192.168.1.11", "10.1.128.0/17": "172.16.1.2"})
            f.wait_routes("spine", SPINE)  # and rack-1 is still announced to the spine
            f.since = {
                "h1": f.birds["h1"].protocol("tor"),
                "tor1": f.birds["tor1"].protocol("host_h1"),
            }
            assert f.since["h1"][1] == "Established"
            # While everything runs: h1's second block (inside its area: nothing to
            # announce), h2's first block (h2 takes half of h1's area: both announce a /18,
            # the strict ToR must learn what each may announce), h4's (the same in rack-2).
            f.endpoint("e1b", "h1", "b")
            f.endpoint("e2", "h2", "a")
            f.endpoint("e4", "h4", "a")
            yield f
        finally:
            stop_birds([b.pidfile for b in f.birds.values()])


TOR1 = {
    "10.1.0.0/18": "192.168.1.11",
    "10.1.64.0/18": "192.168.1.12",
    "10.1.0.0/17": "unreachable",
    "10.1.128.0/17": "172.16.1.2",
}
TOR2 = {
    "10.1.128.0/18": "192.168.2.13",
    "10.1.192.0/18": "192.168.2.14",
    "10.1.128.0/17": "unreachable",
    "10.1.0.0/17": "172.16.2.2",
}
SPINE = {"10.1.0.0/17": "172.16.1.1", "10.1.128.0/17": "172.16.2.1"}


def test_tors_hold_collapsed_blocks_and_the_spine_one_route_per_rack(fabric: Fabric) -> None:
    assert fabric.ips == {
        "e1": "10.1.0.0",
        "e3": "10.1.128.0",
        "e1b": "10.1.0.8",
        "e2": "10.1.64.0",
        "e4": "10.1.192.0",
    }
    fabric.wait_routes("tor1", TOR1)
    fabric.wait_routes("tor2", TOR2)
    fabric.wait_routes("spine", SPINE)
    # Every pod route on routers comes from BIRD; hosts hold only their pods' /32s.
    for name in ("tor1", "tor2", "spine"):
        assert proto_of_pod_routes(fabric.ns[name]) == {"bird"}
    for host in ("h1", "h2", "h3", "h4"):
        routes = pod_routes(fabric.ns[host])
        assert all(p.endswith("/32") for p in routes), routes
    # An area change is a reconfiguration, not a restart: no BGP session was reset, on
    # the host (static routes changed) nor on the strict ToR (its import filter changed).
    fabric.birds["h1"].assert_not_restarted("tor", fabric.since["h1"])
    fabric.birds["tor1"].assert_not_restarted("host_h1", fabric.since["tor1"])
    assert "route 10.1.0.0/18 blackhole;" in fabric.birds["h1"].conf.read_text()


def test_endpoints_in_different_racks_ping_each_other(fabric: Fabric) -> None:
    fabric.wait_routes("tor1", TOR1)
    fabric.wait_routes("tor2", TOR2)
    ns, ips = fabric.ns, fabric.ips
    for a, b in [
        ("e1", "e3"),
        ("e3", "e1"),
        ("e1b", "e4"),
        ("e2", "e3"),
        ("e4", "e2"),
        ("e1", "e2"),
    ]:
        assert ns[a].ping(ips[b], count=1, wait=2), f"{a} cannot reach {b} ({ips[b]})"


ROGUE = """router id 192.168.1.15;
protocol device {}
protocol static hijack {
  ipv4;
  route 10.1.128.0/30 blackhole;   # inside h3's area, in rack-2: outside h5's group
  route 10.1.0.0/30 blackhole;     # inside h1's area: h5's own group, not its area
}
protocol bgp tor {
  local 192.168.1.15 as 65001;
  neighbor 192.168.1.1 as 65101;
  connect delay time 1; connect retry time 1;
  ipv4 { import none; export all; };
}
"""


def test_a_rogue_hosts_announcements_are_filtered_at_the_strict_tor(fabric: Fabric) -> None:
    fabric.wait_routes("tor1", TOR1)
    rogue = fabric.bird("h5", "192.168.1.15")
    rogue.conf.write_text(ROGUE)
    rogue.birdc("configure")
    tor = fabric.birds["tor1"]

    def filtered() -> str:
        return tor.birdc("show", "route", "filtered", "protocol", "host_h5")

    wait_until(
        lambda: "10.1.128.0/30" in filtered() and "10.1.0.0/30" in filtered(),
        10,
        what="the rogue's routes in the ToR's filtered table",
        interval=0.1,
    )
    assert rogue.protocol("tor")[1] == "Established"
    # Rejected, not installed: the kernel table is exactly what it was.
    assert pod_routes(fabric.ns["tor1"]) == TOR1
    # BIRD's own choice for addresses inside the hijacked /30s: the rightful routes.
    best = tor.birdc("show", "route", "for", "10.1.0.1")
    assert "10.1.0.0/18" in best and "192.168.1.11" in best and "/30" not in best
    best = tor.birdc("show", "route", "for", "10.1.128.1")
    assert "10.1.128.0/17" in best and "172.16.1.2" in best and "/30" not in best
    # And traffic still reaches the rightful owners (accepted, the /30s would have won by
    # longest match and sent it to h5, which has no such endpoints).
    ns, ips = fabric.ns, fabric.ips
    assert ns["e2"].ping(ips["e1"], count=1, wait=2)
    assert ns["e1"].ping(ips["e3"], count=1, wait=2)
    assert ns["e2"].ping(ips["e3"], count=1, wait=2)


def test_releasing_a_blocks_last_address_moves_no_route(fabric: Fabric) -> None:
    fabric.wait_routes("tor1", TOR1)
    port, conf = fabric.metrics["h2"], fabric.birds["h2"].conf.read_text()
    fabric.client.release("e2")  # h2's only address: its block goes back to the pool...
    wait_until(
        lambda: metric(port, "romana_publisher_revision") >= fabric.client.health()["revision"],
        10,
        what="h2's publisher to catch up",
        interval=0.1,
    )
    assert fabric.birds["h2"].conf.read_text() == conf  # ...but its area stays h2's
    assert pod_routes(fabric.ns["tor1"]) == TOR1
    again = fabric.client.allocate("e2", "h2", "a")  # the same block comes back
    assert again["ip"] == fabric.ips["e2"]
    assert fabric.ns["e1"].ping(fabric.ips["e2"], count=1, wait=2)
    assert fabric.ns["e1"].ping(fabric.ips["e3"], count=1, wait=2)


def test_a_broken_template_leaves_bird_on_the_last_good_config(fabric: Fabric) -> None:
    fabric.wait_routes("tor2", TOR2)
    port, h4 = fabric.metrics["h4"], fabric.birds["h4"]
    good = h4.conf.read_text()
    since = h4.protocol("tor")
    # A host-specific template (best match for h4 only) with a Jinja syntax error.
    mine = fabric.template.with_name(f"{fabric.template.name}.192.168.2.14")
    mine.write_text(fabric.template.read_text() + "{% for broken %}\n")
    failures = 'romana_publisher_failures_total{stage="template"}'
    wait_until(lambda: metric(port, failures) >= 1, 10, what="a template failure", interval=0.1)
    assert metric(port, "romana_publisher_config_stale") == 1

    # A block of h4 outside its area (pinned inside h3's) now cannot be announced; the old
    # routes stay (no outage).
    address = fabric.client.allocate("e4b", "h4", "t", "b", ip="10.1.160.1")
    assert address["block"] == "10.1.160.0/29"
    wait_until(
        lambda: metric(port, "romana_publisher_revision") >= fabric.client.health()["revision"],
        10,
        what="h4's publisher to catch up",
        interval=0.1,
    )
    assert h4.conf.read_text() == good
    assert pod_routes(fabric.ns["tor2"]) == TOR2
    h4.assert_not_restarted("tor", since)

    # A template that renders but that BIRD refuses: caught by `bird -p`, never loaded.
    mine.write_text(fabric.template.read_text() + "this is not BIRD;\n")
    wait_until(
        lambda: metric(port, 'romana_publisher_failures_total{stage="validate"}') >= 1,
        10,
        what="a validation failure",
        interval=0.1,
    )
    assert h4.conf.read_text() == good
    assert "this is not BIRD" in h4.conf.with_name("bird.conf.rejected").read_text()
    assert fabric.ns["e3"].ping(fabric.ips["e4"], count=1, wait=2)

    # Fixed (the host file removed): the generic template again, with the new block.
    mine.unlink()
    fabric.wait_routes("tor2", {**TOR2, "10.1.160.0/29": "192.168.2.14"})
    assert metric(port, "romana_publisher_config_stale") == 0
    assert metric(port, "romana_publisher_last_good_timestamp_seconds") > 0
    h4.assert_not_restarted("tor", since)


# -- OSPF ---------------------------------------------------------------------------------

OSPF_TOPOLOGY = {
    "networks": [{"name": "pods", "cidr": "10.1.0.0/16", "block_mask": 29}],
    "topologies": [
        {
            "networks": ["pods"],
            "map": [
                {
                    "name": f"rack-{r}",
                    "assignment": {"rack": f"rack-{r}"},
                    "routing": "prefix-announce-ospf",
                    "groups": [],
                }
                for r in (1, 2)
            ],
        }
    ],
}
OSPF_ROGUE = """router id 192.168.1.15;
protocol device {}
protocol static hijack { ipv4; route 10.1.128.0/30 blackhole; }   # rack-2's space
protocol ospf v2 rogue {
  ipv4 { import none; export all; };
  area 0 { interface "eth0" { hello 1; dead 4; }; };
}
"""


def test_ospf_variant_hosts_and_tor_in_one_area(tmp_path: Path) -> None:
    """Hosts announce their blocks into the rack's OSPF area; the ToR installs only
    prefixes of its group (per-host filtering is BGP-only: OSPF floods every LSA)."""
    template = tmp_path / "templates" / "bird.conf"
    template.parent.mkdir()
    shutil.copy(TEMPLATES / "host-ospf.conf.j2", template)
    hosts = {"h1": "192.168.1.11", "h2": "192.168.1.12", "h5": "192.168.1.15"}
    with (
        running(tmp_path / "romanad") as daemon,
        RomanaClient(daemon.url) as client,
        Lab("ospf", tmp_path) as lab,
    ):
        f = Fabric(lab, daemon, client, tmp_path, template)
        try:
            client.apply_topology(OSPF_TOPOLOGY)
            tor = f.ns["tor1"] = lab.switch("tor1", "192.168.1.1/24")
            for name, ip in hosts.items():
                client.add_host(name, ip, {"rack": "rack-1"})
                f.ns[name] = lab.host(name, f"{ip}/24", tor)
            f.endpoint("e1", "h1", "a")
            f.endpoint("e1b", "h1", "b")
            f.endpoint("e2", "h2", "a")
            for name in ("h1", "h2"):
                f.bird(name, hosts[name])
                f.publisher(name, host=name, template=template, arg="interface=eth0")
            f.bird("tor1", "192.168.1.1")
            f.publisher(
                "tor1",
                router="rack-1",
                template=TEMPLATES / "router-ospf.conf.j2",
                arg="interface=br0",
            )
            rogue = f.bird("h5", "192.168.1.15")
            rogue.conf.write_text(OSPF_ROGUE)
            rogue.birdc("configure")

            f.wait_routes(
                "tor1", {"10.1.0.0/18": "192.168.1.11", "10.1.64.0/18": "192.168.1.12"}, timeout=30
            )
            assert proto_of_pod_routes(tor) == {"bird"}
            assert f.ns["e1"].ping(f.ips["e2"], count=1, wait=2)
            assert f.ns["e2"].ping(f.ips["e1b"], count=1, wait=2)
            wait_until(
                lambda: "10.1.128.0/30" in f.birds["tor1"].birdc("show", "route", "filtered"),
                10,
                what="the rogue's LSA, filtered",
                interval=0.1,
            )
            assert "10.1.128.0/30" not in pod_routes(tor)

            client.remove_host("h2")  # its area goes: its route leaves the OSPF area
            f.wait_routes("tor1", {"10.1.0.0/18": "192.168.1.11"}, timeout=15)
        finally:
            stop_birds([b.pidfile for b in f.birds.values()])
