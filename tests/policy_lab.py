"""A small cluster for policy tests: real romanad, two hosts with real agents (nftables
policy on), nine pods made by the real CNI plugin, and a prober in every pod and host.

Layout (every namespace created here, removed afterwards)::

    sw: br0 192.168.8.1/24 ── h1 eth0 .11 ── pods x/a x/c y/b z/a z/c
                           └─ h2 eth0 .12 ── pods x/b y/a y/c z/b

Namespaces x, y, z (tenants, labelled ``ns: NAME``), pods a, b, c (labelled ``pod: NAME``)
serving TCP and UDP on 80 and 81, with the named ports ``serve-80-tcp`` ... of the
Kubernetes network-policy e2e suite. The pod network 10.78.0.0/16 is used by no other test.
h2's agent runs nft through a wrapper that refuses two things on purpose (see
:data:`NFT_WRAPPER`): it stands in for a host whose nft or kernel cannot load a rule.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from romana.api.client import RomanaClient

from .conftest import racks_topology
from .daemon import Daemon
from .lab import Lab, Netns, romana_argv, run
from .policy_oracle import Namespace, Pod, truth_table
from .wait import wait_until

POD_SCRIPT = Path(__file__).with_name("policy_pod.py")
TOPOLOGY = racks_topology(1, "10.78.0.0/16", 28)  # one L2 rack (the default routing)
HOSTS = {"h1": "192.168.8.11", "h2": "192.168.8.12"}
NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
SERVED = (80, 81)
CHECKS = [(proto, port) for proto in ("TCP", "UDP") for port in SERVED]
NAMED_PORTS = [
    {"name": f"serve-{port}-{proto.lower()}", "containerPort": port, "protocol": proto}
    for proto, port in CHECKS
]
# h2's nft: refuses everything while the flag file exists, and any ruleset with an SCTP
# port 7777 (a construct "this host cannot load"); otherwise it is the real nft.
NFT_WRAPPER = """#!/bin/sh
script=$(cat)
if [ -e "{flag}" ]; then echo "Error: refused by the test (flag file)" >&2; exit 1; fi
case "$script" in *"sctp th dport 7777"*)
  echo "Error: this host's nft cannot load SCTP port 7777 (test)" >&2; exit 1;; esac
printf '%s\\n' "$script" | exec nft "$@"
"""


@dataclass
class RunningPod:
    pod: Pod
    netns: Netns
    name: str  # the address name in romanad
    proc: subprocess.Popen[str]


class PolicyCluster:
    def __init__(
        self, lab: Lab, romanad_url: str, workdir: Path, agent_flags: dict[str, object]
    ) -> None:
        self.lab, self.workdir = lab, workdir
        self.agent_flags = agent_flags
        self.url = romanad_url
        self.client = RomanaClient(romanad_url)
        self.bin = workdir / "bin"
        self.flag = workdir / "h2-refuses-everything"
        self.hosts: dict[str, Netns] = {}
        self.namespaces = [Namespace(n, {"ns": n}) for n in NAMESPACES]
        self.pods: dict[str, RunningPod] = {}
        self.host_probers: dict[str, RunningPod] = {}
        sw = lab.switch("sw", "192.168.8.1/24")
        for name, ip in HOSTS.items():
            self.hosts[name] = lab.host(name, f"{ip}/24", sw)
            self.client.add_host(name, ip, {"rack": "rack-1"})
        run(*romana_argv("romana-cni", "install", bin_dir=self.bin))
        wrapper = workdir / "nft-h2"
        wrapper.write_text(NFT_WRAPPER.replace("{flag}", str(self.flag)))
        wrapper.chmod(0o755)
        self.start_agent("h1", "nft")
        self.start_agent("h2", str(wrapper))
        for ns in self.namespaces:
            self.client.label_tenant(ns.name, ns.labels)
        for i, ns in enumerate(NAMESPACES):
            for j, pod in enumerate(PODS):
                self.add_pod(ns, pod, "h1" if (i + j) % 2 == 0 else "h2")
        for name in HOSTS:
            self.host_probers[name] = self._prober(
                self.hosts[name], Pod("-", name, HOSTS[name], name), ""
            )

    # -- processes ------------------------------------------------------------------------
    def start_agent(self, name: str, nft: str) -> None:
        self.lab.agent(
            self.hosts[name],
            name,
            self.url,
            serving=self.workdir / f"cni-{name}.sock",
            cni_socket=self.workdir / f"cni-{name}.sock",
            listen=f"unix:{self.agent_socket(name)}",
            nft=nft,
            **self.agent_flags,
        )

    def agent_socket(self, name: str) -> Path:
        return self.workdir / f"agent-{name}.sock"

    def add_pod(
        self, ns: str, pod: str, host: str, labels: dict[str, str] | None = None
    ) -> RunningPod:
        """CNI ADD as a runtime runs it, then the pod's servers and prober."""
        labels = labels if labels is not None else {"pod": pod}
        netns = self.lab.netns(f"{ns}-{pod}")
        args = {
            "cni": {"labels": [{"key": k, "value": v} for k, v in labels.items()]},
            "romana": {"ports": NAMED_PORTS},
        }
        answer = self._cni("ADD", ns, pod, host, netns, args)
        ip = json.loads(answer)["ips"][0]["address"].removesuffix("/32")
        model = Pod(ns, pod, ip, host, dict(labels), [dict(p) for p in NAMED_PORTS])
        running = self._prober(netns, model, ",".join(map(str, SERVED)))
        running.name = f"net:{ns}-{pod}:eth0"
        self.pods[f"{ns}/{pod}"] = running
        return running

    def remove_pod(self, key: str) -> None:
        """CNI DEL of pod ``key`` (namespace/name) as a runtime runs it; its processes stop."""
        running = self.pods.pop(key)
        ns, pod = key.split("/")
        self._cni("DEL", ns, pod, running.pod.node, running.netns)
        running.proc.kill()
        running.proc.wait()
        run("ip", "netns", "del", running.netns.name)
        self.lab.namespaces.remove(running.netns)

    def _cni(
        self,
        command: str,
        ns: str,
        pod: str,
        host: str,
        netns: Netns,
        args: dict[str, Any] | None = None,
    ) -> str:
        """The plugin run in ``host``'s namespace for pod ns/pod; its stdout (it must
        succeed)."""
        conf = {
            "cniVersion": "1.0.0",
            "name": "net",
            "type": "romana",
            "agent_socket": str(self.workdir / f"cni-{host}.sock"),
            **({"args": args} if args else {}),
        }
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"{ns}-{pod}",
            "CNI_NETNS": netns.path,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(self.bin),
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}",
            "PATH": os.environ["PATH"],
        }
        done = subprocess.run(
            ["ip", "netns", "exec", self.hosts[host].name, str(self.bin / "romana")],
            input=json.dumps(conf),
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def _prober(self, netns: Netns, pod: Pod, ports: str) -> RunningPod:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns.name, sys.executable, str(POD_SCRIPT), ports],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lab.processes.append(proc)  # type: ignore[arg-type]
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return RunningPod(pod, netns, "", proc)

    # -- state ------------------------------------------------------------------------------
    def agent_health(self, name: str) -> dict[str, Any]:
        transport = httpx.HTTPTransport(uds=str(self.agent_socket(name)))
        with httpx.Client(transport=transport, base_url="http://agent", timeout=5) as c:
            return dict(c.get("/healthz").json())

    def converged(self, timeout: float = 15.0, hosts: list[str] | None = None) -> None:
        """The agents' tables reflect romanad's revision as of now."""
        revision = self.client.health()["revision"]
        for name in hosts or list(HOSTS):
            wait_until(
                lambda n=name: (self.agent_health(n)["policy"]["revision"] or 0) >= revision,
                timeout,
                what=f"{name}'s policy table at revision {revision}",
            )

    def clear_policies(self) -> None:
        for p in self.client.policies():
            self.client.remove_policy(p["id"])

    # -- probing ----------------------------------------------------------------------------
    def observed(self, sources: list[RunningPod], timeout: float = 1.0) -> dict[Any, bool]:
        """(source, destination, protocol, port) -> connected, every pair at once."""
        targets = list(self.pods.items())
        probes = [(dst.pod.ip, proto, port) for _, dst in targets for proto, port in CHECKS]
        keys = [(key, proto, port) for key, _ in targets for proto, port in CHECKS]
        out: dict[Any, bool] = {}
        results = _all_at_once(sources, probes, timeout)
        for src, answers in zip(sources, results, strict=True):
            for (dst, proto, port), ok in zip(keys, answers, strict=True):
                out[(_key(src), dst, proto, port)] = ok
        return out

    def expected(
        self, policies: list[dict[str, Any]], sources: list[RunningPod]
    ) -> dict[Any, bool]:
        pods = [p.pod for p in self.pods.values()]
        out: dict[Any, bool] = {}
        srcs = [s.pod if s.pod.namespace != "-" else s.pod.ip for s in sources]
        for proto, port in CHECKS:
            table = truth_table(self.namespaces, pods, policies, proto, port, HOSTS, srcs)
            for (src, dst), ok in table.items():
                out[(src, dst, proto, port)] = ok
        return out

    def sources(self) -> list[RunningPod]:
        return [*self.pods.values(), *self.host_probers.values()]

    def assert_matches(self, policies: list[dict[str, Any]]) -> int:
        """Probe every ordered pair (pods and hosts to pods, TCP/UDP 80/81) and compare
        with the oracle's verdicts for ``policies``. Returns the probe count."""
        sources = self.sources()
        return self.assert_observed(self.expected(policies, sources), sources)

    def assert_observed(self, expected: dict[Any, bool], sources: list[RunningPod]) -> int:
        """Every probe as ``expected`` says; a disagreement is probed again with a longer
        timeout before it counts (a slow allowed connection is not a policy bug)."""
        observed = self.observed(sources)
        wrong = {k for k, ok in observed.items() if ok != expected[k]}
        if wrong:
            again = self.observed(sources, timeout=3.0)
            wrong = {k for k in wrong if again[k] != expected[k]}
        verdict = {True: "allow", False: "deny"}
        assert not wrong, "\n".join(
            f"{src} -> {dst} {proto}/{port}: expected {verdict[expected[key]]}"
            for key in sorted(wrong)
            for src, dst, proto, port in [key]
        )
        return len(observed)


def np(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A NetworkPolicy object; ``spec`` without ``podSelector`` selects every pod."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": {}, **spec},
    }


def _key(running: RunningPod) -> str:
    pod = running.pod
    return pod.ip if pod.namespace == "-" else f"{pod.namespace}/{pod.name}"


def _all_at_once(
    sources: list[RunningPod], probes: list[tuple[str, str, int]], timeout: float
) -> list[list[bool]]:
    for src in sources:
        assert src.proc.stdin is not None
        src.proc.stdin.write(json.dumps({"timeout": timeout, "probes": probes}) + "\n")
        src.proc.stdin.flush()
    out = []
    for src in sources:
        assert src.proc.stdout is not None
        out.append([bool(r) for r in json.loads(src.proc.stdout.readline())])
    return out


@contextmanager
def policy_cluster(workdir: Path, **agent_flags: object) -> Iterator[PolicyCluster]:
    """The cluster, its agents started with ``agent_flags`` too (see ``romana_argv``)."""
    (workdir / "topology.json").write_text(json.dumps(TOPOLOGY))
    socket = workdir / "romanad.sock"
    romanad = Daemon(
        workdir / "data", "--topology", str(workdir / "topology.json"), "--listen", f"unix:{socket}"
    ).start()
    try:
        with Lab("pol", workdir) as lab:
            cluster = PolicyCluster(lab, f"unix:{socket}", workdir, agent_flags)
            try:
                yield cluster
            finally:
                cluster.client.close()
    finally:
        romanad.stop()
