"""Readers cannot starve writers: allocation latency with and without list readers. JSON.

A real romanad holding 50,000 addresses (written offline, as in api_bench.py). 16 clients
allocate; in the second phase 4 more clients loop over ``GET /addresses``, reading every
page (1,000 addresses each) as a client listing everything would. Before pagination each
such read built one 50,000-address answer on the event loop, and allocation p50 went from
~5 ms to ~2 s; the target is that readers at most double allocation p50.
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

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_bench import load, prefill, start
from ports import free_port


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    writer.write(b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path.encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return await reader.readexactly(length)


async def read_all_pages(port: int, stop: asyncio.Event, pages: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while not stop.is_set():
            cursor = None
            while not stop.is_set():
                path = "/addresses" + (f"?after={cursor}" if cursor else "")
                answer = json.loads(await get(reader, writer, path))
                pages[0] += 1
                cursor = answer.get("next")
                if not cursor:
                    break
    finally:
        writer.close()


async def with_readers(port: int, count: int, readers: int) -> dict[str, Any]:
    stop = asyncio.Event()
    pages = [0]
    tasks = [asyncio.create_task(read_all_pages(port, stop, pages)) for _ in range(readers)]
    await asyncio.sleep(0.5)  # the readers are going
    started = time.perf_counter()
    try:
        result = await load(f"http://127.0.0.1:{port}", count, f"r{readers}")
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    result["pages_read_per_s"] = round(pages[0] / (time.perf_counter() - started + 0.5))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--prefilled", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prefill(data, args.prefilled)
        port = free_port()
        proc, _ = start(data, port)
        try:
            uvloop.run(load(f"http://127.0.0.1:{port}", 300, "warmup"))
            alone = uvloop.run(load(f"http://127.0.0.1:{port}", args.count, "alone"))
            readers = uvloop.run(with_readers(port, args.count, 4))
        finally:
            proc.terminate()
            proc.wait(10)
    ratio = readers["p50_ms"] / alone["p50_ms"]
    print(
        json.dumps(
            {
                "benchmark": "readers_vs_writers",
                "prefilled_addresses": args.prefilled,
                "writers_alone": alone,
                "with_4_readers_of_every_page": readers,
                "p50_ratio": round(ratio, 2),
                "targets_met": {"p50 with readers <= 2x alone": ratio <= 2.0},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
