"""CNI plugin benchmark (issue: CNI plugin). Run as root. Prints one JSON object.

ADD and DEL latency of ``romana`` (the installed static plugin + romana-agent + romanad) against the
reference plugins ``ptp`` + ``host-local`` (Go, from ``/usr/lib/cni``), in the same run, on
the same machine, invoked the same way a runtime does (environment + config on stdin).

Setup, all created here and removed at the end even on failure: a host network namespace,
``2 x --pods`` pod namespaces, romanad on a Unix socket (temporary data directory), and
romana-agent inside the host namespace with ``--cni-socket``. The plugins are installed
with ``romana-cni install`` into a temporary bin directory.

The timing loop runs *inside* the host namespace (this script re-executes itself there
with ``ip netns exec``), so neither plugin pays for ``ip netns exec``: each timing is one
``fork+exec`` of the plugin, to its exit. ADDs alternate between the two plugins pod by
pod (reference pod i, romana pod i, ...), then DELs do the same, so drift in the machine's
load hits both alike, with a pause (``--gap-ms``) before every call so the aftermath of
one (romana deletes a pod's veth after answering DEL) never lands in the next.

Also reported: each plugin's bare start-up (``VERSION``), the agent's own time per command
(from the agent's ``--cni-request-log``; the rest is the plugin and the socket), and what is left
after the DELs (addresses in romanad, romana veths on the host).

Targets: romana ADD p50 <= 2 x the reference's; romana DEL p50 <= the reference's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
REFERENCE_DIR = Path("/usr/lib/cni")
TOPOLOGY = {
    "networks": [{"name": "pods", "cidr": "10.1.0.0/16", "block_mask": 26}],
    "topologies": [
        {
            "networks": ["pods"],
            "map": [{"name": "rack-1", "assignment": {"rack": "rack-1"}, "groups": []}],
        }
    ],
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 2),
        "p95": round(percentile(values, 0.95), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def run(*cmd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()[-3000:]}"
        )
    return result


# -- measurement (runs inside the host namespace) ----------------------------------------------
def invoke(
    plugin: str, command: str, conf: str, container: str, netns: str, cni_path: str
) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": cni_path,
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={container}",
    }
    started = time.perf_counter()
    result = subprocess.run(
        [plugin], input=conf, env=env, capture_output=True, text=True, check=False
    )
    elapsed = (time.perf_counter() - started) * 1000
    if result.returncode != 0:
        raise RuntimeError(f"{plugin} {command} {container}: {result.stdout} {result.stderr}")
    return elapsed, result


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    plugins = spec["plugins"]  # name -> {plugin, conf, cni_path, netns: [...]}
    times: dict[str, dict[str, list[float]]] = {
        n: {"ADD": [], "DEL": [], "VERSION": []} for n in plugins
    }
    for _ in range(spec["pods"]):
        for name, p in plugins.items():
            times[name]["VERSION"].append(
                invoke(p["plugin"], "VERSION", p["conf"], "v", "", p["cni_path"])[0]
            )
    for command in ("ADD", "DEL"):
        for i in range(spec["pods"]):
            for name, p in plugins.items():
                time.sleep(spec["gap_ms"] / 1000)  # let the previous call's aftermath settle
                elapsed, result = invoke(
                    p["plugin"], command, p["conf"], f"{name}{i}", p["netns"][i], p["cni_path"]
                )
                if command == "ADD" and '"ips"' not in result.stdout:
                    raise RuntimeError(f"{name} ADD gave no address: {result.stdout}")
                times[name][command].append(elapsed)
    return times


# -- setup ----------------------------------------------------------------------------------
@contextmanager
def namespaces(names: list[str]) -> Iterator[None]:
    made = []
    try:
        for name in names:
            run("ip", "netns", "add", name)
            made.append(name)
        yield
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)


@contextmanager
def process(argv: list[str], log: Path, ready: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A daemon whose readiness is a Unix socket appearing; stopped by PID afterwards."""
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not ready.is_socket():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def leftover_veths(host_ns: str) -> int:
    """romana veths still in the host namespace once deferred deletions had 2 s to finish."""
    deadline = time.monotonic() + 2
    while True:
        count = run("ip", "-n", host_ns, "-o", "link", "show").stdout.count(": rmn")
        if count == 0 or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from romana.api.client import RomanaClient

    tag = f"cnibench{os.getpid()}"
    host_ns = f"{tag}-host"
    ref_pods = [f"{tag}-r{i}" for i in range(args.pods)]
    our_pods = [f"{tag}-p{i}" for i in range(args.pods)]
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cni-bench-")))
        stack.enter_context(namespaces([host_ns, *ref_pods, *our_pods]))
        run("ip", "-n", host_ns, "link", "set", "lo", "up")
        (tmp / "topology.json").write_text(json.dumps(TOPOLOGY))
        romanad_sock, cni_sock = tmp / "romanad.sock", tmp / "cni.sock"
        log_file = tmp / "cni.log"  # the agent's request log: its own time per command
        stack.enter_context(
            process(
                [
                    str(BIN / "romanad"),
                    "--listen",
                    f"unix:{romanad_sock}",
                    "--data-dir",
                    str(tmp / "data"),
                    "--topology",
                    str(tmp / "topology.json"),
                    "--log-level",
                    "warning",
                ],
                tmp / "romanad.log",
                romanad_sock,
            )
        )
        with RomanaClient(f"unix:{romanad_sock}") as client:
            client.add_host("bench-host", "192.168.1.11", {"rack": "rack-1"})
        stack.enter_context(
            process(
                [
                    "ip",
                    "netns",
                    "exec",
                    host_ns,
                    str(BIN / "romana-agent"),
                    "--host",
                    "bench-host",
                    "--url",
                    f"unix:{romanad_sock}",
                    "--cni-socket",
                    str(cni_sock),
                    "--listen",
                    f"unix:{tmp / 'agent.sock'}",
                    "--log-level",
                    "warning",
                    "--cni-request-log",
                    str(log_file),
                ],
                tmp / "agent.log",
                cni_sock,
            )
        )
        bin_dir = tmp / "bin"
        run(str(BIN / "romana-cni"), "install", "--bin-dir", str(bin_dir))
        for plugin in ("ptp", "host-local"):
            (bin_dir / plugin).symlink_to(REFERENCE_DIR / plugin)
        spec = {
            "pods": args.pods,
            "gap_ms": args.gap_ms,
            "plugins": {
                "reference": {
                    "plugin": str(bin_dir / "ptp"),
                    "cni_path": str(bin_dir),
                    "netns": [f"/var/run/netns/{n}" for n in ref_pods],
                    "conf": json.dumps(
                        {
                            "cniVersion": "1.0.0",
                            "name": "refnet",
                            "type": "ptp",
                            "ipMasq": False,
                            "ipam": {
                                "type": "host-local",
                                "subnet": "10.99.0.0/16",
                                "dataDir": str(tmp / "host-local"),
                            },
                        }
                    ),
                },
                "romana": {
                    "plugin": str(bin_dir / "romana"),
                    "cni_path": str(bin_dir),
                    "netns": [f"/var/run/netns/{n}" for n in our_pods],
                    "conf": json.dumps(
                        {
                            "cniVersion": "1.0.0",
                            "name": "romana",
                            "type": "romana",
                            "agent_socket": str(cni_sock),
                        }
                    ),
                },
            },
        }
        (tmp / "spec.json").write_text(json.dumps(spec))
        child = run(
            "ip",
            "netns",
            "exec",
            host_ns,
            sys.executable,
            __file__,
            "--measure",
            str(tmp / "spec.json"),
            timeout=600,
        )
        times = json.loads(child.stdout)
        with RomanaClient(f"unix:{romanad_sock}") as client:
            left = client.addresses(host="bench-host")["addresses"]
        agent: dict[str, list[float]] = {"ADD": [], "DEL": []}
        for line in log_file.read_text().splitlines():
            entry = json.loads(line)
            if entry["command"] in agent:
                agent[entry["command"]].append(entry["ms"])
        veths = leftover_veths(host_ns)
    return report(args, times, agent, len(left), veths)


def report(
    args: argparse.Namespace,
    times: dict[str, dict[str, list[float]]],
    agent: dict[str, list[float]],
    left: int,
    veths: int,
) -> dict[str, Any]:
    ref, ours = times["reference"], times["romana"]
    add_ratio = statistics.median(ours["ADD"]) / statistics.median(ref["ADD"])
    del_ratio = statistics.median(ours["DEL"]) / statistics.median(ref["DEL"])
    return {
        "benchmark": "cni",
        "pods": args.pods,
        "gap_ms": args.gap_ms,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "reference": {
            "plugin": "ptp + host-local (containernetworking-plugins, Go)",
            "add_ms": summary(ref["ADD"]),
            "del_ms": summary(ref["DEL"]),
            "version_ms": summary(ref["VERSION"]),
        },
        "romana": {
            "plugin": "romana (static C plugin) -> romana-agent -> romanad",
            "add_ms": summary(ours["ADD"]),
            "del_ms": summary(ours["DEL"]),
            "version_ms": summary(ours["VERSION"]),
            "agent_add_ms": summary(agent["ADD"]),
            "agent_del_ms": summary(agent["DEL"]),
        },
        "ratio": {
            "add_p50": round(add_ratio, 2),
            "del_p50": round(del_ratio, 2),
            "add_p95": round(percentile(ours["ADD"], 0.95) / percentile(ref["ADD"], 0.95), 2),
            "del_p95": round(percentile(ours["DEL"], 0.95) / percentile(ref["DEL"], 0.95), 2),
        },
        "after_del": {"addresses_left_in_romanad": left, "romana_veths_left": veths},
        "targets_met": {
            "add_p50_le_2x_reference": add_ratio <= 2.0,
            "del_p50_le_reference": del_ratio <= 1.0,
            "nothing_left": left == 0 and veths == 0,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=100, help="pods per plugin (default 100)")
    parser.add_argument(
        "--gap-ms",
        type=float,
        default=25.0,
        help="pause before each invocation, so one call's aftermath (the "
        "veth romana deletes after answering DEL, romanad's changes feed "
        "waking the agent) never overlaps the next measured call "
        "(default %(default)s)",
    )
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the inner run
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(json.loads(args.measure.read_text()))))
        return
    if os.geteuid() != 0 or shutil.which("ip") is None:
        sys.exit("cni_bench: run as root, with iproute2 installed")
    if not (REFERENCE_DIR / "ptp").exists():
        sys.exit(
            f"cni_bench: no reference plugins in {REFERENCE_DIR} "
            "(apt-get install containernetworking-plugins)"
        )
    print(json.dumps(bench(args), indent=2))


if __name__ == "__main__":
    main()
