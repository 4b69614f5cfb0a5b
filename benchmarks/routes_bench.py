"""Route economy at scale, and against four other placements. Prints JSON (and a plot).

Part 1, the cluster: 4 racks x 16 hosts, ``10.0.0.0/8`` with ``/29`` blocks; 100,000
addresses over 20 tenants (round-robin over hosts), then 10,000 more while counting which
devices' routes change, with racks as L2 segments and as L3-to-host. Per device class
(host, rack router, spine): routes and distinct next hops (mean, max), route-set updates
during the extra allocations; the engine's allocation rate with route tracking on and off;
and the time ``romana routes verify`` takes to forward every address from every host.

Part 2, one rack compared side by side: 16 hosts, a ``/18`` (2,048 blocks of 8 addresses),
20 tenants, the same pod arrival sequence fed to five placements:

1. ``romana``: this project (host areas, one route per area, strays more specific);
2. ``lowest-free``: the previous rule (lowest free block of the group, routes collapsed);
3. ``podcidr``: a fixed /24 per node, one route per node (Kubernetes' node IPAM);
4. ``calico``: per-node /26 blocks for any namespace, one route per block, and once no
   block is free, single addresses borrowed from other nodes' blocks (one /32 each);
5. ``romana-v1``: the original Romana (lowest free /29 per host and tenant, a route per
   block).

Sequences: ``round-robin`` and ``random`` hosts; ``late`` (8 hosts, 8 more joining at 30%
of the addresses). Each grows until the first allocation fails; a second run of the same
sequence stops at 80% of the addresses and churns: it releases 10% of the pods anywhere and
allocates as many new ones (random hosts, tenants round-robin), ten times. For each
placement: routes on the ToR against next hops (mean per host holding blocks, max for one
host; an L2 host holds the same minus its own) as pods grow, the worst up to 90% of the
rack's blocks, route-set updates of the ToR during churn, and the share of the rack's
addresses allocated when the first allocation failed. With
``--plot FILE`` it draws the ToR's routes as pods grow, one line per placement.

Placements 2-5 are models written here (block-level, addresses per block as the engine
does); placement 1 is the real engine and route tracker.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from romana.errors import Exhausted
from romana.ipam import Engine
from romana.routes import RouteTracker, blocks_of, verify
from romana.routes.aggregate import collapse

RACKS, HOSTS_PER_RACK, TENANTS = 4, 16, 20


# -- part 1: the cluster ----------------------------------------------------------------
def topology(mode: str) -> dict[str, Any]:
    racks = [
        {"name": f"rack-{r}", "routing": mode, "assignment": {"rack": f"rack-{r}"}, "groups": []}
        for r in range(RACKS)
    ]
    return {
        "networks": [{"name": "pods", "cidr": "10.0.0.0/8", "block_mask": 29}],
        "topologies": [{"networks": ["pods"], "map": racks}],
    }


def cluster(mode: str, tracked: bool) -> tuple[Engine, RouteTracker | None]:
    engine = Engine()
    engine.apply_topology(topology(mode))
    tracker = None
    if tracked:
        tracker = RouteTracker(lambda: engine.state)
        engine.observers.append(tracker.observe)
    for h in range(RACKS * HOSTS_PER_RACK):
        engine.add_host(
            f"host-{h}", f"192.168.{h % RACKS}.{h // RACKS + 1}", {"rack": f"rack-{h % RACKS}"}
        )
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


def cluster_report(mode: str, addresses: int, churn: int) -> dict[str, Any]:
    engine, tracker = cluster(mode, tracked=True)
    assert tracker is not None
    rate_tracked = allocate(engine, 0, addresses)
    before = {row["vantage"]: row["updates"] for row in tracker.summary()}
    churn_rate = allocate(engine, addresses, churn)
    classes: dict[str, dict[str, list[int]]] = {}
    for row in tracker.summary():
        entry = classes.setdefault(
            device_class(str(row["vantage"])), {"routes": [], "next_hops": [], "updates": []}
        )
        entry["routes"].append(int(str(row["routes"])))
        entry["next_hops"].append(int(str(row["next_hops"])))
        entry["updates"].append(int(str(row["updates"])) - before[str(row["vantage"])])
    started = time.perf_counter()
    sets = tracker.all_sets()
    blocks = blocks_of(engine.state)
    report = verify(sets, blocks, engine.revision)
    verify_s = time.perf_counter() - started
    assert report.ok, report.failures[:3]
    engine_plain, _ = cluster(mode, tracked=False)
    rate_plain = allocate(engine_plain, 0, addresses)
    return {
        "mode": mode,
        "blocks": len(engine.state.blocks),
        "devices": {
            name: {
                "count": len(v["routes"]),
                "routes_mean": round(statistics.mean(v["routes"]), 1),
                "routes_max": max(v["routes"]),
                "next_hops_mean": round(statistics.mean(v["next_hops"]), 1),
                "next_hops_max": max(v["next_hops"]),
                f"updates_during_{churn}_allocations_max": max(v["updates"]),
            }
            for name, v in sorted(classes.items())
        },
        "allocations_per_s_tracked": round(rate_tracked),
        "allocations_per_s_untracked": round(rate_plain),
        "churn_allocations_per_s_tracked": round(churn_rate),
        "verify": {
            "addresses": report.addresses,
            "blocks": report.blocks,
            "walks": report.walks,
            "seconds": round(verify_s, 2),
        },
    }


# -- part 2: one rack, five placements --------------------------------------------------
RACK_ADDRESSES = 1 << 14  # a /18
BLOCK = 8


class Placement(Protocol):
    name: str

    def add_host(self, host: str) -> None: ...
    def allocate(self, pod: str, host: str, tenant: str) -> bool: ...
    def release(self, pod: str) -> None: ...
    def routes(self) -> Counter[str]: ...  # the ToR's routes, per host
    def updates(self) -> int: ...  # times the ToR's route set changed so far
    def reserved(self) -> float: ...  # share of the rack's addresses in assigned blocks


class Romana:
    """The real engine and route tracker, on one leaf group."""

    name = "romana"

    def __init__(self) -> None:
        self.engine = Engine()
        self.engine.apply_topology(
            {
                "networks": [{"name": "pods", "cidr": "10.0.0.0/18", "block_mask": 29}],
                "topologies": [{"networks": ["pods"], "map": [{"name": "rack", "groups": []}]}],
            }
        )
        self.tracker = RouteTracker(lambda: self.engine.state)
        self.engine.observers.append(self.tracker.observe)
        self.count = 0

    def add_host(self, host: str) -> None:
        self.count += 1
        self.engine.add_host(host, f"192.168.0.{self.count}")

    def allocate(self, pod: str, host: str, tenant: str) -> bool:
        try:
            self.engine.allocate(pod, host, tenant)
        except Exhausted:
            return False
        return True

    def release(self, pod: str) -> None:
        self.engine.release(pod)

    def routes(self) -> Counter[str]:
        return Counter(r.via.removeprefix("host:") for r in self.tracker.get("group:rack").routes)

    def updates(self) -> int:
        stats = self.tracker.stats.get("group:rack")
        return stats.updates if stats else 0

    def reserved(self) -> float:
        return len(self.engine.state.blocks) * BLOCK / RACK_ADDRESSES


class BlockModel:
    """Blocks of ``size`` addresses owned per ``key(host, tenant)``, lowest free first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = list(range(RACK_ADDRESSES // size))  # block indices, a min-heap
        self.owner: dict[int, str] = {}  # block -> host
        self.used: dict[int, int] = {}  # block -> addresses used
        self.nonfull: dict[tuple[str, str], list[int]] = {}
        self.pods: dict[str, int] = {}  # pod -> block
        self.keys: dict[int, tuple[str, str]] = {}
        self.changes = 0

    def key(self, host: str, tenant: str) -> tuple[str, str]:
        return host, tenant

    def take(self, host: str, key: tuple[str, str]) -> int | None:
        import heapq

        if not self.free:
            return None
        block = heapq.heappop(self.free)
        self.owner[block], self.used[block], self.keys[block] = host, 0, key
        self.changes += 1
        return block

    def allocate(self, pod: str, host: str, tenant: str) -> bool:
        key = self.key(host, tenant)
        owned = self.nonfull.setdefault(key, [])
        if owned:
            block = min(owned)
        else:
            taken = self.take(host, key)
            if taken is None:
                return False
            block = taken
            owned.append(block)
        self.used[block] += 1
        if self.used[block] == self.size:
            owned.remove(block)
        self.pods[pod] = block
        return True

    def release(self, pod: str) -> None:
        import heapq

        block = self.pods.pop(pod)
        key = self.keys[block]
        if self.used[block] == self.size:
            self.nonfull[key].append(block)
        self.used[block] -= 1
        if self.used[block] == 0:
            self.nonfull[key].remove(block)
            del self.owner[block], self.used[block], self.keys[block]
            heapq.heappush(self.free, block)
            self.changes += 1

    def add_host(self, host: str) -> None:
        pass

    def updates(self) -> int:
        return self.changes

    def reserved(self) -> float:
        return len(self.owner) * self.size / RACK_ADDRESSES

    def blocks_by_host(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for block, host in self.owner.items():
            out.setdefault(host, []).append(block)
        return out


class LowestFree(BlockModel):
    name = "lowest-free"

    def __init__(self) -> None:
        super().__init__(BLOCK)

    def routes(self) -> Counter[str]:
        return Counter(
            {
                host: len(collapse((b * BLOCK, 29) for b in blocks))
                for host, blocks in self.blocks_by_host().items()
            }
        )


class RomanaV1(BlockModel):
    name = "romana-v1"

    def __init__(self) -> None:
        super().__init__(BLOCK)

    def routes(self) -> Counter[str]:
        return Counter({host: len(blocks) for host, blocks in self.blocks_by_host().items()})


class Calico(BlockModel):
    """/26 blocks affine to a node, for any namespace; then borrowed single addresses."""

    name = "calico"

    def __init__(self) -> None:
        super().__init__(64)
        self.borrowed: dict[str, str] = {}  # pod -> host holding a borrowed /32

    def key(self, host: str, tenant: str) -> tuple[str, str]:
        return host, ""

    def allocate(self, pod: str, host: str, tenant: str) -> bool:
        if super().allocate(pod, host, tenant):
            return True
        # No free block: borrow one address in another node's block (a /32 route).
        for block, used in self.used.items():
            if used < self.size:
                self.used[block] += 1
                if self.used[block] == self.size:
                    self.nonfull[self.keys[block]].remove(block)
                self.pods[pod] = block
                self.borrowed[pod] = host
                self.changes += 1
                return True
        return False

    def release(self, pod: str) -> None:
        if pod in self.borrowed:
            del self.borrowed[pod]
            block = self.pods.pop(pod)
            if self.used[block] == self.size:
                self.nonfull[self.keys[block]].append(block)
            self.used[block] -= 1
            self.changes += 1
            return
        super().release(pod)

    def routes(self) -> Counter[str]:
        routes = Counter({host: len(blocks) for host, blocks in self.blocks_by_host().items()})
        routes.update(self.borrowed.values())
        return routes


class PodCidr:
    """A fixed /24 per node, handed out as nodes join; a full /24 fails the allocation."""

    name = "podcidr"

    def __init__(self) -> None:
        self.cidrs: dict[str, int] = {}  # host -> addresses used
        self.pods: dict[str, str] = {}
        self.next = 0

    def add_host(self, host: str) -> None:
        if self.next < RACK_ADDRESSES // 256:
            self.cidrs[host] = 0
            self.next += 1

    def allocate(self, pod: str, host: str, tenant: str) -> bool:
        if host not in self.cidrs or self.cidrs[host] == 256:
            return False
        self.cidrs[host] += 1
        self.pods[pod] = host
        return True

    def release(self, pod: str) -> None:
        self.cidrs[self.pods.pop(pod)] -= 1

    def routes(self) -> Counter[str]:
        return Counter({host: 1 for host in self.cidrs})

    def updates(self) -> int:
        return 0  # node CIDRs change only when nodes join or leave

    def reserved(self) -> float:
        return len(self.cidrs) * 256 / RACK_ADDRESSES


PLACEMENTS = (Romana, LowestFree, PodCidr, Calico, RomanaV1)


def arrivals(sequence: str, seed: int) -> Iterator[tuple[str, str, list[str]]]:
    """(host, tenant, hosts to add first) for each pod of ``sequence``, forever."""
    rng = random.Random(seed)
    hosts = [f"n{i:02d}" for i in range(HOSTS_PER_RACK)]
    present = hosts[: HOSTS_PER_RACK // 2] if sequence == "late" else hosts
    joined = list(present)
    i = 0
    while True:
        new: list[str] = []
        if i == 0:
            new = list(joined)
        if sequence == "late" and i == int(0.3 * RACK_ADDRESSES):
            new = hosts[HOSTS_PER_RACK // 2 :]
            joined = hosts
        host = joined[i % len(joined)] if sequence == "round-robin" else rng.choice(joined)
        yield host, f"t{i % TENANTS}", new
        i += 1


def per_host(routes: Counter[str]) -> tuple[float, int]:
    holders = [h for h, n in routes.items() if n]
    if not holders:
        return 0.0, 0
    return round(sum(routes.values()) / len(holders), 3), max(routes.values())


def grow(
    placement: Placement, sequence: str, seed: int, until: float | None = None
) -> tuple[list[str], list[str], list[dict[str, Any]], float | None]:
    """Feed the arrival sequence until the first failure (or ``until`` of the addresses):
    (pods, hosts joined, samples every 128 pods, share allocated when allocation failed)."""
    samples: list[dict[str, Any]] = []
    pods: list[str] = []
    joined: list[str] = []
    for n, (host, tenant, new) in enumerate(arrivals(sequence, seed)):
        for h in new:
            placement.add_host(h)
            joined.append(h)
        if until is not None and len(pods) >= until * RACK_ADDRESSES:
            return pods, joined, samples, None
        pod = f"p{n}"
        if not placement.allocate(pod, host, tenant):
            return pods, joined, samples, len(pods) / RACK_ADDRESSES
        pods.append(pod)
        if len(pods) % 128 == 0:
            samples.append(sample(placement, len(pods)))
    raise AssertionError("unreachable: arrivals never end")


def sample(placement: Placement, pods: int) -> dict[str, Any]:
    routes = placement.routes()
    mean, most = per_host(routes)
    return {
        "addresses": pods / RACK_ADDRESSES,
        "blocks": placement.reserved(),
        "tor_routes": sum(routes.values()),
        "next_hops": sum(1 for v in routes.values() if v),
        "per_host_mean": mean,
        "per_host_max": most,
    }


def rack_run(make: type, sequence: str, seed: int) -> dict[str, Any]:
    placement = make()
    _, _, samples, exhausted_at = grow(placement, sequence, seed)
    upto = [x for x in samples if x["blocks"] <= 0.9]
    churned = make()
    pods, joined, _, _ = grow(churned, sequence, seed, until=0.8)
    return {
        "curve": [(round(x["addresses"] * RACK_ADDRESSES), x["tor_routes"]) for x in samples],
        "worst_up_to_90pct_of_blocks": {
            "per_host_mean": max((x["per_host_mean"] for x in upto), default=0),
            "per_host_max": max((x["per_host_max"] for x in upto), default=0),
            "addresses_then": round(max((x["addresses"] for x in upto), default=0), 3),
        },
        "at_addresses": {f"{mark:.0%}": _sample_at(samples, mark) for mark in (0.5, 0.8, 0.9)},
        "exhausted_at": round(exhausted_at or 1.0, 3),
        "churn_at_80pct": churn(churned, pods, joined, seed),
    }


def _sample_at(samples: list[dict[str, Any]], share: float) -> dict[str, Any] | None:
    """The first sample at or past ``share`` of the addresses (None if never reached)."""
    for sample in samples:
        if sample["addresses"] >= share:
            out = {k: round(v, 3) if isinstance(v, float) else v for k, v in sample.items()}
            # An L2 host carries the ToR's routes except its own.
            out["l2_host_routes_max"] = sample["tor_routes"] - 1
            return out
    return None


def churn(placement: Placement, pods: list[str], hosts: list[str], seed: int) -> dict[str, Any]:
    """Release and re-allocate 10% of the pods ten times (anywhere, tenants round-robin)."""
    rng = random.Random(seed + 1)
    before = placement.updates()
    moved = 0
    for round_ in range(10):
        gone = rng.sample(range(len(pods)), len(pods) // 10)
        for k in sorted(gone, reverse=True):
            placement.release(pods[k])
            pods[k] = pods[-1]
            pods.pop()
        for j in range(len(gone)):
            pod = f"c{round_}-{j}"
            if placement.allocate(pod, rng.choice(hosts), f"t{j % TENANTS}"):
                pods.append(pod)
                moved += 1
    updates = placement.updates() - before
    after = sample(placement, len(pods))
    return {
        "pods_churned": moved,
        "tor_route_set_updates": updates,
        "updates_per_1000_pods": round(1000 * updates / max(moved, 1), 1),
        "after": {
            k: after[k]
            for k in ("blocks", "tor_routes", "next_hops", "per_host_mean", "per_host_max")
        },
    }


def rack_report(seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sequence in ("round-robin", "random", "late"):
        out[sequence] = {make.name: rack_run(make, sequence, seed) for make in PLACEMENTS}
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, (sequence, runs) in zip(axes, results.items(), strict=True):
        for name, run in runs.items():
            xs = [p / RACK_ADDRESSES * 100 for p, _ in run["curve"]]
            ys = [r for _, r in run["curve"]]
            ax.plot(xs, ys, label=name)
        ax.set_title(f"{sequence}: 16 hosts, a /18, 20 tenants")
        ax.set_xlabel("addresses allocated (% of the rack)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("routes on the ToR")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--addresses", type=int, default=100_000)
    parser.add_argument("--churn", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plot", type=Path, help="write the ToR routes plot (PNG) here")
    parser.add_argument("--skip-cluster", action="store_true", help="part 2 only")
    args = parser.parse_args()
    results = (
        []
        if args.skip_cluster
        else [
            cluster_report(mode, args.addresses, args.churn)
            for mode in ("block-host-routes", "prefix-announce-bgp")
        ]
    )
    rack = rack_report(args.seed)
    if args.plot:
        plot(rack, args.plot)
    for runs in rack.values():
        for run in runs.values():
            run["curve"] = run["curve"][::4]  # keep the JSON readable
    targets: dict[str, bool] = {}
    if results:
        spine_updates = [
            r["devices"]["spine"][f"updates_during_{args.churn}_allocations_max"] for r in results
        ]
        targets["spine: one route per rack"] = all(
            r["devices"]["spine"]["routes_max"] == RACKS for r in results
        )
        targets["spine never changes during churn"] = not any(spine_updates)
    for sequence, runs in rack.items():
        worst = runs["romana"]["worst_up_to_90pct_of_blocks"]
        targets[
            f"{sequence}: <= 1.25 routes per host and <= 2 for any, up to 90% of the blocks"
        ] = worst["per_host_mean"] <= 1.25 and worst["per_host_max"] <= 2
    print(
        json.dumps(
            {
                "benchmark": "romana_routes",
                "racks": RACKS,
                "hosts_per_rack": HOSTS_PER_RACK,
                "addresses": args.addresses,
                "results": results,
                "rack_comparison": rack,
                "targets_met": targets,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
