"""The embedded store's append speed (SQLite, WAL, synchronous=FULL). Prints JSON.

Single-fact appends are one fsync each (romanad's group commit makes them rare under
load); a batch of 1,000 facts is one transaction. The floors in ``targets_met`` catch an
fsync-per-fact or reconnect-per-call regression; they moved here from a unit test, where
a busy CI machine made them flaky.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from romana.store.sqlite import SqliteStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--appends", type=int, default=2000, help="single-fact appends timed")
    n = parser.parse_args().appends
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "data")
        try:
            start = time.perf_counter()
            for i in range(n):
                store.append([{"kind": "bench", "n": i}], i)
            single_rate = n / (time.perf_counter() - start)
            start = time.perf_counter()
            store.append([{"kind": "bench", "n": n + i} for i in range(1000)], n)
            batch_s = time.perf_counter() - start
        finally:
            store.close()
    print(
        json.dumps(
            {
                "benchmark": "store_appends",
                "single_fact_appends": n,
                "single_fact_appends_per_s": round(single_rate),
                "batch_1000_facts_s": round(batch_s, 4),
                "targets_met": {
                    "single_appends_per_s>250": single_rate > 250,
                    "batch_1000_s<1": batch_s < 1.0,
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
