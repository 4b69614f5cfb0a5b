"""Deleting a released IP's tracked connections (issue 22, F2). Run as root. Prints JSON.

In a network namespace the script creates and deletes, ``--entries`` UDP flows (default
100,000) are tracked on loopback, ``--matching`` of them (default 50) from and to one
address; then ``romana.netlink.conntrack.forget_flows`` deletes that address's flows
(two kernel-filtered dumps and one delete per entry), ``--repeat`` times (default 5, the
flows made again each time), and the same for an address without any flow (the cost
every host pays for each release it reads from the feed); and a burst of ``--burst``
addresses (default 20) released at once, deleted by two filtered dumps per address and by
one unfiltered walk of the table, beside what ``one_walk_cheaper`` would choose; and the
agent's sweep (``sweep_flows``: one walk that reads every entry, deleting the ``--matching``
flows of one condemned address), paid once at start, reload or block gained, after which
an ADD of a clean address makes no dump at all. Medians and every run.

The kernel walks its whole hash table for each dump (every bucket, of every namespace:
``nf_conntrack_buckets``), so there is a floor whatever the namespace tracks, and the cost
grows with the entries, not with the flows deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conntrack_lab import tracking_netns

# Runs inside the namespace: makes the flows, times the deletions, prints one JSON line.
INSIDE = """
import json, socket, sys, time
from romana.netlink.conntrack import forget_flows, one_walk_cheaper, sweep_flows, _table_size

entries, matching, repeat, burst = map(int, sys.argv[1:5])
target, other = "127.0.3.9", "127.0.3.10"
victims = [f"127.0.4.{i + 1}" for i in range(burst)]

def flows(count, source="127.0.0.1", first_port=1000):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        for i in range(count):
            s.sendto(b"x", (f"127.1.{(i >> 8) & 255}.{i & 255}", first_port + (i >> 16)))

def touched(address, count):
    flows(count // 2, source=address)  # flows it started
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # flows sent to it
        for i in range(count - count // 2):
            s.sendto(b"x", (address, 2000 + i))

def timed(ips, one_walk=None):
    t = time.perf_counter()
    deleted = forget_flows(ips, one_walk)
    return time.perf_counter() - t, deleted

flows(entries - matching)
out = {"hit_s": [], "miss_s": [], "deleted": [], "burst_filtered_s": [], "burst_one_walk_s": [],
       "sweep_s": [], "swept": []}
for _ in range(repeat):
    touched(target, matching)
    seconds, deleted = timed([target])
    out["hit_s"].append(seconds)
    out["deleted"].append(deleted)
    out["miss_s"].append(timed([other])[0])
    for key, one_walk in (("burst_filtered_s", False), ("burst_one_walk_s", True)):
        for victim in victims:
            touched(victim, 2)
        out[key].append(timed(victims, one_walk)[0])
    touched(target, matching)
    t = time.perf_counter()
    swept = sweep_flows(lambda ip: ip == target)
    out["sweep_s"].append(time.perf_counter() - t)
    out["swept"].append([swept.deleted, len(swept.seen)])
out["tracked"] = _table_size()[0]
out["burst_auto_one_walk"] = one_walk_cheaper(burst, *_table_size())
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--matching", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--burst", type=int, default=20, help="addresses released at once")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces)")
    with tracking_netns("bct") as ns:
        started = time.perf_counter()
        counts = (args.entries, args.matching, args.repeat, args.burst)
        done = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", INSIDE, *map(str, counts)],
            capture_output=True,
            text=True,
            check=True,
        )
        raw: dict[str, Any] = json.loads(done.stdout)
    ms = lambda runs: {  # noqa: E731
        "median_ms": round(1000 * statistics.median(runs), 2),
        "runs_ms": [round(1000 * r, 2) for r in runs],
    }
    print(
        json.dumps(
            {
                "benchmark": "conntrack_forget_flows",
                "python": platform.python_version(),
                "kernel": platform.release(),
                "tracked_entries": raw["tracked"],
                "hash_buckets": int(
                    Path("/proc/sys/net/netfilter/nf_conntrack_buckets").read_text()
                ),
                "flows_deleted_per_run": raw["deleted"],
                "address_with_flows": ms(raw["hit_s"]),
                "address_without_flows": ms(raw["miss_s"]),
                f"burst_of_{args.burst}_filtered_dumps": ms(raw["burst_filtered_s"]),
                f"burst_of_{args.burst}_one_walk": ms(raw["burst_one_walk_s"]),
                "burst_chooses_one_walk": raw["burst_auto_one_walk"],
                "sweep": ms(raw["sweep_s"]),
                "sweep_deleted_and_seen_per_run": raw["swept"],
                "wall_s": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
