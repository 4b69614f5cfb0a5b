"""Run one benchmark against two versions of the code, alternating, in one session. Prints JSON.

    python benchmarks/ab.py --base HEAD~1 --runs 3 benchmarks/ipam_bench.py [ARGS...]

The base version is checked out into a temporary git worktree and put first on
``PYTHONPATH``, so the same benchmark script (from this tree) measures both; runs alternate
(base, current, base, ...) so that drift of the machine hits both alike. For each numeric
top-level field of the benchmark's JSON it reports every run and the median of each side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run(script: str, args: list[str], pythonpath: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, script, *args], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def numeric(result: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in result.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args()
    base_rev = subprocess.run(["git", "rev-parse", "--short", opts.base], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="romana-ab-") as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), base_rev], cwd=ROOT,
                       check=True, capture_output=True)
        try:
            runs: dict[str, list[dict[str, float]]] = {"base": [], "current": []}
            for _ in range(opts.runs):
                runs["base"].append(numeric(run(opts.script, opts.args, str(tree / "src"))))
                runs["current"].append(numeric(run(opts.script, opts.args, None)))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                           check=False, capture_output=True)
    fields = sorted(set(runs["base"][0]) & set(runs["current"][0]))
    medians = {side: {f: statistics.median(r[f] for r in rs) for f in fields}
               for side, rs in runs.items()}
    ratio = {f: round(medians["current"][f] / medians["base"][f], 3)
             for f in fields if medians["base"][f]}
    print(json.dumps({"benchmark": opts.script, "base": base_rev, "runs": runs,
                      "median": medians, "current_over_base": ratio}, indent=2))


if __name__ == "__main__":
    main()
