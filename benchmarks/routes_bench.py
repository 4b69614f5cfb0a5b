"""Route minimality and churn at cluster scale (issue: routes). Prints JSON.

4 racks x 16 hosts, `10.0.0.0/8` with `/29` blocks; 100,000 addresses over 20 tenants
(round-robin over hosts), then 10,000 more while counting which devices' routes change.
Run once with racks as L2 segments (`block-host-routes`) and once as L3-to-host
(`prefix-announce-bgp`). For each device class (host, rack router, spine) it reports
routes and distinct next hops (mean and max), and route-set updates during the churn
phase; plus the engine's allocation rate with route tracking on and off.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from romana.ipam import Engine
from romana.routes import RouteTracker

RACKS, HOSTS_PER_RACK, TENANTS = 4, 16, 20


def topology(mode: str) -> dict[str, Any]:
    racks = [{"name": f"rack-{r}", "routing": mode, "assignment": {"rack": f"rack-{r}"},
              "groups": []} for r in range(RACKS)]
    return {"networks": [{"name": "pods", "cidr": "10.0.0.0/8", "block_mask": 29}],
            "topologies": [{"networks": ["pods"], "map": racks}]}


def cluster(mode: str, tracked: bool) -> tuple[Engine, RouteTracker | None]:
    engine = Engine()
    engine.apply_topology(topology(mode))
    tracker = None
    if tracked:
        tracker = RouteTracker(lambda: engine.state)
        engine.observers.append(tracker.observe)
    for h in range(RACKS * HOSTS_PER_RACK):
        engine.add_host(f"host-{h}", f"192.168.{h % RACKS}.{h // RACKS + 1}",
                        {"rack": f"rack-{h % RACKS}"})
    return engine, tracker


def allocate(engine: Engine, start: int, count: int) -> float:
    hosts = RACKS * HOSTS_PER_RACK
    began = time.perf_counter()
    for i in range(start, start + count):
        engine.allocate(f"pod-{i}", f"host-{i % hosts}", f"tenant-{i % TENANTS}")
    return count / (time.perf_counter() - began)


def device_class(vantage: str) -> str:
    if vantage.startswith("host:"):
        return "host"
    return "spine" if vantage == "group:/" else "rack_router"


def report(mode: str, addresses: int, churn: int) -> dict[str, Any]:
    engine, tracker = cluster(mode, tracked=True)
    assert tracker is not None
    rate_tracked = allocate(engine, 0, addresses)
    before = {row["vantage"]: row["updates"] for row in tracker.summary()}
    churn_rate = allocate(engine, addresses, churn)
    classes: dict[str, dict[str, list[int]]] = {}
    for row in tracker.summary():
        entry = classes.setdefault(device_class(str(row["vantage"])),
                                   {"routes": [], "next_hops": [], "updates": []})
        entry["routes"].append(int(row["routes"]))  # type: ignore[call-overload]
        entry["next_hops"].append(int(row["next_hops"]))  # type: ignore[call-overload]
        entry["updates"].append(int(row["updates"]) - before[str(row["vantage"])])  # type: ignore[call-overload]
    started = time.perf_counter()
    for vantage in list(tracker.all_sets()):
        tracker._memo.pop(vantage, None)  # cold: time the assembly itself
        tracker.get(vantage)
    assemble_ms = (time.perf_counter() - started) * 1000 / len(tracker.all_sets())
    engine_plain, _ = cluster(mode, tracked=False)
    rate_plain = allocate(engine_plain, 0, addresses)
    return {
        "mode": mode,
        "blocks": len(engine.state.blocks),
        "devices": {name: {
            "count": len(v["routes"]),
            "routes_mean": round(statistics.mean(v["routes"]), 1),
            "routes_max": max(v["routes"]),
            "next_hops_mean": round(statistics.mean(v["next_hops"]), 1),
            "next_hops_max": max(v["next_hops"]),
            f"updates_during_{churn}_allocations_max": max(v["updates"]),
        } for name, v in sorted(classes.items())},
        "allocations_per_s_tracked": round(rate_tracked),
        "allocations_per_s_untracked": round(rate_plain),
        "churn_allocations_per_s_tracked": round(churn_rate),
        "route_set_assembly_ms_mean": round(assemble_ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addresses", type=int, default=100_000)
    parser.add_argument("--churn", type=int, default=10_000)
    args = parser.parse_args()
    results = [report(mode, args.addresses, args.churn)
               for mode in ("block-host-routes", "prefix-announce-bgp")]
    spine_updates = [r["devices"]["spine"][f"updates_during_{args.churn}_allocations_max"]
                     for r in results]
    print(json.dumps({"benchmark": "romana_routes", "racks": RACKS,
                      "hosts_per_rack": HOSTS_PER_RACK, "addresses": args.addresses,
                      "results": results,
                      "targets_met": {
                          "spine: one route per rack": all(
                              r["devices"]["spine"]["routes_max"] == RACKS for r in results),
                          "spine never changes during churn": not any(spine_updates)}},
                     indent=2))


if __name__ == "__main__":
    main()
