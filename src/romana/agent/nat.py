"""Outbound NAT: pod traffic leaving the cluster leaves with the node's address.

A network whose map entry says ``"nat_outgoing": true`` asks for it (like Calico's
``natOutgoing``). What is translated, on the node the packet leaves: source in such a
network, destination in no pod network of the map and in none of its ``cluster_ranges``
(node subnets, the service range). Pod-to-pod traffic is never translated, so policies and
logs keep seeing pods' own addresses.

The rules live in a table of their own, ``ip romana-nat`` (one ``postrouting`` nat chain and
two interval sets), loaded whole in one ``nft -f`` transaction that first deletes the table:
atomic (the kernel never holds half of it) and idempotent (loading it again changes
nothing). The policy table (``inet romana``) is never touched by it, nor it by the policy
table's reloads. When no network asks for NAT the table is deleted. Like the routes and the
policy table, it stays in place while the agent stops (traffic keeps flowing through a
restart), is loaded again at start, and is removed by ``romana-agent --cleanup``.

:class:`NatKeeper` runs after each of the route agent's syncs: it reads the map again when
the map changed (or at start), and otherwise compares the kernel's table with the plan and
loads it again if someone else changed or removed it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, collapse_addresses, summarize_address_range
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from romana.api.client import AsyncRomanaClient
from romana.errors import NotFound, RomanaError

FAMILY = "ip"
TABLE = "romana-nat"
CHAIN = "postrouting"
SOURCES = "nat-sources"  # NAT-enabled pod networks
NEVER = "never-translated"  # every pod network and the cluster's own ranges
log = logging.getLogger("romana.agent")


@dataclass(frozen=True, slots=True)
class NatPlan:
    """What the kernel should hold. Both sets are collapsed (no overlaps, no adjacent
    siblings), so two plans that translate the same traffic compare equal."""

    networks: tuple[str, ...] = ()  # names of the networks that ask for NAT
    sources: tuple[IPv4Network, ...] = ()
    never_translated: tuple[IPv4Network, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.sources)


def collapsed(cidrs: Iterable[IPv4Network]) -> tuple[IPv4Network, ...]:
    return tuple(collapse_addresses(cidrs))


def plan_from_topology(document: Mapping[str, Any] | None) -> NatPlan:
    """The plan of a map as romanad serves it (``GET /topology``; None: no map yet)."""
    if document is None:
        return NatPlan()
    networks = list(document.get("networks", ()))
    asking = [n for n in networks if n.get("nat_outgoing") is True]
    if not asking:
        return NatPlan()
    never = [IPv4Network(n["cidr"]) for n in networks]
    never += [IPv4Network(c) for c in document.get("cluster_ranges") or ()]
    return NatPlan(
        tuple(n["name"] for n in asking),
        collapsed(IPv4Network(n["cidr"]) for n in asking),
        collapsed(never),
    )


def render(plan: NatPlan) -> str:
    """The ``nft -f`` script that makes the kernel hold ``plan``: the table defined empty
    and deleted first (so it works whether or not the table exists), then, when some
    network asks for NAT, defined whole."""
    head = f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n"
    if not plan.enabled:
        return head
    return head + "\n".join(
        [
            f"table {FAMILY} {TABLE} {{",
            _set(SOURCES, plan.sources),
            _set(NEVER, plan.never_translated),
            f"  chain {CHAIN} {{",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f"    ip saddr @{SOURCES} ip daddr != @{NEVER} counter masquerade",
            "  }",
            "}",
            "",
        ]
    )


def _set(name: str, cidrs: tuple[IPv4Network, ...]) -> str:
    # Multi-line elements: nft's parser handles long lists far better than one line.
    elements = ",\n".join(f"      {c}" for c in cidrs)
    return (
        f"  set {name} {{\n    type ipv4_addr; flags interval;\n"
        f"    elements = {{\n{elements}\n    }}\n  }}"
    )


class NatTable:
    """The kernel's ``ip romana-nat`` table, through the ``nft`` program."""

    def __init__(self, nft: str = "nft", timeout: float = 30.0) -> None:
        self.nft = nft
        self.timeout = timeout

    def load(self, plan: NatPlan) -> str | None:
        """Make the kernel hold ``plan`` (delete the table when nothing asks for NAT);
        None when done, else what went wrong (the table then holds what it held)."""
        try:
            done = self._nft(["-f", "-"], render(plan))
        except FileNotFoundError:
            # No nft on this host: no table can be there to remove, so only NAT fails.
            return f"{self.nft} is not installed" if plan.enabled else None
        except OSError as exc:
            return f"cannot run {self.nft}: {exc}"
        if done.returncode == 0:
            return None
        return "nft refused the NAT table: " + done.stderr.strip()[:2000]

    def check(self, plan: NatPlan) -> str | None:
        """None if the kernel's table is what ``plan`` asks for, else the difference."""
        try:
            done = self._nft(["-j", "list", "table", FAMILY, TABLE], "")
        except FileNotFoundError:
            return f"{self.nft} is not installed" if plan.enabled else None
        except OSError as exc:
            return f"cannot run {self.nft}: {exc}"
        if done.returncode != 0:  # "No such file or directory": no table
            return f"table {FAMILY} {TABLE} is missing" if plan.enabled else None
        if not plan.enabled:
            return f"table {FAMILY} {TABLE} is present but no network asks for NAT"
        sets, rules, chains = _parse_listing(done.stdout)
        differences = [
            f"set {name}: {_show(sets.get(name))} instead of {_show(want)}"
            for name, want in ((SOURCES, plan.sources), (NEVER, plan.never_translated))
            if sets.get(name) != want
        ]
        differences += [f"set {name}: not ours" for name in sorted(sets.keys() - {SOURCES, NEVER})]
        if chains != {CHAIN: 1}:
            differences.append(f"chains {dict(chains)} instead of {{{CHAIN!r}: 1 rule}}")
        elif rules != 1:
            differences.append(f"{rules} masquerade rules instead of 1")
        return "; ".join(differences) or None

    def _nft(self, args: list[str], script: str) -> subprocess.CompletedProcess[str]:
        """nft's answer; OSError if it cannot run or does not finish in time."""
        try:
            return subprocess.run(
                [self.nft, *args],
                input=script,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise OSError(f"timed out after {self.timeout} seconds") from None


def _parse_listing(
    text: str,
) -> tuple[dict[str, tuple[IPv4Network, ...]], int, Tally[str]]:
    """(elements of each set, collapsed; rules that masquerade; rules per chain)."""
    sets: dict[str, tuple[IPv4Network, ...]] = {}
    chains: Tally[str] = Tally()
    masquerading = 0
    for item in json.loads(text)["nftables"]:
        if "set" in item:
            elements = item["set"].get("elem", ())
            sets[item["set"]["name"]] = collapsed(n for e in elements for n in _element(e))
        elif "chain" in item:
            chains[item["chain"]["name"]] += 0
        elif "rule" in item:
            chains[item["rule"]["chain"]] += 1
            exprs = item["rule"].get("expr", ())
            masquerading += any("masquerade" in e for e in exprs if isinstance(e, dict))
    return sets, masquerading, chains


def _element(element: Any) -> list[IPv4Network]:
    """One listed set element as networks: an address, a prefix or a range."""
    if isinstance(element, dict) and "elem" in element:  # an element with flags
        element = element["elem"]["val"]
    if isinstance(element, str):
        return [IPv4Network(element)]
    if "prefix" in element:
        return [IPv4Network(f"{element['prefix']['addr']}/{element['prefix']['len']}")]
    first, last = (IPv4Address(a) for a in element["range"])
    return list(summarize_address_range(first, last))


def _show(cidrs: tuple[IPv4Network, ...] | None) -> str:
    if cidrs is None:
        return "missing"
    return "{" + ", ".join(str(c) for c in cidrs[:4]) + (", ..." if len(cidrs) > 4 else "") + "}"


class NatMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.networks = Gauge(
            "romana_agent_nat_networks",
            "Networks whose pod traffic leaving the cluster the agent translates "
            "(0: no NAT table).",
            registry=registry,
        )
        self.loads = Counter(
            "romana_agent_nat_loads_total",
            "Loads of the outbound NAT table by reason (start, map, repair, retry).",
            ["reason"],
            registry=registry,
        )
        self.errors = Counter(
            "romana_agent_nat_errors_total",
            "Loads or checks of the outbound NAT table that failed.",
            registry=registry,
        )


class NatKeeper:
    """Keeps the kernel's NAT table what the map asks for; runs in the route agent's sync
    (``RouteAgent.after_sync``), so it needs no feed of its own."""

    def __init__(
        self, upstream: AsyncRomanaClient, table: NatTable, registry: CollectorRegistry
    ) -> None:
        self.upstream = upstream
        self.table = table
        self.metrics = NatMetrics(registry)
        self.plan: NatPlan | None = None  # what the map asks for, once read
        self.in_kernel: NatPlan | None = None  # what the last successful load put there
        self.problem: str | None = None  # the last load or check that failed
        self.map_unread = False  # the last read of the map failed: read it at the next sync
        self.loads = 0
        self.repairs = 0

    async def after_sync(self, reason: str, topology_changed: bool) -> None:
        """Read the map when it changed (or was never read), then make the kernel match.
        Failures (romanad's answer to ``GET /topology``, nft's) are recorded here and
        retried at the next sync: the routes, programmed already, must not wait for NAT."""
        if topology_changed or self.map_unread or self.plan is None:
            read = await self._read_map()
            if read is not None:
                self.plan = read
            elif self.plan is None:
                return  # nothing known yet: the kernel keeps what it has
        plan = self.plan
        if plan != self.in_kernel:
            first = "start" if self.loads == 0 else "retry"  # retry: the last load failed
            await self._load(plan, first if self.in_kernel is None else "map")
            return
        if not plan.enabled:
            return  # removed when the map last changed: no nft run per sync for nothing
        found = await asyncio.to_thread(self.table.check, plan)
        if found is not None:
            log.warning("outbound NAT table differs from the map", extra={"problem": found})
            await self._load(plan, "repair")

    async def _read_map(self) -> NatPlan | None:
        """What the map asks for; None if romanad could not say (recorded; the last plan
        stays and the map is read again at the next sync)."""
        try:
            document = await self.upstream.topology()
        except NotFound:  # no map applied yet: nothing asks for NAT
            document = None
        except RomanaError as exc:
            self.map_unread = True
            self.problem = f"cannot read the topology map: {exc.message}"
            self.metrics.errors.inc()
            log.warning("outbound NAT: the map is unread", extra={"error": exc.message})
            return None
        if self.map_unread:
            self.map_unread, self.problem = False, None
        return plan_from_topology(document)

    async def _load(self, plan: NatPlan, reason: str) -> None:
        started = time.perf_counter()
        failure = await asyncio.to_thread(self.table.load, plan)
        if failure is not None:
            self.problem, self.in_kernel = failure, None
            self.metrics.errors.inc()
            log.error("outbound NAT table not loaded", extra={"error": failure})
            return
        self.problem, self.in_kernel = None, plan
        self.loads += 1
        self.repairs += reason == "repair"
        self.metrics.loads.labels(reason).inc()
        self.metrics.networks.set(len(plan.networks))
        log.info(
            "outbound NAT table loaded" if plan.enabled else "no outbound NAT: table removed",
            extra={
                "reason": reason,
                "networks": list(plan.networks),
                "never_translated": len(plan.never_translated),
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )

    def health(self) -> dict[str, Any]:
        plan = self.plan or NatPlan()
        return {
            "networks": list(plan.networks),
            "sources": [str(c) for c in plan.sources],
            "never_translated": [str(c) for c in plan.never_translated],
            "table": f"{FAMILY} {TABLE}" if plan.enabled else None,
            "in_sync": self.plan is not None and self.in_kernel == self.plan,
            "problem": self.problem,
            "map_unread": self.map_unread,
            "loads": self.loads,
            "repairs": self.repairs,
        }


__all__ = ["NatKeeper", "NatPlan", "NatTable", "plan_from_topology", "render"]
