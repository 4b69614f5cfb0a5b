"""Run one benchmark against two versions of the code, alternating, in one session. Prints JSON.

    python benchmarks/ab.py --base HEAD~1 --runs 3 benchmarks/ipam_bench.py [ARGS...]

The base version's ``src`` is exported into a temporary directory and put first on
``PYTHONPATH``, so the same benchmark script (from this tree, or any path) measures both;
runs alternate (base, current, base, ...) so that drift of the machine hits both alike.
For each number in the benchmark's JSON (by dotted path) it reports every run and the
median of each side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def base_tree(revision: str) -> Iterator[tuple[str, Path]]:
    """(short revision, its ``src`` directory) exported into a temporary directory (git
    archive: the repository itself is only read, so a run leaves no worktree behind)."""
    rev = subprocess.run(
        ["git", "rev-parse", "--short", revision],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="romana-ab-") as tmp:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", rev, "src"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield rev, Path(tmp) / "src"


def run(script: str, args: list[str], pythonpath: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, script, *args],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def numeric(result: Any, prefix: str = "") -> dict[str, float]:
    """Every number in the benchmark's JSON, by dotted path (``results.0.allocations_per_s``)."""
    if isinstance(result, bool):
        return {}
    if isinstance(result, int | float):
        return {prefix: result}
    items = (
        result.items()
        if isinstance(result, dict)
        else (enumerate(result) if isinstance(result, list) else ())
    )
    out: dict[str, float] = {}
    for key, value in items:
        out.update(numeric(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="", help="keep fields whose path contains this")
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args()
    with base_tree(opts.base) as (base_rev, base_src):
        runs: dict[str, list[dict[str, float]]] = {"base": [], "current": []}
        for _ in range(opts.runs):
            runs["base"].append(numeric(run(opts.script, opts.args, str(base_src))))
            runs["current"].append(numeric(run(opts.script, opts.args, None)))
    fields = sorted(f for f in set(runs["base"][0]) & set(runs["current"][0]) if opts.only in f)
    medians = {
        side: {f: statistics.median(r[f] for r in rs) for f in fields} for side, rs in runs.items()
    }
    ratio = {
        f: round(medians["current"][f] / medians["base"][f], 3)
        for f in fields
        if medians["base"][f]
    }
    runs = {side: [{f: r[f] for f in fields} for r in rs] for side, rs in runs.items()}
    print(
        json.dumps(
            {
                "benchmark": opts.script,
                "base": base_rev,
                "runs": runs,
                "median": medians,
                "current_over_base": ratio,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
