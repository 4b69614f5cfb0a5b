"""Engine cost in CPU instructions (valgrind's callgrind), this tree against a git revision.

    python benchmarks/ipam_instructions.py --base HEAD~1 [--count 20000]

Wall-clock figures on a shared VM wander by +-20% between runs; instruction counts do not
(the same binary, inputs and environment give the same count). The workload is
``ipam_bench.py``'s (4 racks x 32 leaves, 1,024 hosts, /29 blocks, 20 tenants; ``--leaves``
and ``--hosts`` make it smaller), run in separate processes (side by side, one per core)
up to four points, so differences isolate each phase: building the cluster; each host's
first allocation (a new area for each: 1,024 of them); the rest of ``--count``
allocations, round-robin; releasing them all. Prints JSON: instructions per operation for
both trees and their ratio. Needs valgrind (Debian package ``valgrind``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ab import ROOT, base_tree

WORKLOAD = """
import os, subprocess, sys
sys.path.insert(0, {bench!r})
import ipam_bench as b
phase, count = sys.argv[1], int(sys.argv[2])
b.HOSTS, b.LEAVES = int(sys.argv[3]), int(sys.argv[4])
# Counted from here on: the imports, alike in every phase, would only slow callgrind down
# (started with --instr-atstart=no, it runs them at a fraction of its instrumented cost).
subprocess.run(["callgrind_control", "--instr=on", str(os.getpid())], check=True)
engine, hosts = b.build()
tenants = [f"tenant-{{t}}" for t in range(b.TENANTS)]
names = [f"pod-{{i:06d}}" for i in range(count)]
upto = {{"build": 0, "first": b.HOSTS, "all": count, "release": count}}[phase]
for i in range(upto):
    engine.allocate(names[i], hosts[i % b.HOSTS], tenants[i % b.TENANTS])
if phase == "release":
    for name in names:
        engine.release(name)
"""
PHASES = ("build", "first", "all", "release")


def instructions(script: Path, phase: str, opts: argparse.Namespace, src: Path | None) -> int:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={tmp}/cg.out",
                sys.executable,
                str(script),
                phase,
                str(opts.count),
                str(opts.hosts),
                str(opts.leaves),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    match = re.search(r"Collected : (\d+)", out)
    assert match, out[-2000:]
    return int(match.group(1))


def per_operation(counts: dict[str, int], count: int, hosts: int) -> dict[str, float]:
    return {
        "first_allocation": round((counts["first"] - counts["build"]) / hosts),
        "allocation": round((counts["all"] - counts["first"]) / (count - hosts)),
        "release": round((counts["release"] - counts["all"]) / count),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--hosts", type=int, default=1024, help="fewer than --count")
    parser.add_argument("--leaves", type=int, default=32, help="leaf groups per rack")
    opts = parser.parse_args()
    hosts = opts.hosts
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "workload.py"
        script.write_text(WORKLOAD.format(bench=str(ROOT / "benchmarks")))
        # A count does not depend on the machine's load: the runs go side by side.
        with base_tree(opts.base) as (rev, src), ThreadPoolExecutor(os.cpu_count()) as pool:
            runs = {
                (tree, p): pool.submit(instructions, script, p, opts, where)
                for tree, where in (("base", src), ("current", None))
                for p in PHASES
            }
            base = {p: runs["base", p].result() for p in PHASES}
            current = {p: runs["current", p].result() for p in PHASES}
    figures = {
        "base": per_operation(base, opts.count, hosts),
        "current": per_operation(current, opts.count, hosts),
    }
    ratio = {k: round(figures["current"][k] / figures["base"][k], 3) for k in figures["base"]}
    print(
        json.dumps(
            {
                "benchmark": "ipam_instructions",
                "base": rev,
                "count": opts.count,
                "hosts": opts.hosts,
                "leaf_groups_per_rack": opts.leaves,
                "instructions_per_operation": figures,
                "current_over_base": ratio,
                "targets_met": {"allocation within 10%": ratio["allocation"] <= 1.10},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
