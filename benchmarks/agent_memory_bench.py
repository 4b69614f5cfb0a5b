"""romana-agent's memory with many pods on its node. Run as root. Prints one JSON object.

romanad in a control network namespace (Unix socket), one node namespace running
romana-agent with its CNI socket, the plugin installed by ``romana-cni install``. Pods
are network namespaces made here (``ip -batch``, no containers: a container adds nothing
the agent keeps) and ADDed one after the other by running the installed plugin exactly as
a runtime does (fork+exec, ``CNI_*`` environment, the conflist's plugin configuration on
stdin), so each pod is a real attachment: an address from romanad, a veth pair, the
pod's /32 and routes, the host route, and the pod in the agent's policy state.

Reported from ``/proc/PID/status`` of the agent: ``VmRSS`` before the first pod, at
checkpoints while pods are added, after all are deleted again, and ``VmHWM`` (the peak);
the one-off growth at the first pod (the agent loads its CNI code paths on first use) and
the growth per further pod; romanad's RSS alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from romana.api.client import RomanaClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.containerd import POD_NETWORK, racks_topology  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from tests.lab import Lab, run  # noqa: E402
from tests.wait import wait_until  # noqa: E402

BIN = Path(sys.executable).parent
POD_CIDR = "10.80.0.0/16"


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def batch(lines: list[str]) -> None:
    """``ip -batch``: thousands of netns operations in one process."""
    done = subprocess.run(
        ["ip", "-force", "-batch", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ip -batch: {done.stderr.strip()[-2000:]}")


def cni(plugin: Path, command: str, container: str, netns: str, conf: str) -> dict[str, Any]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(plugin.parent),
        "PATH": os.environ["PATH"],
    }
    done = subprocess.run([str(plugin)], input=conf, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{command} {container}: {done.returncode} {done.stdout}")
    return json.loads(done.stdout) if done.stdout.strip() else {}


def bench(pods: int, checkpoints: list[int]) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="agent-memory-bench-"))
    prefix = f"amb{os.getpid() % 100000}p"
    made: list[str] = []
    try:
        with Lab("am", workdir) as lab:
            topology = workdir / "topology.json"
            topology.write_text(json.dumps(racks_topology(POD_CIDR, 1, block_mask=26)))
            control = lab.netns("ctl")
            romanad = Daemon(
                workdir / "data",
                "--topology",
                str(topology),
                socket=workdir / "romanad.sock",
                netns=control.name,
            ).start()
            try:
                node = lab.netns("node")
                node.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
                node.ip("addr", "add", "192.168.70.10/24", "dev", "eth0")
                node.ip("link", "set", "eth0", "up")
                node.ip("link", "set", "eth0p", "up")
                node.ip("route", "add", "default", "via", "192.168.70.1", "dev", "eth0")
                with RomanaClient(romanad.url) as client:
                    client.add_host("node1", "192.168.70.10", {"rack": "rack-1"})
                    return measure(
                        lab, node, romanad, client, workdir, prefix, made, pods, checkpoints
                    )
            finally:
                romanad.stop()
    finally:
        for start in range(0, len(made), 500):
            subprocess.run(
                ["ip", "-force", "-batch", "-"],
                input="".join(f"netns del {n}\n" for n in made[start : start + 500]),
                capture_output=True,
                text=True,
            )
        shutil.rmtree(workdir, ignore_errors=True)


def measure(
    lab: Lab,
    node: Any,
    romanad: Daemon,
    client: RomanaClient,
    workdir: Path,
    prefix: str,
    made: list[str],
    pods: int,
    checkpoints: list[int],
) -> dict[str, Any]:
    socket = workdir / "cni.sock"
    agent = lab.spawn(
        node,
        str(BIN / "romana-agent"),
        *("--host", "node1", "--url", romanad.url, "--cni-socket", str(socket)),
        *("--listen", f"unix:{workdir / 'agent.sock'}", "--log-level", "warning"),
        log=workdir / "agent.log",
    )
    wait_until(socket.is_socket, 30, what="the agent's CNI socket")
    bin_dir = workdir / "bin"
    run(
        str(BIN / "romana-cni"), "install", "--bin-dir", str(bin_dir), "--agent-socket", str(socket)
    )
    plugin = bin_dir / "romana"
    conf = json.dumps(
        {"cniVersion": "1.0.0", "name": POD_NETWORK, "type": "romana", "agent_socket": str(socket)}
    )
    time.sleep(1)  # let the agent finish its start-up (first sync) before the baseline
    assert romanad.proc is not None
    samples = [
        {"pods": 0, **status_kib(agent.pid), "romanad_VmRSS": status_kib(romanad.proc.pid)["VmRSS"]}
    ]
    names = [f"{prefix}{i}" for i in range(pods)]
    for start in range(0, pods, 500):
        chunk = names[start : start + 500]
        batch([f"netns add {n}" for n in chunk])
        made.extend(chunk)
    begin = time.monotonic()
    for i, name in enumerate(names, 1):
        cni(plugin, "ADD", f"pod{i}", f"/var/run/netns/{name}", conf)
        if i == 1 or i in checkpoints or i == pods:
            samples.append(
                {
                    "pods": i,
                    **status_kib(agent.pid),
                    "romanad_VmRSS": status_kib(romanad.proc.pid)["VmRSS"],
                }
            )
    add_seconds = time.monotonic() - begin
    allocated = len(client.addresses(host="node1")["addresses"])
    veths = sum(1 for link in node.ip_json("link", "show") if link["ifname"].startswith("rmn"))
    for i, name in enumerate(names, 1):
        cni(plugin, "DEL", f"pod{i}", f"/var/run/netns/{name}", conf)
    time.sleep(1)  # DEL deletes veths after answering
    after = {"pods": 0, **status_kib(agent.pid)}
    baseline, first, full = samples[0], samples[1], samples[-1]
    return {
        "benchmark": "agent_memory",
        "pods": pods,
        "how": "netns per pod, ADD/DEL by running the installed plugin as a runtime does",
        "allocated_in_romanad_at_peak": allocated,
        "romana_veths_at_peak": veths,
        "agent_kib": samples,
        "agent_after_deleting_all_kib": after,
        # The first ADD loads the CNI path's modules and warms caches (a one-off); what each
        # further pod costs is the growth from the first pod to the last.
        "agent_rss_first_pod_kib": first["VmRSS"] - baseline["VmRSS"],
        "agent_rss_per_further_pod_kib": round(
            (full["VmRSS"] - first["VmRSS"]) / max(1, pods - 1), 2
        ),
        "add_seconds_total": round(add_seconds, 2),
        "left_in_romanad": len(client.addresses(host="node1")["addresses"]),
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=1000, help="pods on the node (%(default)s)")
    parser.add_argument(
        "--checkpoints", default="100,250,500", help="also sample at these pod counts"
    )
    args = parser.parse_args()
    checkpoints = [int(c) for c in args.checkpoints.split(",") if c]
    print(json.dumps(bench(args.pods, checkpoints), indent=2))


if __name__ == "__main__":
    main()
