"""End to end in network namespaces: the listener feeds romanad from the project's API
server, real agents and the real CNI plugin run in two host namespaces, pods are added
as kubelet adds them (``K8S_POD_NAMESPACE``/``K8S_POD_NAME``, no labels in the network
configuration: the agent reads them from the API server), and a NetworkPolicy posted to
the API server isolates them.

    sw: br0 192.168.9.1/24 (the API server listens here too) ── h1 .11 ── h2 .12
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from romana.api.client import RomanaClient

from .daemon import Daemon
from .kube import KubeApiServer, in_step, namespace, node, pod, policy
from .lab import Lab, Netns, romana_argv, run
from .wait import wait_until

POD_SCRIPT = Path(__file__).with_name("policy_pod.py")
HOSTS = {"h1": "192.168.9.11", "h2": "192.168.9.12"}
APISERVER = "192.168.9.1"
ZONE_A = {"topology.kubernetes.io/zone": "us-west-1a"}
TOPOLOGY = {
    "networks": [{"name": "pods", "cidr": "10.79.0.0/16", "block_mask": 28}],
    "topologies": [
        {
            "networks": ["pods"],
            "map": [
                {"name": "us-west-1a", "assignment": ZONE_A, "groups": []},
                {
                    "name": "us-west-1b",
                    "assignment": {"topology.kubernetes.io/zone": "us-west-1b"},
                    "groups": [],
                },
            ],
        }
    ],
}
PORTS = [{"name": "http", "containerPort": 80, "protocol": "TCP"}]

pytestmark = [
    pytest.mark.root,
    pytest.mark.daemons,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]


class Pods:
    """Pods on the hosts, added by the CNI plugin as kubelet runs it."""

    def __init__(self, lab: Lab, hosts: dict[str, Netns], workdir: Path, cluster: KubeApiServer):
        self.lab, self.hosts, self.workdir, self.cluster = lab, hosts, workdir, cluster
        self.probers: dict[str, subprocess.Popen[str]] = {}
        self.ips: dict[str, str] = {}

    def add(self, ns: str, name: str, host: str, **labels: str) -> str:
        obj = pod(ns, name, host, **labels)
        obj["spec"]["containers"][0]["ports"] = PORTS
        self.cluster.create(obj)
        netns = self.lab.netns(f"{ns}-{name}")
        conf = {
            "cniVersion": "1.0.0",
            "name": "k8s",
            "type": "romana",
            "agent_socket": str(self.workdir / f"cni-{host}.sock"),
        }
        env = {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": f"{ns}-{name}-0123456789",
            "CNI_NETNS": netns.path,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(self.workdir / "bin"),
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};"
            f"K8S_POD_INFRA_CONTAINER_ID={ns}-{name}-0123456789",
            "PATH": os.environ["PATH"],
        }
        done = subprocess.run(
            ["ip", "netns", "exec", self.hosts[host].name, str(self.workdir / "bin" / "romana")],
            input=json.dumps(conf),
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        ip = str(json.loads(done.stdout)["ips"][0]["address"]).removesuffix("/32")
        # kubelet reports the IP in the pod's status
        self.cluster.http.patch(
            f"/api/v1/namespaces/{ns}/pods/{name}/status",
            content=json.dumps(
                {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
            ),
            headers={"content-type": "application/merge-patch+json"},
        ).raise_for_status()
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns.name, sys.executable, str(POD_SCRIPT), "80"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lab.processes.append(proc)  # type: ignore[arg-type]
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        self.probers[f"{ns}/{name}"], self.ips[f"{ns}/{name}"] = proc, ip
        return ip

    def reaches(self, source: str, target: str, timeout: float = 1.0) -> bool:
        proc = self.probers[source]
        assert proc.stdin is not None and proc.stdout is not None
        probe = {"timeout": timeout, "probes": [[self.ips[target], "TCP", 80]]}
        proc.stdin.write(json.dumps(probe) + "\n")
        proc.stdin.flush()
        return bool(json.loads(proc.stdout.readline())[0])


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab("k8s", tmp_path) as lab:
        yield lab


def test_pods_get_their_nodes_group_and_namespace_and_a_policy_isolates_them(
    tmp_path: Path, lab: Lab
) -> None:
    sw = lab.switch("sw", f"{APISERVER}/24")
    hosts = {name: lab.host(name, f"{ip}/24", sw) for name, ip in HOSTS.items()}

    (tmp_path / "topology.json").write_text(json.dumps(TOPOLOGY))
    socket = tmp_path / "romanad.sock"
    romanad_daemon = Daemon(
        tmp_path / "data",
        "--topology",
        str(tmp_path / "topology.json"),
        "--listen",
        f"unix:{socket}",
    ).start()
    cluster = KubeApiServer(tmp_path, also=(sw.name, APISERVER))
    romanad = RomanaClient(f"unix:{socket}")
    try:
        inside = tmp_path / "kubeconfig-hosts.yaml"
        inside.write_text(yaml.safe_dump(cluster.server.kubeconfig_at(APISERVER, cluster.TOKEN)))
        # The listener runs on h1's host network, as its Deployment would.
        listener = romana_argv(
            "romana-listener",
            kubeconfig=inside,
            romanad=f"unix:{socket}",
            resync=5,
            health_listen=f"unix:{tmp_path / 'listener.sock'}",
        )
        lab.spawn(hosts["h1"], *listener, log=tmp_path / "listener.log")
        for name, ip in HOSTS.items():
            cluster.create(node(name, ip, "us-west-1a"))
        cluster.create(node("h3", "192.168.9.13", "us-west-1b"))  # no agent: placement only
        cluster.create(namespace("shop", team="shop"))
        cluster.create(namespace("guests"))
        in_step(romanad, cluster)
        groups = {h: romanad.host(h)["groups"]["pods"] for h in ("h1", "h2", "h3")}
        assert [groups[h]["group"] for h in ("h1", "h2", "h3")] == [
            "us-west-1a", "us-west-1a", "us-west-1b"
        ]  # fmt: skip

        run(*romana_argv("romana-cni", "install", bin_dir=tmp_path / "bin"))
        for name in HOSTS:
            lab.agent(
                hosts[name],
                name,
                f"unix:{socket}",
                serving=tmp_path / f"cni-{name}.sock",
                kubeconfig=inside,
                cni_socket=tmp_path / f"cni-{name}.sock",
                listen=f"unix:{tmp_path / f'agent-{name}.sock'}",
            )

        pods = Pods(lab, hosts, tmp_path, cluster)
        web = pods.add("shop", "web", "h1", app="web")
        pods.add("shop", "client", "h2", app="client")
        pods.add("guests", "visitor", "h2", app="client")
        zone_a = ipaddress.ip_network(groups["h1"]["cidr"])
        for key, ip in pods.ips.items():
            assert ipaddress.ip_address(ip) in zone_a, (key, ip)
        held = {a["ip"]: a for a in romanad.addresses()["addresses"]}
        assert (
            held[web]["tenant"] == "shop" and held[pods.ips["guests/visitor"]]["tenant"] == "guests"
        )
        # The labels and named ports came with the allocation, read by the agent.
        assert held[web]["labels"] == {"app": "web"}
        assert held[web]["ports"] == [{"name": "http", "port": 80, "protocol": "tcp"}]
        assert held[web]["host"] == "h1"

        wait_until(lambda: pods.reaches("guests/visitor", "shop/web"), 15, what="open before")
        assert pods.reaches("shop/client", "shop/web")

        spec = {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                         "ports": [{"port": "http", "protocol": "TCP"}]}],
        }  # fmt: skip
        cluster.create(policy("shop", "web-from-clients", spec))
        in_step(romanad, cluster)
        wait_until(lambda: not pods.reaches("guests/visitor", "shop/web", 0.5), 15,
                   what="the other namespace's client isolated")  # fmt: skip
        assert pods.reaches("shop/client", "shop/web")
        # The policy goes: open again.
        cluster.delete("networkpolicies", "web-from-clients", "shop")
        wait_until(lambda: pods.reaches("guests/visitor", "shop/web"), 15, what="open after")
    finally:
        romanad.close()
        cluster.close()
        romanad_daemon.stop()
