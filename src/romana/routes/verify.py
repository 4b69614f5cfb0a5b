"""Proof that the served routes deliver: every allocated address, from every host, hop by hop.

Forwarding is modelled as kernels do it: a device takes the longest matching prefix of its
route set; ``local`` delivers (the packet is at its owner if and only if the device is the
owning host), ``host:N`` and ``group:P`` hand the packet over, no match sends it to the
device's default (its parent group's router); a router with no match and no default drops.

Route sets never hold prefixes longer than a block (pods' /32s live in each host's main
table, not here), so every address of a block is forwarded alike and one walk per
(block, source host) proves them all. Each device's routes are flattened once into
disjoint intervals, and walks share what earlier walks found (a device's verdict for a
block does not depend on where the packet came from), so a check costs about
devices x blocks lookups.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from romana.ipam.addr import cidr_str, ip_to_str
from romana.responses import RouteVerifyReport, VerifiedDevice
from romana.routes.model import RouteSet
from romana.wire import LOCAL_VIA

if TYPE_CHECKING:
    from romana.ipam.state import IpamState

MAX_HOPS = 64
MAX_LISTED = 100


@dataclass(frozen=True, slots=True)
class BlockToCheck:
    base: int
    prefixlen: int
    owner: str  # host name
    addresses: tuple[tuple[int, str], ...]  # (ip, name) allocated in the block


@dataclass(slots=True)
class Report:
    revision: int
    addresses: int = 0
    blocks: int = 0
    sources: int = 0
    walks: int = 0
    failed_addresses: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed_addresses == 0

    def to_json(self, devices: list[VerifiedDevice]) -> RouteVerifyReport:
        return {
            "revision": self.revision,
            "ok": self.ok,
            "addresses": self.addresses,
            "blocks": self.blocks,
            "sources": self.sources,
            "walks": self.walks,
            "failed_addresses": self.failed_addresses,
            "failures": self.failures,
            "seconds": round(self.seconds, 3),
            "devices": devices,
        }


class _Table:
    """One device's routes flattened to disjoint intervals, each with its next hop."""

    __slots__ = ("default", "hops", "starts")

    def __init__(self, routes: RouteSet) -> None:
        self.default = routes.default
        self.starts: list[int] = []
        self.hops: list[str | None] = []  # None: no route here, the default applies
        stack: list[tuple[int, str]] = []  # enclosing routes: (end, via)
        # Shorter prefixes first at equal bases, so nested routes come after their parent.
        for route in sorted(routes.routes, key=lambda r: (r.base, r.prefixlen)):
            self._close(stack, route.base)
            self._segment(route.base, route.via)
            stack.append((route.base + (1 << (32 - route.prefixlen)), route.via))
        self._close(stack, 1 << 32)

    def _close(self, stack: list[tuple[int, str]], until: int) -> None:
        """End the enclosing routes that stop by ``until``: the next one out resumes."""
        while stack and stack[-1][0] <= until:
            end, _ = stack.pop()
            self._segment(end, stack[-1][1] if stack else None)

    def _segment(self, start: int, via: str | None) -> None:
        """A segment from ``start`` on; at an existing start, the latest (innermost) wins."""
        if self.starts and self.starts[-1] == start:
            self.hops[-1] = via
        else:
            self.starts.append(start)
            self.hops.append(via)

    def next_hop(self, ip: int) -> str | None:
        i = bisect_right(self.starts, ip) - 1
        via = self.hops[i] if i >= 0 else None
        return via if via is not None else self.default


def blocks_of(state: IpamState) -> list[BlockToCheck]:
    """Every assigned block with its owner and allocated addresses, read from the state."""
    ips = state.ips
    return [
        BlockToCheck(
            block.base,
            block.tree.block_mask,
            block.host,
            tuple((ip, ips[ip].name) for ip in block.used_ips()),
        )
        for block in state.blocks.values()
    ]


def verify(sets: Mapping[str, RouteSet], blocks: Sequence[BlockToCheck], revision: int) -> Report:
    """Walk every block from every host; list the addresses that miss their owner."""
    started = time.perf_counter()
    tables = {vantage: _Table(routes) for vantage, routes in sets.items()}
    sources = [v for v in sets if v.startswith("host:")]
    report = Report(
        revision,
        blocks=len(blocks),
        sources=len(sources),
        addresses=sum(len(b.addresses) for b in blocks),
    )
    for block in blocks:
        owner = f"host:{block.owner}"
        verdicts: dict[str, str | None] = {}  # device -> None (delivers) or the problem
        for source in sources:
            report.walks += 1
            path, problem = _walk(tables, verdicts, source, block.base, owner)
            if problem is not None:
                _record(report, block, source, path, problem)
                break  # one failing source is enough to name the block's addresses
    report.seconds = time.perf_counter() - started
    return report


def _walk(
    tables: Mapping[str, _Table], verdicts: dict[str, str | None], source: str, ip: int, owner: str
) -> tuple[list[str], str | None]:
    path = [source]
    device = source
    for _ in range(MAX_HOPS):
        if device in verdicts:
            problem = verdicts[device]
            break
        table = tables.get(device)
        if table is None:
            problem = f"{device} has no route set"
            break
        via = table.next_hop(ip)
        if via == LOCAL_VIA:
            problem = None if device == owner else f"delivered at {device}, not {owner}"
            break
        if via is None:
            problem = f"dropped at {device}: no route and no default"
            break
        device = via
        path.append(device)
    else:
        problem = "forwarding loop"
    for hop in path:
        verdicts.setdefault(hop, problem)
    return path, problem


def _record(
    report: Report, block: BlockToCheck, source: str, path: list[str], problem: str
) -> None:
    report.failed_addresses += len(block.addresses)
    for ip, name in block.addresses:
        if len(report.failures) >= MAX_LISTED:
            return
        report.failures.append(
            {
                "address": ip_to_str(ip),
                "name": name,
                "owner": block.owner,
                "block": cidr_str(block.base, block.prefixlen),
                "from": source,
                "path": path,
                "problem": problem,
            }
        )
