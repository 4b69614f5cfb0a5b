"""Every script in benchmarks/ runs at a tiny size and prints its JSON, so none can rot
between the runs that measure (``make bench``). ``make bench-smoke`` runs exactly these
(``pytest -m bench``); each is also marked with what its benchmark needs.

Only what a run must produce whatever the machine is asserted: the amounts asked for, every
answer checked, nothing left behind. Speeds and their targets are the benchmarks' own
business, never a test's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .bench_runs import run_benchmark
from .test_cni_plugin import build_plugin

pytestmark = pytest.mark.bench
ROOT = Path(__file__).resolve().parent.parent
REFERENCE_PTP = Path("/usr/lib/cni/ptp")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
CONTAINER_TOOLS = ("containerd", "ctr", "runc", "umoci", "nft")
needs_containerd = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in CONTAINER_TOOLS)
    or not Path("/bin/busybox").exists()
    or os.geteuid() != 0,
    reason="needs root, containerd, runc, umoci, busybox-static and nftables",
)


# -- in-process: the engine, the route sets, the store ---------------------------------------
def test_ipam_bench() -> None:
    figures = run_benchmark("ipam_bench.py", "--count", "2000", "--repeat", "1")
    assert figures["allocations"] == 2000
    # Every allocation on its own block: 1,024 hosts, 2,000 pods round-robin, /29s.
    assert figures["blocks_in_use_at_peak"] == 2000
    assert figures["bytes_per_address"] > 0
    assert set(figures["targets_met"]) == {
        "allocations_per_s>=100000",
        "releases_per_s>=100000",
        "last_over_first<=1.5",
        "bytes_per_address<=600",
    }


def test_routes_bench() -> None:
    figures = run_benchmark("routes_bench.py", "--addresses", "300", "--churn", "30")
    assert [r["mode"] for r in figures["results"]] == ["block-host-routes", "prefix-announce-bgp"]
    assert figures["addresses"] == 300
    assert figures["targets_met"]["spine: one route per rack"] is True  # a property, not a speed


def test_store_bench() -> None:
    figures = run_benchmark("store_bench.py", "--appends", "20")
    assert figures["single_fact_appends"] == 20
    assert figures["single_fact_appends_per_s"] > 0 and figures["batch_1000_facts_s"] > 0


def test_ab_compares_a_benchmark_with_a_git_revision() -> None:
    """The base tree is exported from git (HEAD here): both sides run the same script."""
    figures = run_benchmark(
        "ab.py", "--base", "HEAD", "--runs", "1", "benchmarks/ipam_bench.py",
        "--count", "2000", "--repeat", "1",
    )  # fmt: skip
    assert len(figures["runs"]["base"]) == len(figures["runs"]["current"]) == 1
    assert figures["median"]["base"]["allocations"] == 2000
    assert figures["current_over_base"]["allocations"] == 1.0


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_ipam_instructions() -> None:
    figures = run_benchmark(
        "ipam_instructions.py", "--base", "HEAD", "--count", "24", "--hosts", "8", "--leaves", "2"
    )
    assert (figures["count"], figures["hosts"], figures["leaf_groups_per_rack"]) == (24, 8, 2)
    counts = figures["instructions_per_operation"]
    for side in ("base", "current"):
        assert set(counts[side]) == {"first_allocation", "allocation", "release"}
        assert all(n > 0 for n in counts[side].values())


def test_cni_startup_bench() -> None:
    build_plugin()
    figures = run_benchmark("cni_startup_bench.py", "--iterations", "3", timeout=300)
    assert figures["iterations"] == 3
    for name in ("static", "shim"):
        assert figures[name]["answers_ok"] == {"VERSION": 3, "ADD": 3}
        assert set(figures[name]["version_ms"]) == {"p50", "p95", "min", "max"}
    assert figures["static"]["static_executable"] is True
    assert figures["agent_requests"] == 6  # one ADD per run of each


# -- romanad on loopback ---------------------------------------------------------------------
@pytest.mark.daemons
def test_api_bench() -> None:
    figures = run_benchmark(
        "api_bench.py", "--count", "50", "--prefilled", "200", "--restart-addresses", "200"
    )
    assert figures["empty_store"]["allocations"] == figures["with_200"]["allocations"] == 50
    assert figures["with_200"]["prefilled_addresses"] == 200
    assert figures["restart"]["addresses"] == 200 and figures["restart"]["restart_s"] > 0


@pytest.mark.daemons
def test_readers_bench() -> None:
    figures = run_benchmark("readers_bench.py", "--count", "50", "--prefilled", "200")
    assert figures["prefilled_addresses"] == 200
    assert figures["writers_alone"]["allocations"] == 50
    assert figures["with_4_readers_of_every_page"]["allocations"] == 50


@pytest.mark.daemons
def test_topology_bench() -> None:
    figures = run_benchmark("topology_bench.py", "--count", "50", "--pinned", "100")
    assert figures["allocations_alone"]["allocations"] == 50
    maps = figures["allocations_while_maps_apply"]
    assert maps["allocations"] == 50 and maps["maps_applied"] >= 1


# -- the kernel, in namespaces made by the benchmark -----------------------------------------
@pytest.mark.root
@pytest.mark.daemons
@needs_root
def test_agent_bench() -> None:
    figures = run_benchmark("agent_bench.py", "--routes", "100", "--repeat", "1", "--blocks", "3")
    assert figures["program_routes"]["routes"] == 100
    assert figures["program_routes"]["reconcile_change"] == {"replaced": 10, "deleted": 10}
    assert figures["neighbour_latency"]["blocks"] == 3


@pytest.mark.root
@pytest.mark.daemons
@needs_root
@pytest.mark.skipif(
    not Path("/usr/lib/cni/ptp").exists(), reason="needs containernetworking-plugins"
)
def test_cni_bench() -> None:
    figures = run_benchmark("cni_bench.py", "--pods", "2", "--gap-ms", "0")
    for plugin in ("reference", "romana"):
        assert set(figures[plugin]["add_ms"]) == {"p50", "p95", "min", "max"}
    assert figures["after_del"] == {"addresses_left_in_romanad": 0, "romana_veths_left": 0}
    assert figures["targets_met"]["nothing_left"] is True


@pytest.mark.root
@needs_root
def test_conntrack_bench() -> None:
    figures = run_benchmark("conntrack_bench.py", "--entries", "300", "--repeat", "1")
    assert figures["flows_deleted_per_run"] == [50]
    assert figures["burst_chooses_one_walk"] is True  # few flows tracked: one walk wins
    swept = figures["sweep_deleted_and_seen_per_run"]
    assert isinstance(swept, list) and [deleted for deleted, _ in swept] == [50]


@pytest.mark.root
@pytest.mark.daemons
@needs_root
def test_policy_bench() -> None:
    figures = run_benchmark(
        "policy_bench.py",
        *("--endpoints", "100", "--namespaces", "5", "--hosts", "2", "--policies", "10"),
        *("--changes", "2", "--repeat", "1", "--wide", "20"),
    )
    wide = figures["end_to_end"]["wide_policy_then_other_namespace_deny_all"]
    assert wide["refused"] == [] and wide["elements"] >= 40  # 20 blocks + 20 ports, 1 rule
    assert figures["end_to_end"]["table_back_after_nft_flush_ruleset"]["n"] == 2


# -- containerd --------------------------------------------------------------------------------
@pytest.mark.root
@pytest.mark.daemons
@needs_containerd
def test_runtime_cni_bench() -> None:
    figures = run_benchmark("runtime_cni_bench.py", "--pods", "2", "--gap-ms", "0")
    for plugin in ("romana", "reference"):
        # One timed ADD and one timed DEL per pod, all through ctr, none failed.
        assert figures[plugin]["add"]["n"] == 2 and figures[plugin]["del"]["n"] == 2
    assert figures["agent_own_ms"]["add"]["n"] == 2
    assert figures["left_in_romanad"] == 0 and figures["left_romana_veths"] == 0
    assert figures["add_p50_ratio"] > 0


@pytest.mark.root
@pytest.mark.daemons
@needs_containerd
def test_agent_memory_bench() -> None:
    figures = run_benchmark("agent_memory_bench.py", "--pods", "4", "--checkpoints", "2")
    assert figures["allocated_in_romanad_at_peak"] == 4
    assert figures["romana_veths_at_peak"] == 4
    assert [s["pods"] for s in figures["agent_kib"]] == [0, 1, 2, 4]
    assert all(s["VmHWM"] >= s["VmRSS"] > 0 for s in figures["agent_kib"])
    assert figures["left_in_romanad"] == 0


def test_every_benchmark_script_has_a_tiny_run_here() -> None:
    """A new benchmark gets its tiny run here too (ports.py is a helper, not a script)."""
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")} - {"ports.py"}
    source = Path(__file__).read_text()
    assert {s for s in scripts if f'"{s}"' not in source} == set()
