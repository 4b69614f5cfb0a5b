"""CNI ADD and DEL through a real container runtime: romana against ptp + host-local.

Run as root. Prints one JSON object.

containerd (private, started here) runs busybox pods with ``ctr run --rm --cni`` in one
node's network namespace, ``ctr`` chrooted into a root with only itself and its C
library (``tests/containerd.py``). Two views of the same node, same namespace, same ctr,
same image: one whose CNI dirs hold what ``romana-cni install`` wrote (romana-agent in
the node namespace, romanad in a control namespace), one with the reference ``ptp`` +
``host-local`` (containernetworking-plugins, from ``/usr/lib/cni``). Pods alternate
between the two, one at a time: ctr runs ADD between creating the task and starting it,
and DEL when the task exits (the pod is SIGKILLed).

What is timed is the CNI call only, the same way for both: the configured plugin
(``romana``; ``ptp``, which itself runs ``host-local``) is replaced by a tiny static timing
wrapper that records the monotonic clock around fork+exec+wait of the real plugin (moved
to ``NAME.real``; it gets the same argv, environment, stdin and stdout) and appends
``COMMAND CONTAINERID NANOSECONDS STATUS`` to ``NAME.times``. The wrapper's own start-up
is outside the interval and identical for both. Also reported: the agent's own time per
command (its ``--cni-request-log``), and the wall time of a whole
``ctr run`` until the task runs (image, snapshot, runc, CNI), per plugin.

``--resident N`` (default 1) pods per plugin run during the whole measurement and are
not timed: a node normally has pods, so its address block stays. With ``--resident 0``
the node is empty between pods: every DEL frees romana's block and every ADD gains one
again (a new block means a walk of the conntrack table before its first ADD), the worst
case for romana.

Target: romana ADD p50 <= 2 x the reference's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.containerd import (  # noqa: E402  (the harness the tests use)
    BUSYBOX,
    Runtime,
    RuntimeCluster,
    RuntimeNode,
    build_busybox_image,
)
from tests.lab import Lab  # noqa: E402

REFERENCE_DIR = Path("/usr/lib/cni")
POD_CIDR = "10.79.0.0/16"
REFERENCE_SUBNET = "10.98.0.0/16"
TIMER_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    char real[4096], times[4096];
    (void)argc;
    snprintf(real, sizeof real, "%s.real", argv[0]);
    snprintf(times, sizeof times, "%s.times", argv[0]);
    long long start = now_ns();
    pid_t pid = fork();
    if (pid == 0) {
        execv(real, argv);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    long long elapsed = now_ns() - start;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    const char *command = getenv("CNI_COMMAND"), *container = getenv("CNI_CONTAINERID");
    FILE *log = fopen(times, "a");
    if (log) {
        fprintf(log, "%s %s %lld %d\n", command ? command : "-", container ? container : "-",
                elapsed, code);
        fclose(log);
    }
    return code;
}
"""


def compile_timer(workdir: Path) -> Path:
    source, binary = workdir / "cni-timer.c", workdir / "cni-timer"
    source.write_text(TIMER_SOURCE)
    compiler = shutil.which("musl-gcc") or "gcc"
    subprocess.run([compiler, "-static", "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def wrap(bin_dir: Path, plugin: str, timer: Path) -> Path:
    """Put the timer in the plugin's place; returns the file its timings go to."""
    target = bin_dir / plugin
    target.rename(bin_dir / f"{plugin}.real")
    shutil.copy2(timer, target)
    return bin_dir / f"{plugin}.times"


def read_times(log: Path, untimed: frozenset[str]) -> dict[str, dict[str, float]]:
    """COMMAND -> container id -> milliseconds (a failed call is an error, not a time),
    without the ``untimed`` (resident) containers."""
    times: dict[str, dict[str, float]] = {}
    for line in log.read_text().splitlines():
        command, container, nanoseconds, status = line.split()
        if status != "0":
            raise RuntimeError(f"{log.name}: {command} {container} exited {status}")
        if container not in untimed:
            times.setdefault(command, {})[container] = int(nanoseconds) / 1e6
    return times


def agent_own_times(request_log: Path, untimed: frozenset[str]) -> dict[str, dict[str, float]]:
    """The agent's time per command, from its ``--cni-request-log`` (the rest of romana's
    time is the plugin's start-up and the socket)."""
    by_command: dict[str, list[float]] = {"ADD": [], "DEL": []}
    for line in request_log.read_text().splitlines():
        entry = json.loads(line)
        if entry["command"] in by_command and entry.get("container") not in untimed:
            by_command[entry["command"]].append(entry["ms"])
    return {command.lower(): summary(ms) for command, ms in by_command.items() if ms}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 2),
        "p95": round(percentile(values, 0.95), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def bench(pods: int, gap: float, resident: int = 1) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="runtime-cni-bench-"))
    try:
        with Lab("rb", workdir) as lab, Runtime(workdir / "rt") as runtime:
            request_log = runtime.shared / "cni-requests.log"
            agent_flags = {"log_level": "warning", "cni_request_log": request_log}
            cluster = RuntimeCluster(lab, runtime, POD_CIDR, racks=1, agent_flags=agent_flags)
            try:
                result = measure(cluster, runtime, workdir, pods, gap, resident)
                untimed = frozenset(result.pop("untimed"))
                result["agent_own_ms"] = agent_own_times(request_log, untimed)
                return result
            finally:
                runtime.close()  # pods first: their DELs need the agent
                cluster.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure(
    cluster: RuntimeCluster, runtime: Runtime, workdir: Path, pods: int, gap: float, resident: int
) -> dict[str, Any]:
    image = runtime.containerd.import_image(build_busybox_image(workdir), "localhost/busybox")
    timer = compile_timer(workdir)
    node = cluster.nodes["node1"]
    cluster.install("node1")
    romana_times = wrap(node.runtime.bin_dir, "romana", timer)
    reference = runtime.node(node.netns.name, "node1-reference")
    for plugin in ("ptp", "host-local"):
        shutil.copy2(REFERENCE_DIR / plugin, reference.bin_dir / plugin)
    reference_times = wrap(reference.bin_dir, "ptp", timer)
    (reference.conf_dir / "10-reference.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "reference",
                "plugins": [
                    {
                        "type": "ptp",
                        "ipMasq": False,
                        "ipam": {
                            "type": "host-local",
                            "subnet": REFERENCE_SUBNET,
                            "dataDir": str(runtime.shared / "host-local"),
                        },
                    }
                ],
            }
        )
    )
    sides: dict[str, RuntimeNode] = {"romana": node.runtime, "reference": reference}
    started: dict[str, list[float]] = {"romana": [], "reference": []}
    residents = []
    for name, side in sides.items():
        for k in range(resident):
            pod = side.start_pod(image, f"{name}-resident-{k}", BUSYBOX, "sleep", "100000")
            side.wait_started(pod, timeout=120)
            residents.append((side, pod))
    for i in range(pods):
        for name, side in sides.items():  # alternate: machine load drifts hit both alike
            time.sleep(gap)
            begin = time.monotonic()
            pod = side.start_pod(image, f"{name}-{i}", BUSYBOX, "sleep", "100000")
            side.wait_started(pod, timeout=120)
            started[name].append((time.monotonic() - begin) * 1000)
            time.sleep(gap)
            code = side.stop_pod(pod)
            if code != 137 or "level=error" in pod.output():
                raise RuntimeError(f"pod {pod.id}: ctr exited {code}: {pod.output()}")
    for side, pod in residents:
        side.stop_pod(pod)
    untimed = frozenset(name for _, pod in residents for name in (pod.id, pod.attachment))
    timings = {
        "romana": read_times(romana_times, untimed),
        "reference": read_times(reference_times, untimed),
    }
    result: dict[str, Any] = {
        "pods_per_plugin": pods,
        "resident_pods_per_plugin": resident,
        "gap_ms": gap * 1000,
        "untimed": sorted(untimed),
    }
    for name, by_command in timings.items():
        result[name] = {
            command.lower(): summary(list(by_command.get(command, {}).values()))
            for command in ("ADD", "DEL")
        }
        result[name]["ctr_run_until_running"] = summary(started[name])
    for command in ("add", "del"):
        result[f"{command}_p50_ratio"] = round(
            result["romana"][command]["p50"] / result["reference"][command]["p50"], 2
        )
    result["target_add_p50_at_most_2x_reference"] = result["add_p50_ratio"] <= 2.0
    result["left_in_romanad"] = len(cluster.client.addresses()["addresses"])
    result["left_romana_veths"] = sum(
        1 for link in node.netns.ip_json("link", "show") if link["ifname"].startswith("rmn")
    )
    result["plugin"] = (
        "static executable" if _is_elf(node.runtime.bin_dir / "romana.real") else "launcher"
    )
    result["machine"] = {
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    return result


def _is_elf(path: Path) -> bool:
    return path.read_bytes()[:4] == b"\x7fELF"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=50, help="pods per plugin (%(default)s)")
    parser.add_argument(
        "--gap-ms", type=float, default=50, help="pause before each ADD and DEL (%(default)s)"
    )
    parser.add_argument(
        "--resident",
        type=int,
        default=1,
        help="untimed pods per plugin running throughout; 0: an empty node (%(default)s)",
    )
    args = parser.parse_args()
    print(json.dumps(bench(args.pods, args.gap_ms / 1000, args.resident), indent=2))


if __name__ == "__main__":
    main()
