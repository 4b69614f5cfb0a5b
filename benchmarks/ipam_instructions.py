"""Engine cost in CPU instructions (valgrind's callgrind), this tree against a git revision.

    python benchmarks/ipam_instructions.py --base HEAD~1 [--count 20000]

Wall-clock figures on a shared VM wander by +-20% between runs; instruction counts do not
(the same binary, inputs and environment give the same count). The workload is
``ipam_bench.py``'s (4 racks x 32 leaves, 1,024 hosts, /29 blocks, 20 tenants), run in
separate processes up to four points, so differences isolate each phase: building the
cluster; each host's first allocation (a new area for each: 1,024 of them); the rest of
``--count`` allocations, round-robin; releasing them all. Prints JSON: instructions per
operation for both trees and their ratio. Needs valgrind (Debian package ``valgrind``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from ab import ROOT, base_tree

WORKLOAD = """
import sys
sys.path.insert(0, {bench!r})
import ipam_bench as b
phase, count = sys.argv[1], int(sys.argv[2])
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


def instructions(script: Path, phase: str, count: int, src: Path | None) -> int:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/cg.out",
                sys.executable,
                str(script),
                phase,
                str(count),
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
    opts = parser.parse_args()
    hosts = 1024
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "workload.py"
        script.write_text(WORKLOAD.format(bench=str(ROOT / "benchmarks")))
        with base_tree(opts.base) as (rev, src):
            base = {p: instructions(script, p, opts.count, src) for p in PHASES}
        current = {p: instructions(script, p, opts.count, None) for p in PHASES}
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
                "instructions_per_operation": figures,
                "current_over_base": ratio,
                "targets_met": {"allocation within 10%": ratio["allocation"] <= 1.10},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
