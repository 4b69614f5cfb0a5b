"""romanad REST API benchmark (issue: romanad). Prints JSON.

A real romanad on loopback, durable store (SQLite, synchronous=FULL). 16 concurrent
clients (keep-alive connections, one asyncio task each) allocate addresses; measured on an
empty store and on one holding 50,000 allocated addresses. Then restart time with 100,000.
Pre-filled stores are written offline through the engine and the store, exactly as the
daemon would have written them, so the benchmark does not spend minutes filling them.
Targets on this 2-core machine: >= 2,000 allocations/s and p99 <= 20 ms in both cases;
restart with 100,000 addresses <= 2 s.

``--compare-stores``: the same load, in one run, on SQLite, on one romanad replica over a
3-member etcd cluster, and on three replicas over it (the clients spread over them); then
restart time with 100,000 addresses on each store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvloop

from ports import free_port
from romana.ipam import Engine, fact_to_json
from romana.store.etcd import EtcdStore
from romana.store.etcd_client import EtcdClient
from romana.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.etcd import etcd_cluster  # noqa: E402  (real etcd processes, stopped by PID)

ROMANAD = Path(sys.executable).parent / "romanad"
HOSTS = 64
CLIENTS = 16


def topology() -> dict[str, Any]:
    racks = [
        {"name": f"rack-{r}", "assignment": {"rack": f"rack-{r}"}, "groups": []} for r in range(4)
    ]
    return {
        "networks": [{"name": "pods", "cidr": "10.0.0.0/8", "block_mask": 29}],
        "topologies": [{"networks": ["pods"], "map": racks}],
    }


def prefill(data_dir: Path, addresses: int, store: Any = None) -> None:
    """Write a store holding ``addresses`` allocations, in batches as group commit would."""
    store = store or SqliteStore(data_dir)
    pending: list[dict[str, Any]] = []
    engine = Engine(sink=lambda facts: pending.extend(fact_to_json(f) for f in facts))
    engine.apply_topology(topology())
    for h in range(HOSTS):
        engine.add_host(f"host-{h}", f"192.168.0.{h + 1}", {"rack": f"rack-{h % 4}"})
    revision = 0
    for i in range(addresses):
        engine.allocate(f"pre-{i}", f"host-{i % HOSTS}", f"tenant-{i % 20}")
        if len(pending) >= 4000:
            revision = store.append(pending, revision)
            pending.clear()
    revision = store.append(pending, revision)
    store.close()


def start(
    data_dir: Path, port: int, event_loop: str = "auto", store: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], float]:
    started = time.perf_counter()
    # --event-loop only when asked: benchmarks/ab.py runs this against older romanads.
    loop = [] if event_loop == "auto" else ["--event-loop", event_loop]
    loop += store
    proc = subprocess.Popen(
        [
            str(ROMANAD),
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data_dir),
            "--log-level",
            "warning",
            *loop,
        ]
    )
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"romanad exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc, time.perf_counter() - started
        except httpx.TransportError:
            time.sleep(0.02)


async def post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: bytes
) -> tuple[int, bytes]:
    """One HTTP/1.1 keep-alive request: a load generator as lean as wrk, so the client's
    own CPU (this machine has two cores) does not hide the server's speed."""
    writer.write(
        b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def load(url: str | list[str], count: int, tag: str) -> dict[str, Any]:
    latencies: list[float] = []
    counter = iter(range(count))
    urls = [url] if isinstance(url, str) else url

    async def client(n: int) -> None:
        host, port = urls[n % len(urls)].rsplit("/", 1)[1].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for i in counter:
                body = json.dumps(
                    {
                        "name": f"{tag}-{i}",
                        "host": f"host-{i % HOSTS}",
                        "tenant": f"tenant-{i % 20}",
                    }
                ).encode()
                t0 = time.perf_counter()
                status, answer = await post(reader, writer, "/address", body)
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    raise RuntimeError(answer.decode())
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "allocations": count,
        "allocations_per_s": round(count / elapsed),
        "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1e3, 2),
    }


def phase(prefilled: int, count: int, event_loop: str = "auto") -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prefill(data, prefilled)
        port = free_port()
        proc, startup = start(data, port, event_loop)
        try:
            uvloop.run(load(f"http://127.0.0.1:{port}", 500, "warmup"))
            result = uvloop.run(load(f"http://127.0.0.1:{port}", count, "bench"))
        finally:
            proc.terminate()
            proc.wait(10)
        return {"prefilled_addresses": prefilled, "startup_s": round(startup, 3), **result}


def restart(addresses: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prefill(data, addresses)
        proc, seconds = start(data, free_port())
        proc.terminate()
        proc.wait(10)
        return {"addresses": addresses, "restart_s": round(seconds, 3)}


def etcd_phase(endpoints: str, replicas: int, count: int) -> dict[str, Any]:
    """``replicas`` romanads on a fresh prefix of the etcd cluster at ``endpoints``."""
    prefix = f"/bench-{time.monotonic_ns()}"
    with tempfile.TemporaryDirectory() as tmp:
        store = EtcdStore(EtcdClient(endpoints.split(",")), prefix)
        prefill(Path(tmp), 0, store)  # the map and the hosts
        store.close()
        procs, urls = [], []
        try:
            for i in range(replicas):
                port = free_port()
                flags = ("--store", f"etcd://{endpoints}", "--etcd-prefix", prefix)
                proc, _ = start(Path(tmp) / f"r{i}", port, store=flags)
                procs.append(proc)
                urls.append(f"http://127.0.0.1:{port}")
            uvloop.run(load(urls, 500, "warmup"))
            result = uvloop.run(load(urls, count, "bench"))
            conflicts = sum(httpx.get(f"{u}/healthz").json()["store"]["conflicts"] for u in urls)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
    return {"replicas": replicas, **result, "append_conflicts": conflicts}


def etcd_restart(endpoints: str, addresses: int) -> dict[str, Any]:
    prefix = f"/bench-{time.monotonic_ns()}"
    with tempfile.TemporaryDirectory() as tmp:
        store = EtcdStore(EtcdClient(endpoints.split(",")), prefix)
        prefill(Path(tmp), addresses, store)
        store.close()
        flags = ("--store", f"etcd://{endpoints}", "--etcd-prefix", prefix)
        proc, seconds = start(Path(tmp) / "r", free_port(), store=flags)
        proc.terminate()
        proc.wait(10)
    return {"addresses": addresses, "restart_s": round(seconds, 3)}


def compare_stores(count: int) -> dict[str, Any]:
    """SQLite, one etcd replica and three, side by side in one run."""
    out: dict[str, Any] = {"benchmark": "romanad_stores", "clients": CLIENTS}
    out["sqlite"] = phase(0, count)
    with etcd_cluster(3) as members:
        endpoints = ",".join(m.url.removeprefix("http://") for m in members)
        out["etcd_1_replica"] = etcd_phase(endpoints, 1, count)
        out["etcd_3_replicas"] = etcd_phase(endpoints, 3, count)
        out["restart_etcd"] = etcd_restart(endpoints, 100_000)
    out["restart_sqlite"] = restart(100_000)
    base = out["sqlite"]["allocations_per_s"]
    for key in ("etcd_1_replica", "etcd_3_replicas"):
        out[key]["vs_sqlite"] = round(out[key]["allocations_per_s"] / base, 3)
    return out


def compare_loops(count: int, rounds: int = 2) -> dict[str, Any]:
    """asyncio's loop against uvloop, alternating so machine noise hits both alike."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for _ in range(rounds):
        for prefilled in (0, 50_000):
            for loop in ("asyncio", "auto"):
                key = f"with_{prefilled}" if prefilled else "empty_store"
                runs.setdefault(key, {}).setdefault(loop, []).append(phase(prefilled, count, loop))
    out: dict[str, Any] = {"benchmark": "romanad_event_loop", "clients": CLIENTS, "rounds": rounds}
    for key, by_loop in runs.items():
        best = {
            loop: max(r["allocations_per_s"] for r in results) for loop, results in by_loop.items()
        }
        p99 = {loop: min(r["p99_ms"] for r in results) for loop, results in by_loop.items()}
        out[key] = {
            "asyncio": {"allocations_per_s": best["asyncio"], "p99_ms": p99["asyncio"]},
            "uvloop": {"allocations_per_s": best["auto"], "p99_ms": p99["auto"]},
            "uvloop_speedup": round(best["auto"] / best["asyncio"], 3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument(
        "--prefilled", type=int, default=50_000, help="addresses held in the second phase"
    )
    parser.add_argument(
        "--restart-addresses", type=int, default=100_000, help="addresses held at the restart"
    )
    parser.add_argument(
        "--compare-loops",
        action="store_true",
        help="only: the same load on romanad with --event-loop asyncio and "
        "auto (uvloop), alternating, in one run",
    )
    parser.add_argument(
        "--compare-stores",
        action="store_true",
        help="only: SQLite, one etcd replica and three etcd replicas, in one run",
    )
    args = parser.parse_args()
    if args.compare_stores:
        print(json.dumps(compare_stores(args.count), indent=2))
        return
    if args.compare_loops:
        print(json.dumps(compare_loops(args.count), indent=2))
        return
    empty = phase(0, args.count)
    full = phase(args.prefilled, args.count)
    again = restart(args.restart_addresses)
    result = {
        "benchmark": "romanad_api",
        "clients": CLIENTS,
        "durable": "sqlite WAL, synchronous=FULL, group commit",
        "empty_store": empty,
        f"with_{args.prefilled}": full,
        "restart": again,
    }
    result["targets_met"] = {
        "empty: allocations_per_s>=2000": empty["allocations_per_s"] >= 2000,
        "empty: p99_ms<=20": empty["p99_ms"] <= 20,
        f"{args.prefilled}: allocations_per_s>=2000": full["allocations_per_s"] >= 2000,
        f"{args.prefilled}: p99_ms<=20": full["p99_ms"] <= 20,
        f"restart_{args.restart_addresses}_s<=2": again["restart_s"] <= 2,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
