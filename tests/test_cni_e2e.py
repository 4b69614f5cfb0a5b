"""The CNI plugin end to end: real romanad, real agents, the plugin run as a runtime runs it.

Layout (every namespace created here, removed afterwards)::

    sw: bridge br0 192.168.7.1/24 ── h1 eth0 .11 (romana-agent --cni-socket h1.sock)
                                  └─ h2 eth0 .12 (romana-agent --cni-socket h2.sock)

One rack, L2 (``block-host-routes``): each agent routes its neighbour's blocks. Pods are
namespaces made by the lab; everything inside them (veth, address, routes) is made by the
plugin, invoked with ``ip netns exec HOST <bin>/romana`` and the ``CNI_*`` environment,
the network configuration on stdin. The pod network is 10.77.0.0/16, used by no other
test, so the leak check's scan of every namespace on the machine sees only ours.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from romana.api.client import RomanaClient
from romana.cni.config import host_ifname
from romana.errors import NotFound

from .daemon import Daemon
from .lab import Lab, Netns, romana_argv, run
from .wait import wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.daemons,
    pytest.mark.skipif(
        shutil.which("ping") is None or not Path("/usr/lib/cni/bridge").exists(),
        reason="needs iputils-ping and containernetworking-plugins",
    ),
]

REFERENCE = Path("/usr/lib/cni")
GATEWAY = "169.254.1.1"
TOPOLOGY = {
    "networks": [{"name": "pods", "cidr": "10.77.0.0/16", "block_mask": 26}],
    "topologies": [
        {
            "networks": ["pods"],
            "map": [
                {
                    "name": "rack-1",
                    "routing": "block-host-routes",
                    "assignment": {"rack": "rack-1"},
                    "groups": [],
                }
            ],
        }
    ],
}
HOSTS = {"h1": "192.168.7.11", "h2": "192.168.7.12"}


@dataclass
class Reply:
    rc: int
    stdout: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


class Cluster:
    def __init__(self, lab: Lab, romanad: Daemon, workdir: Path) -> None:
        self.lab, self.romanad, self.workdir = lab, romanad, workdir
        self.romanad_url = f"unix:{workdir / 'romanad.sock'}"
        self.client = RomanaClient(self.romanad_url)
        self.bin = workdir / "bin"
        self.hosts: dict[str, Netns] = {}
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self._pods = self._calls = 0
        sw = lab.switch("sw", "192.168.7.1/24")
        for name, ip in HOSTS.items():
            self.hosts[name] = lab.host(name, f"{ip}/24", sw)
            self.client.add_host(name, ip, {"rack": "rack-1", "tier": f"tier-{name}"})
        run(*romana_argv("romana-cni", "install", bin_dir=self.bin))
        for plugin in ("bridge", "ptp", "host-local", "loopback"):
            (self.bin / plugin).symlink_to(REFERENCE / plugin)
        for name in HOSTS:
            self.start_agent(name)

    def socket(self, host: str) -> Path:
        return self.workdir / f"cni-{host}.sock"

    def start_agent(self, name: str) -> None:
        self.agents[name] = self.lab.agent(
            self.hosts[name],
            name,
            self.romanad_url,
            serving=self.socket(name),
            cni_socket=self.socket(name),
            listen=f"unix:{self.workdir / f'agent-{name}.sock'}",
            resync_interval=1,
            cni_request_log=self.workdir / f"cni-requests-{name}.log",
        )

    def pod(self) -> Netns:
        self._pods += 1
        return self.lab.netns(f"pod{self._pods}")

    def conf(
        self, host: str, network: str = "net", version: str = "1.0.0", **fields: Any
    ) -> dict[str, Any]:
        return {
            "cniVersion": version,
            "name": network,
            "type": "romana",
            "agent_socket": str(self.socket(host)),
            **fields,
        }

    def cni(
        self,
        host: str,
        command: str,
        conf: dict[str, Any] | str,
        cid: str = "",
        netns: str = "",
        ifname: str = "eth0",
        plugin: str = "romana",
        args: str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a",
    ) -> Reply:
        return self.finish(self.start(host, command, conf, cid, netns, ifname, plugin, args))

    def start(
        self,
        host: str,
        command: str,
        conf: dict[str, Any] | str,
        cid: str = "",
        netns: str = "",
        ifname: str = "eth0",
        plugin: str = "romana",
        args: str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a",
    ) -> subprocess.Popen[str]:
        """Start the plugin as a runtime does: environment, config on stdin, in HOST's ns."""
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": str(self.bin),
            "CNI_ARGS": args,
            "PATH": os.environ["PATH"],
        }
        env = {k: v for k, v in env.items() if v}
        self._calls += 1
        stdin = self.workdir / f"stdin-{self._calls}.json"
        stdin.write_text(conf if isinstance(conf, str) else json.dumps(conf))
        with stdin.open() as config:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.hosts[host].name, str(self.bin / plugin)],
                stdin=config,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )

    @staticmethod
    def finish(proc: subprocess.Popen[str]) -> Reply:
        stdout, stderr = proc.communicate(timeout=60)
        assert stderr == "", stderr
        return Reply(proc.returncode, stdout)

    def add(self, host: str, cid: str, conf: dict[str, Any] | None = None) -> tuple[Netns, str]:
        """ADD a new pod on host; (its namespace, its IP)."""
        ns = self.pod()
        reply = self.cni(host, "ADD", conf or self.conf(host), cid, ns.path)
        assert reply.rc == 0, reply.stdout
        return ns, reply.json["ips"][0]["address"].removesuffix("/32")

    # -- what the kernel and romanad say ------------------------------------------------
    def pod_addresses(self, ns: Netns, ifname: str = "eth0") -> list[str]:
        shown = ns.ip("-j", "addr", "show", "dev", ifname, check=False)
        if shown.returncode != 0:
            return []
        return [
            f"{a['local']}/{a['prefixlen']}"
            for link in json.loads(shown.stdout)
            for a in link["addr_info"]
            if a["family"] == "inet"
        ]

    def veths(self, host: str) -> set[str]:
        return {
            link["ifname"]
            for link in self.hosts[host].ip_json("link", "show")
            if link["ifname"].startswith("rmn")
        }

    def host_route(self, host: str, ip: str) -> dict[str, Any] | None:
        routes = [r for r in self.hosts[host].routes() if r["dst"] == ip]
        return routes[0] if routes else None

    def allocated(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.address(name))
        except NotFound:
            return None

    def reaches(self, ns: Netns, ip: str) -> bool:
        return ns.ping(ip, count=1, wait=1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cni")
    (workdir / "topology.json").write_text(json.dumps(TOPOLOGY))
    romanad = Daemon(
        workdir / "data",
        "--topology",
        str(workdir / "topology.json"),
        "--listen",
        f"unix:{workdir / 'romanad.sock'}",
    ).start()
    try:
        with Lab("cn", workdir) as lab:
            c = Cluster(lab, romanad, workdir)
            try:
                yield c
            finally:
                c.client.close()
    finally:
        romanad.stop()


def error_of(reply: Reply) -> dict[str, Any]:
    assert reply.rc != 0, f"expected a failure, got {reply.stdout}"
    error = reply.json
    assert set(error) == {"cniVersion", "code", "msg", "details"}, error
    return error  # type: ignore[no-any-return]


def test_pods_on_two_hosts_ping_check_and_delete(cluster: Cluster) -> None:
    c = cluster
    a1_ns = c.pod()
    reply = c.cni("h1", "ADD", c.conf("h1"), "a1", a1_ns.path)
    assert reply.rc == 0, reply.stdout
    result = reply.json
    a1 = result["ips"][0]["address"].removesuffix("/32")

    # The result: what the runtime caches and hands back in CHECK and DEL.
    assert result["cniVersion"] == "1.0.0"
    host_if, pod_if = result["interfaces"]
    assert host_if["name"].startswith("rmn") and "sandbox" not in host_if
    pod_link = a1_ns.ip_json("link", "show", "dev", "eth0")[0]
    assert pod_if == {"name": "eth0", "mac": pod_link["address"], "sandbox": a1_ns.path}
    assert result["ips"] == [{"address": f"{a1}/32", "gateway": GATEWAY, "interface": 1}]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY}]
    # romanad: named per attachment, on h1, tenant from K8S_POD_NAMESPACE.
    record = c.allocated("net:a1:eth0")
    assert record is not None
    assert (record["ip"], record["host"], record["tenant"]) == (a1, "h1", "team-a")
    # The kernel: the /32 in the pod, its routes via the link-local gateway, the host route.
    assert c.pod_addresses(a1_ns) == [f"{a1}/32"]
    assert {(r["dst"], r.get("gateway")) for r in a1_ns.routes()} == {
        ("default", GATEWAY),
        (GATEWAY, None),
    }
    assert c.host_route("h1", a1) == {
        "dst": a1,
        "dev": host_if["name"],
        "protocol": "82",
        "scope": "link",
        "flags": [],
    }

    b1_ns, b1 = c.add("h2", "b1")
    a2_ns, a2 = c.add("h1", "a2")
    assert len({a1, a2, b1}) == 3
    # Across hosts (the agents route each other's blocks), on one host, host to pod.
    wait_until(lambda: c.reaches(a1_ns, b1), 10, what="a1 -> b1 across hosts")
    assert c.reaches(b1_ns, a1)
    assert c.reaches(a1_ns, a2)
    assert c.reaches(c.hosts["h1"], a1)
    assert c.reaches(c.hosts["h2"], a1)

    # CHECK passes on an intact pod, and says what is wrong on a broken one.
    check = c.conf("h1", prevResult=result)
    assert c.cni("h1", "CHECK", check, "a1", a1_ns.path) == Reply(0, "")
    a1_ns.ip("route", "del", "default")
    error = error_of(c.cni("h1", "CHECK", check, "a1", a1_ns.path))
    assert error["code"] == 102 and "default route" in error["details"], error
    a1_ns.ip("route", "add", "default", "via", GATEWAY)

    # DEL removes everything: veth, host route, allocation; a second DEL is fine too.
    assert c.cni("h1", "DEL", check, "a1", a1_ns.path) == Reply(0, "")
    assert c.host_route("h1", a1) is None
    assert c.allocated("net:a1:eth0") is None
    assert not c.reaches(c.hosts["h1"], a1)
    wait_until(lambda: host_if["name"] not in c.veths("h1"), 2, what="a1's veth deleted")
    assert c.pod_addresses(a1_ns) == []
    assert c.cni("h1", "DEL", check, "a1", a1_ns.path) == Reply(0, "")
    assert c.reaches(a2_ns, b1)  # the neighbours are untouched
    for host, cid, ns in (("h1", "a2", a2_ns), ("h2", "b1", b1_ns)):
        assert c.cni(host, "DEL", c.conf(host), cid, ns.path).rc == 0


def test_fifty_parallel_adds_then_dels(cluster: Cluster) -> None:
    c = cluster
    pods = [c.pod() for _ in range(50)]
    procs = [c.start("h1", "ADD", c.conf("h1"), f"p{i}", ns.path) for i, ns in enumerate(pods)]
    replies = [c.finish(p) for p in procs]
    assert [r.rc for r in replies] == [0] * 50, [r.stdout for r in replies if r.rc]
    ips = [r.json["ips"][0]["address"].removesuffix("/32") for r in replies]
    assert len(set(ips)) == 50
    for i, (ns, ip) in enumerate(zip(pods, ips, strict=True)):
        assert c.allocated(f"net:p{i}:eth0")["ip"] == ip  # type: ignore[index]
        assert c.pod_addresses(ns) == [f"{ip}/32"]
    # Every pod answers its host, and the other host (through the agents' block routes).
    for host in ("h1", "h2"):
        pings = [
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    c.hosts[host].name,
                    "ping",
                    "-n",
                    "-q",
                    "-c",
                    "1",
                    "-W",
                    "3",
                    ip,
                ],
                stdout=subprocess.DEVNULL,
            )
            for ip in ips
        ]
        unreachable = [ip for ip, p in zip(ips, pings, strict=True) if p.wait() != 0]
        assert not unreachable, f"from {host}: {unreachable}"

    procs = [c.start("h1", "DEL", c.conf("h1"), f"p{i}", ns.path) for i, ns in enumerate(pods)]
    assert [c.finish(p) for p in procs] == [Reply(0, "")] * 50
    left = [a for a in c.client.addresses(host="h1")["addresses"] if a["name"].startswith("net:p")]
    assert left == []
    assert all(c.host_route("h1", ip) is None for ip in ips)
    wait_until(lambda: not c.veths("h1"), 5, what="every veth of h1 deleted")


def test_failures_leave_nothing_behind(cluster: Cluster) -> None:
    c = cluster
    conf = c.conf("h1")
    # romanad down during ADD: "try again later", and no veth, no interface in the pod.
    ns = c.pod()
    assert c.romanad.stop() == 0
    try:
        error = error_of(c.cni("h1", "ADD", conf, "f1", ns.path))
        assert error["code"] == 11 and "romanad" in error["msg"]
        assert not c.veths("h1")
        assert ns.ip("link", "show", "eth0", check=False).returncode != 0
        status = error_of(c.cni("h1", "STATUS", c.conf("h1", version="1.1.0")))
        assert status["code"] == 50
    finally:
        c.romanad.start()
    assert c.allocated("net:f1:eth0") is None
    assert c.cni("h1", "STATUS", c.conf("h1", version="1.1.0")) == Reply(0, "")

    # A kernel failure after the allocation (the pod already has an eth0): the address is
    # released again, the veth removed.
    ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    error = error_of(c.cni("h1", "ADD", conf, "f2", ns.path))
    assert error["code"] == 101 and "eth0" in error["details"]
    assert c.allocated("net:f2:eth0") is None
    assert not c.veths("h1")

    # The pod's namespace vanished before DEL (the veth went with it): DEL succeeds and
    # frees the address; so does a DEL without any CNI_NETNS.
    gone, ip = c.add("h1", "f3")
    run("ip", "netns", "del", gone.name)
    assert c.cni("h1", "DEL", conf, "f3", gone.path) == Reply(0, "")
    assert c.allocated("net:f3:eth0") is None and c.host_route("h1", ip) is None
    c.add("h1", "f4")
    assert c.cni("h1", "DEL", conf, "f4") == Reply(0, "")
    assert c.allocated("net:f4:eth0") is None

    # An allocation left by an ADD whose answer was lost (agent restarted mid-ADD) is taken
    # over by the retried ADD; one for another host is not.
    lost = c.client.allocate("net:f7:eth0", "h1", tenant="team-a")
    ns, ip = c.add("h1", "f7")
    assert ip == lost["ip"] and c.pod_addresses(ns) == [f"{ip}/32"]
    c.client.allocate("net:f8:eth0", "h2", tenant="team-a")
    before = c.veths("h1")
    error = error_of(c.cni("h1", "ADD", conf, "f8", c.pod().path))
    assert error["code"] == 100 and "allocate" in error["msg"]
    assert c.veths("h1") == before  # the veth built meanwhile was removed again
    assert c.allocated("net:f8:eth0")["host"] == "h2"  # type: ignore[index]
    c.client.release("net:f8:eth0")
    assert c.cni("h1", "DEL", conf, "f7", ns.path) == Reply(0, "")

    # A namespace that does not exist: code 3 (nothing to clean up), nothing allocated.
    error = error_of(c.cni("h1", "ADD", conf, "f5", "/var/run/netns/no-such-pod"))
    assert error["code"] == 3
    assert c.allocated("net:f5:eth0") is None
    # The agent cannot be reached: 11 for ADD, 50 for STATUS, and VERSION still answers.
    nowhere = c.conf("h1", agent_socket=str(c.workdir / "absent.sock"), agent_wait_seconds=0)
    assert error_of(c.cni("h1", "ADD", nowhere, "f6", c.pod().path))["code"] == 11
    assert error_of(c.cni("h1", "STATUS", {**nowhere, "cniVersion": "1.1.0"}))["code"] == 50
    version = c.cni("h1", "VERSION", nowhere)
    assert version.rc == 0 and "1.1.0" in version.json["supportedVersions"]


def test_reference_bridge_plugin_with_romana_ipam(cluster: Cluster) -> None:
    c = cluster
    conf = {
        "cniVersion": "1.0.0",
        "name": "brnet",
        "type": "bridge",
        "bridge": "rbr0",
        "ipam": {"type": "romana-ipam", "agent_socket": str(c.socket("h1"))},
    }
    ns = c.pod()
    reply = c.cni("h1", "ADD", conf, "br1", ns.path, plugin="bridge")
    assert reply.rc == 0, reply.stdout
    ip = reply.json["ips"][0]["address"].removesuffix("/32")
    record = c.allocated("brnet:br1:eth0")
    assert record is not None and record["ip"] == ip and record["host"] == "h1"
    assert c.pod_addresses(ns) == [f"{ip}/32"]
    # romana-ipam routed the /32 to the bridge: the host and a romana pod on h2 reach it.
    route = c.host_route("h1", ip)
    assert route is not None and route["dev"] == "rbr0" and route["protocol"] == "82"
    assert c.reaches(c.hosts["h1"], ip)
    other_ns, other = c.add("h2", "br-peer")
    wait_until(lambda: c.reaches(other_ns, ip), 10, what="h2's pod -> the bridge pod")
    assert c.reaches(ns, other)

    assert c.cni("h1", "DEL", conf, "br1", ns.path, plugin="bridge") == Reply(0, "")
    assert c.allocated("brnet:br1:eth0") is None
    assert c.host_route("h1", ip) is None
    assert c.cni("h2", "DEL", c.conf("h2"), "br-peer", other_ns.path).rc == 0


def test_gc_releases_only_this_networks_stale_attachments(cluster: Cluster) -> None:
    c = cluster
    gc_conf = c.conf("h1", network="gcnet", version="1.1.0")
    kept_ns, kept_ip = c.add("h1", "g1", gc_conf)
    c.add("h1", "g2", gc_conf)
    c.add("h1", "g3", gc_conf)
    other_ns, _ = c.add("h1", "g1", c.conf("h1", network="othernet"))  # same ID, other net
    c.client.allocate("manual-address", "h1")
    # Without the list GC refuses to guess.
    assert error_of(c.cni("h1", "GC", gc_conf))["code"] == 7
    assert c.allocated("gcnet:g2:eth0") is not None

    valid = {**gc_conf, "cni.dev/valid-attachments": [{"containerID": "g1", "ifname": "eth0"}]}
    assert c.cni("h1", "GC", valid) == Reply(0, "")
    assert c.allocated("gcnet:g1:eth0") is not None
    assert c.allocated("gcnet:g2:eth0") is None and c.allocated("gcnet:g3:eth0") is None
    assert c.allocated("othernet:g1:eth0") is not None
    assert c.allocated("manual-address") is not None
    wait_until(lambda: len(c.veths("h1")) == 2, 5, what="g2's and g3's veths deleted")
    assert c.reaches(c.hosts["h1"], kept_ip)
    assert c.cni("h1", "DEL", gc_conf, "g1", kept_ns.path).rc == 0
    assert c.cni("h1", "DEL", c.conf("h1", network="othernet"), "g1", other_ns.path).rc == 0
    c.client.release("manual-address")


def test_ipam_check_reports_and_releases_leaked_addresses(cluster: Cluster) -> None:
    c = cluster
    live_ns, live_ip = c.add("h1", "l1")
    leaked_ns, leaked_ip = c.add("h1", "l2")
    run("ip", "netns", "del", leaked_ns.name)  # the runtime lost the pod without a DEL

    def check(*extra: str) -> dict[str, Any]:
        out = (
            c.hosts["h1"]
            .exec(
                sys.executable,
                "-m",
                "romana.cli.ipam",
                "check",
                "--host",
                "h1",
                "--url",
                c.romanad_url,
                "--json",
                *extra,
            )
            .stdout
        )
        return json.loads(out)  # type: ignore[no-any-return]

    report = check()
    assert [f["name"] for f in report["leaked"]] == ["net:l2:eth0"]
    assert report["leaked"][0]["ip"] == leaked_ip and report["released"] == []
    assert c.allocated("net:l2:eth0") is not None  # only reported
    # With the runtime's list: l1 is listed and live (fine); a list without l1 makes it
    # "stale", which is reported but never released (its namespace still holds it).
    listed = c.workdir / "valid.json"
    listed.write_text(json.dumps([{"containerID": "l1", "ifname": "eth0"}]))
    assert [f["name"] for f in check("--valid-attachments", str(listed))["stale"]] == []
    listed.write_text(json.dumps({"cni.dev/valid-attachments": []}))
    report = check("--valid-attachments", str(listed), "--release", "--grace", "0.2")
    assert [f["name"] for f in report["stale"]] == ["net:l1:eth0"]
    assert [f["name"] for f in report["released"]] == ["net:l2:eth0"]
    assert c.allocated("net:l2:eth0") is None
    assert c.allocated("net:l1:eth0")["ip"] == live_ip  # type: ignore[index]
    assert c.cni("h1", "DEL", c.conf("h1"), "l1", live_ns.path).rc == 0


def test_versions_errors_log_file_and_segments(cluster: Cluster) -> None:
    c = cluster
    log_file = c.workdir / "cni-requests-h1.log"
    log_file.unlink(missing_ok=True)
    # 0.4.0 results carry "version" in ips; 1.1.0 results carry the interfaces' MTU.
    old_ns = c.pod()
    old = c.cni("h1", "ADD", c.conf("h1", version="0.4.0"), "v1", old_ns.path)
    assert old.rc == 0 and old.json["cniVersion"] == "0.4.0"
    assert old.json["ips"][0]["version"] == "4"
    new_ns = c.pod()
    new = c.cni(
        "h1",
        "ADD",
        c.conf("h1", version="1.1.0", mtu=1400),
        "v2",
        new_ns.path,
    )
    assert new.rc == 0, new.stdout
    assert [i["mtu"] for i in new.json["interfaces"]] == [1400, 1400]
    assert new_ns.ip_json("link", "show", "dev", "eth0")[0]["mtu"] == 1400
    logged = [json.loads(line) for line in log_file.read_text().splitlines()]
    # The agent's --cni-request-log: one line per command, whatever the network config says.
    assert [(e["command"], e["container"], e["code"]) for e in logged] == [
        ("ADD", "v1", 0),
        ("ADD", "v2", 0),
    ]
    assert logged[1]["ip"] == new.json["ips"][0]["address"]

    assert (
        error_of(c.cni("h1", "ADD", c.conf("h1", version="9.9.9"), "v3", c.pod().path))["code"] == 1
    )
    # Cut short: the plugin still finds its socket, the agent cannot decode the rest.
    truncated = json.dumps(
        {"agent_socket": str(c.socket("h1")), "cniVersion": "1.0.0", "name": "net"}
    )[:-3]
    assert error_of(c.cni("h1", "ADD", truncated, "v3", c.pod().path))["code"] == 6
    bad_mtu = error_of(c.cni("h1", "ADD", c.conf("h1", mtu="big"), "v3", c.pod().path))
    assert bad_mtu["code"] == 7 and "mtu" in bad_mtu["msg"]
    assert error_of(c.cni("h1", "ADD", c.conf("h1"), "bad/id", c.pod().path))["code"] == 4
    assert error_of(c.cni("h1", "CHECK", c.conf("h1"), "v1", old_ns.path))["code"] == 7
    assert not [a for a in c.client.addresses(host="h1")["addresses"] if a["name"] == "net:v3:eth0"]
    for cid, ns in (("v1", old_ns), ("v2", new_ns)):
        assert c.cni("h1", "DEL", c.conf("h1"), cid, ns.path).rc == 0

    # The segment is the host's label named by segment_label (none by default).
    c.add("h2", "s1", c.conf("h2", segment_label="tier"))
    assert c.allocated("net:s1:eth0")["segment"] == "tier-h2"  # type: ignore[index]
    c.add("h2", "s2")
    assert c.allocated("net:s2:eth0")["segment"] == ""  # type: ignore[index]
    gc = {**c.conf("h2", version="1.1.0"), "cni.dev/valid-attachments": []}
    assert c.cni("h2", "GC", gc) == Reply(0, "")
    assert c.allocated("net:s1:eth0") is None and c.allocated("net:s2:eth0") is None


_SAFE_ENV_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=40,
)
_ENV_TEXT = st.one_of(
    st.sampled_from(["", "abc", "a/b", "..", "-x", "c" * 300, "eth0", "x:y", "é"]), _SAFE_ENV_TEXT
)
_JSON_JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def hostile_invocations(draw: st.DrawFn, socket: str) -> tuple[str, dict[str, Any] | str, str, str]:
    conf: dict[str, Any] = {
        # First, so a body cut short keeps it: the plugin must not wait for a default socket
        # that no agent serves here.
        "agent_wait_seconds": 0,
        "cniVersion": draw(st.sampled_from(["1.0.0", "0.4.0", "1.1.0", "9.9.9", 1, None])),
        "name": draw(st.one_of(_ENV_TEXT, _JSON_JUNK)),
        "type": "romana",
        "agent_socket": socket,
    }
    for key in draw(
        st.lists(
            st.sampled_from(
                [
                    "mtu",
                    "segment_label",
                    "romanad_url",
                    "log_file",
                    "prevResult",
                    "routes",
                    "host_route_dev",
                    "use_policy",
                    "ipam",
                ]
            ),
            max_size=3,
            unique=True,
        )
    ):
        conf[key] = draw(_JSON_JUNK)
    body: dict[str, Any] | str = conf
    if draw(st.integers(0, 9)) == 0:
        kept = len('{"agent_wait_seconds": 0')
        body = json.dumps(conf)[: draw(st.integers(kept, kept + 40))]  # cut short
    command = draw(st.sampled_from(["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "NOPE"]))
    return command, body, draw(_ENV_TEXT), draw(_ENV_TEXT)


def test_hostile_invocations_get_spec_errors_and_leave_the_agent_serving(cluster: Cluster) -> None:
    """Arbitrary configurations and environments through the real plugin and agent: every
    answer is a result or a CNI error object with a specification (or documented Romana)
    code, never a crash (199), a hang, or an agent that stops serving."""
    c = cluster
    codes: set[int] = set()

    @settings(
        max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(invocation=hostile_invocations(str(c.socket("h1"))))
    def attack(invocation: tuple[str, dict[str, Any] | str, str, str]) -> None:
        command, conf, cid, ifname = invocation
        reply = c.cni("h1", command, conf, cid, "/var/run/netns/no-such-pod", ifname)
        if reply.rc == 0:
            return
        error = error_of(reply)
        codes.add(error["code"])
        assert error["code"] in {1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 100, 101}, error

    attack()
    assert 7 in codes or 4 in codes
    # The agent still serves a normal pod.
    ns = c.pod()
    ok = c.cni("h1", "ADD", c.conf("h1"), "after-hostile", ns.path)
    assert ok.rc == 0, ok.stdout
    assert c.cni("h1", "DEL", c.conf("h1"), "after-hostile", ns.path).rc == 0


def test_a_netns_path_that_is_no_network_namespace_is_refused_without_blocking(
    cluster: Cluster,
) -> None:
    """CNI_NETNS is opened without blocking and must be a network namespace: a FIFO (a
    plain open waits for a writer, which froze the whole agent), a file, another kind of
    namespace and the host's own namespace get code 4, nothing is allocated or left
    behind, and an ordinary ADD started while the FIFO's ADD runs is served."""
    c = cluster
    conf = c.conf("h1")
    fifo = c.workdir / "not-a-netns.fifo"
    os.mkfifo(fifo)
    plain = c.workdir / "not-a-netns.txt"
    plain.write_text("")
    before = c.veths("h1")
    agent_pid = c.agents["h1"].pid
    cases = {
        "fifo": str(fifo),
        "file": str(plain),
        "uts": f"/proc/{agent_pid}/ns/uts",
        "own": f"/proc/{agent_pid}/ns/net",
    }
    blocked = c.start("h1", "ADD", conf, "nn-fifo", str(fifo))
    ok_ns = c.pod()
    ok = c.cni("h1", "ADD", conf, "nn-ok", ok_ns.path)  # served while the FIFO's ADD runs
    assert ok.rc == 0, ok.stdout
    error = error_of(c.finish(blocked))
    assert error["code"] == 4 and "network namespace" in error["details"], error
    for label, path in cases.items():
        error = error_of(c.cni("h1", "ADD", conf, f"nn-{label}", path))
        assert error["code"] == 4, (label, error)
        assert c.allocated(f"net:nn-{label}:eth0") is None
    assert "host's own" in error["msg"]  # the last case: the agent's own namespace
    assert c.veths("h1") - before == {host_ifname("net:nn-ok:eth0")}
    assert c.cni("h1", "DEL", conf, "nn-ok", ok_ns.path) == Reply(0, "")
