"""A large topology map does not stall allocations. Prints JSON.

romanad with 64 hosts; 8 clients allocate continuously while another client posts a map of
about 1 MiB (the body limit) again and again: 4 racks plus thousands of pinned hosts in a
fifth. Reported: the map's size and apply time, and allocation latency (p50, p99, max)
while maps are applied against without. Before, validation ran on the event loop and one
such map held every request for ~5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_bench import HOSTS, load, prefill, start, topology
from ports import free_port


def big_map(pinned: int) -> dict[str, Any]:
    doc = topology()
    hosts = [
        {"name": f"pinned-{i}", "ip": f"172.{16 + i // 65536}.{i // 256 % 256}.{i % 256}"}
        for i in range(pinned)
    ]
    doc["topologies"][0]["map"].append({"name": "pinned", "hosts": hosts})
    return doc


async def post_maps(port: int, body: bytes, stop: asyncio.Event, times: list[float]) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            answer = await client.post(
                "/topology", content=body, headers={"content-type": "application/json"}
            )
            if answer.status_code != 200:
                raise RuntimeError(answer.text[:500])
            times.append(time.perf_counter() - t0)


async def with_maps(port: int, count: int, body: bytes) -> dict[str, Any]:
    stop = asyncio.Event()
    times: list[float] = []
    poster = asyncio.create_task(post_maps(port, body, stop, times))
    await asyncio.sleep(0.2)
    try:
        result = await load(f"http://127.0.0.1:{port}", count, "maps")
    finally:
        stop.set()
        await poster
    result["maps_applied"] = len(times)
    result["map_apply_s_median"] = round(sorted(times)[len(times) // 2], 3) if times else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--pinned", type=int, default=9000)
    args = parser.parse_args()
    body = json.dumps(big_map(args.pinned)).encode()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prefill(data, 0)
        port = free_port()
        proc, _ = start(data, port)
        try:
            # The big map first, while nothing is allocated (a fifth group changes the
            # carving); re-applying it later keeps every allocation.
            httpx.post(
                f"http://127.0.0.1:{port}/topology",
                content=body,
                timeout=60,
                headers={"content-type": "application/json"},
            ).raise_for_status()
            uvloop.run(load(f"http://127.0.0.1:{port}", 300, "warmup"))
            alone = uvloop.run(load(f"http://127.0.0.1:{port}", args.count, "alone"))
            maps = uvloop.run(with_maps(port, args.count, body))
        finally:
            proc.terminate()
            proc.wait(10)
    print(
        json.dumps(
            {
                "benchmark": "large_topology_vs_allocations",
                "hosts": HOSTS,
                "map_bytes": len(body),
                "allocations_alone": alone,
                "allocations_while_maps_apply": maps,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
