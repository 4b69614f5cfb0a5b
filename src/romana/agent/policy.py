"""The agent's policy loop: keep this host's nftables table equal to what the policies
say about its endpoints.

It loads romanad's policy inputs (``GET /policy/state``) once, then follows the changes
feed and applies each change to its copy; after any change that can matter it updates
the host's ruleset (only the set members, when only endpoints or tenant labels changed:
:mod:`romana.policy.incremental`; else a whole compile) and loads what changed. A compacted
feed or a replaced store means a fresh load. While romanad is unreachable the table keeps
its rules: a pod isolated stays isolated.

Fail closed: the CNI ADD of a pod on this host waits for :meth:`PolicyEnforcer.admit`,
which puts the pod into the table before its address is configured, so a selected pod is
isolated from its first packet; an ADD that cannot be enforced fails. A policy this host's
nftables refuses, or one past the size budget (:class:`romana.policy.compile.Budget`),
keeps isolating its endpoints but allows nothing, is reported (metrics, ``/healthz``, the
log), and never keeps the other policies from loading.

The table in the kernel is guarded (:meth:`PolicyEnforcer.guard`): a transaction of any
other process that touches it (``nft flush ruleset``, a hand edit) is seen in the kernel's
nftables notifications and the table is loaded whole again at once; every
``repair_interval`` seconds the kernel's table is also compared with what was loaded, which
catches what notifications cannot (dropped ones). ``/healthz`` says what was found.

Flows tracked for an address that changes hands are deleted (:mod:`romana.netlink.conntrack`):
the table accepts established flows first, and the next holder of a released IP must not
inherit the old holder's. A CNI ADD deletes them once the new pod is in the table (and
fails if it cannot: fail closed), a CNI DEL once the pod is out, and every host does so for
each release the feed shows (and for each IP whose holder changed across a reload).

Most ADDs need no dump: :attr:`PolicyEnforcer.maybe_tracked` keeps the invariant "an address
of a clean block (one this host has owned since the last sweep) that is not in
``maybe_tracked`` has no tracked flow here". A sweep (one walk of the table, after each full
load of the state and whenever this host gains a block) deletes the flows of every address
of a block that no endpoint holds and starts the set afresh: the addresses held; every
address that gains a holder joins it; one leaves only once its flows were deleted while it
had no holder (CNI DEL, a release in the feed). It holds because an address of this host's
blocks that nobody holds is routed ``unreachable`` here (:mod:`romana.agent.reconcile`): a
packet to it is dropped before its conntrack entry is confirmed, and forged sources from
pod interfaces are dropped before conntrack. A block is clean only if the kernel's route
lookup (:func:`romana.agent.route_table.routing_drops`) already drops an unheld address of it
when the walk starts, and only pods this agent wires (full mode) may skip: in IPAM mode
another plugin's interface and routes outlive our DEL. An ADD whose address is outside
the set skips its two dumps (each walks every bucket of the kernel's hash: ~30 ms per ADD
on an idle host); until a sweep succeeds, and in blocks gained (or not yet routed) since,
every ADD dumps.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import time
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from romana import wire
from romana.agent.nftables import Loaded, NftTable
from romana.agent.nftevents import TableEvents
from romana.agent.route_table import routing_drops
from romana.api.client import AsyncRomanaClient
from romana.backoff import Backoff
from romana.errors import (
    FeedRewound,
    PolicyError,
    Resync,
    RomanaError,
    Unavailable,
    Unreachable,
)
from romana.feed import FeedGuard
from romana.netlink.conntrack import Swept, forget_flows, sweep_flows
from romana.policy.compile import TABLE, Budget, Ruleset, compile_host
from romana.policy.incremental import update_members
from romana.policy.inputs import Changed, PolicyInputs
from romana.policy.model import Endpoint, Policy
from romana.policy.nft import render_full
from romana.supervise import Loop

log = logging.getLogger("romana.agent.policy")
T = TypeVar("T")
Block = tuple[int, int]  # (network address, prefix length), as PolicyInputs.blocks keys them
SWEEP_RETRY = 60.0  # seconds between attempts after a failed sweep
# Seconds before sweeping again while some of this host's blocks are not yet routed
# `unreachable` here (the route loop programs them from the same feed, at its own pace).
UNROUTED_RETRY = 5.0


class PolicyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.rules = Gauge(
            "romana_policy_rules", "Rules in the agent's nftables table.", registry=r
        )
        self.elements = Gauge(
            "romana_policy_set_elements", "Set and map elements in the table.", registry=r
        )
        self.isolated = Gauge(
            "romana_policy_isolated_endpoints", "Local endpoints some policy isolates.", registry=r
        )
        self.loads = Counter(
            "romana_policy_loads_total", "Table loads by kind (full, update).", ["kind"], registry=r
        )
        self.load_seconds = Histogram(
            "romana_policy_load_seconds",
            "Time nft took to load a change.",
            ["kind"],
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=r,
        )
        self.compile_seconds = Histogram(
            "romana_policy_compile_seconds",
            "Time to compile the host's ruleset: whole, or members updated (kind).",
            ["kind"],
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=r,
        )
        self.errors = Counter(
            "romana_policy_errors_total", "Failures by kind.", ["kind"], registry=r
        )
        self.last_error = Gauge(
            "romana_policy_last_error_timestamp_seconds",
            "Unix time of the last load failure (0: none).",
            registry=r,
        )
        self.broken = Gauge(
            "romana_policy_refused_policies",
            "Policies this host enforces as allow-nothing: nft refused them, or too large.",
            registry=r,
        )
        self.repairs = Counter(
            "romana_policy_table_repairs_total",
            "Whole loads of a table another process changed, by how it was found "
            "(notification, check).",
            ["found_by"],
            registry=r,
        )
        self.flows = Counter(
            "romana_policy_flows_deleted_total",
            "Tracked flows deleted because their address was released or handed out again.",
            registry=r,
        )
        self.dumps_skipped = Counter(
            "romana_policy_flow_dumps_skipped_total",
            "CNI ADDs whose tracked flows needed no dump: the address cannot have any.",
            registry=r,
        )
        self.sweeps = Counter(
            "romana_policy_flow_sweeps_total",
            "Walks of the whole conntrack table (start, reload, block gained), by result.",
            ["result"],
            registry=r,
        )
        self.checks = Counter(
            "romana_policy_table_checks_total",
            "Comparisons of the kernel's table with what was loaded.",
            registry=r,
        )
        self.revision = Gauge(
            "romana_policy_revision", "romanad revision the table reflects.", registry=r
        )


class PolicyEnforcer:
    def __init__(
        self,
        host: str,
        upstream: AsyncRomanaClient,
        table: NftTable,
        registry: CollectorRegistry,
        watch_timeout: float = 30.0,
        admit_timeout: float = 10.0,
        budget: Budget = Budget(),
        repair_interval: float = 30.0,
        flow_forgetter: Callable[[Iterable[str]], int] = forget_flows,
        flow_sweeper: Callable[[Callable[[str], bool]], Swept] | None = None,
        route_drops: Callable[[str], bool] = routing_drops,
    ) -> None:
        self.host = host
        self.flow_forgetter = flow_forgetter
        # The sweep must walk the table the forgetter deletes from: a stand-in forgetter
        # (tests) without a sweeper of its own means no sweep, i.e. a dump at every ADD.
        if flow_sweeper is None and flow_forgetter is forget_flows:
            flow_sweeper = sweep_flows
        self.flow_sweeper = flow_sweeper
        self.route_drops = route_drops
        self._unrouted = False  # some of this host's blocks were not routed unreachable
        self.budget = budget
        self.repair_interval = repair_interval
        self.upstream = upstream
        self.table = table
        self.metrics = PolicyMetrics(registry)
        self.watch_timeout = watch_timeout
        self.admit_timeout = admit_timeout
        self.inputs: PolicyInputs | None = None
        self.ruleset: Ruleset | None = None
        # Policies this host's nft refused: key -> (what nft said, the policy refused).
        self.broken: dict[str, tuple[str, Policy]] = {}
        self.revision: int | None = None  # romanad revision the loaded table reflects
        self.loads = {"full": 0, "chains": 0, "update": 0}
        # What changed since the table was last loaded (members only: no compile needed).
        self.pending = Changed(structural=True)
        self.admitted: dict[str, Endpoint] = {}  # CNI ADDs the feed has not shown yet
        self.last_error: str | None = None
        self.enforced = asyncio.Event()  # set once the table reflects romanad's policies
        # The kernel's table as last found: what differed, if anything, and repairs made.
        self.table_problem: str | None = None
        self.checked = self.repaired = 0
        self.repairs: list[dict[str, Any]] = []  # the last few, newest last
        self.watching = False  # following the kernel's nftables notifications
        self.flows_deleted = 0
        self.flows_pending: set[str] = set()  # released IPs whose flows could not be deleted
        self._flows_done: dict[str, float] = {}  # IP -> when this host's CNI deleted them
        # Addresses of clean blocks that may have tracked flows here (the invariant is in
        # the module's docstring): the addresses of this host's blocks that are held, plus
        # those whose flows could not be deleted, so about as many as this host's pods.
        self.maybe_tracked: set[str] = set()
        self.swept = False  # the last sweep succeeded (since the last full load)
        self.clean_blocks: set[Block] = set()  # this host's blocks since that sweep
        self._sweep_added: set[str] | None = None  # gained a holder during the sweep
        self._sweep_tried = -SWEEP_RETRY  # monotonic time of the last attempt
        self.sweep: dict[str, Any] = {"done": 0, "failed": 0, "last": None}
        self.flow_dumps_skipped = 0
        self._flows = ThreadPoolExecutor(1, thread_name_prefix="conntrack")
        self.feed = FeedGuard(log, "the policy loop")
        self._lock = asyncio.Lock()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="policy")

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        self._flows.shutdown(wait=True)

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    # -- enforcing ------------------------------------------------------------------------
    async def enforce(self, reason: str) -> Loaded | None:
        """Compile this host's ruleset from the current inputs and load what changed."""
        async with self._lock:
            if self.inputs is None:
                return None
            inputs, revision = self.inputs, self.inputs.revision
            pending, self.pending = self.pending, Changed()
            try:
                loaded = await self._off_loop(self._compile_and_load, inputs, pending)
            except BaseException as exc:
                self.pending.merge(pending)  # still to be done
                if isinstance(exc, PolicyError):
                    self._failed(exc)
                raise
            self.revision = revision
            self.metrics.revision.set(revision)
            self.last_error = None
            if loaded.kind != "none":
                self.loads[loaded.kind] += 1
                self.metrics.loads.labels(loaded.kind).inc()
                self.metrics.load_seconds.labels(loaded.kind).observe(loaded.seconds)
                log.info(
                    "policy table loaded",
                    extra={
                        "reason": reason,
                        "kind": loaded.kind,
                        "ms": round(loaded.seconds * 1000, 1),
                        "rules": self.ruleset.rules if self.ruleset else 0,
                        "elements": self.ruleset.elements if self.ruleset else 0,
                    },
                )
            self.enforced.set()
            return loaded

    def _compile_and_load(self, inputs: PolicyInputs, pending: Changed) -> Loaded:
        """In the worker thread: update the members of the last ruleset where that is all
        that changed, else compile; load. On a refused load, find the policies this host
        refuses and load the rest with those failing closed. If even that is refused,
        nothing is marked and the table keeps what it had."""
        # A refused policy that changed since, or is gone, is tried again.
        self.broken = {
            k: (said, p) for k, (said, p) in self.broken.items() if inputs.policies.get(k) == p
        }
        started = time.perf_counter()
        broken = frozenset(self.broken)
        ruleset = None
        if self.ruleset is not None and self.ruleset.budget == self.budget:
            ruleset = update_members(self.ruleset, inputs, self.host, pending, broken)
        kind = "update"
        if ruleset is None:
            ruleset, kind = compile_host(inputs, self.host, broken, self.budget), "full"
        self.metrics.compile_seconds.labels(kind).observe(time.perf_counter() - started)
        try:
            loaded = self.table.load(ruleset)
        except PolicyError as refused:
            newly = self._refused_policies(inputs, ruleset)
            if not newly:
                raise
            trial = {**self.broken, **{k: (said, inputs.policies[k]) for k, said in newly.items()}}
            ruleset = compile_host(inputs, self.host, frozenset(trial), self.budget)
            loaded = self.table.load(ruleset)
            self.broken = trial
            for key, said in newly.items():
                log.error(
                    "nftables refuses a policy on this host; its endpoints allow nothing",
                    extra={"policy": key, "error": said, "whole_load": refused.message},
                )
            self.metrics.errors.labels("refused_policy").inc(len(newly))
        new_oversized = ruleset.oversized.keys() - (self.ruleset.oversized if self.ruleset else {})
        for key in sorted(new_oversized):
            log.error(
                "policy too large for this host; its endpoints allow nothing",
                extra={"policy": key, "error": ruleset.oversized[key]},
            )
        self.metrics.broken.set(len(self.broken) + len(ruleset.oversized))
        self.ruleset = ruleset
        self.metrics.rules.set(ruleset.rules)
        self.metrics.elements.set(ruleset.elements)
        self.metrics.isolated.set(len(ruleset.isolated))
        return loaded

    def _refused_policies(self, inputs: PolicyInputs, ruleset: Ruleset) -> dict[str, str]:
        found = {}
        for key in ruleset.policies:
            if key in self.broken:
                continue
            alone = PolicyInputs(
                inputs.revision, inputs.store_id, inputs.endpoints, inputs.tenants, inputs.hosts
            )
            alone.policies = {key: inputs.policies[key]}
            said = self.table.accepts(
                render_full(compile_host(alone, self.host, budget=self.budget))
            )
            if said is not None:
                found[key] = said
        return found

    def _failed(self, exc: PolicyError) -> None:
        self.last_error = exc.message
        self.metrics.errors.labels("load").inc()
        self.metrics.last_error.set(time.time())
        log.error(
            "policy table not loaded; the last good table stays", extra={"error": exc.message}
        )

    # -- the CNI's side -------------------------------------------------------------------
    async def admit(self, endpoint: Endpoint, routed_here: bool = True) -> None:
        """Put a starting pod into the table before it can send (CNI ADD), then delete the
        flows still tracked for its IP: from now on they are judged as the new pod's."""
        try:
            await asyncio.wait_for(self.enforced.wait(), self.admit_timeout)
        except TimeoutError:
            raise Unavailable(
                "the policy table is not loaded yet (romanad unreachable since start?)"
            ) from None
        async with self._lock:
            assert self.inputs is not None
            # Decided before the address joins the set: outside it (and in a clean block)
            # it had no holder since the sweep, so nothing can be tracked for it. Not while
            # a sweep walks: it condemns what was unheld when it started, so it could delete
            # this pod's first flows; the dump waits for the sweep to end, and so does the ADD.
            # Only where this agent routes the pod (full mode): in IPAM mode another plugin
            # owns the interface and its routes, which outlive our DEL, so traffic may be
            # tracked for the address after its flows were deleted.
            clean = routed_here and self._sweep_added is None and self._clean(endpoint.ip)
            self._may_track([endpoint.ip])
            self.pending.endpoints |= {endpoint.name, *self.inputs.put_endpoint(endpoint)}
            self.admitted[endpoint.name] = endpoint
        await self.enforce("cni")
        if clean:
            self.flow_dumps_skipped += 1
            self.metrics.dumps_skipped.inc()
            log.debug("no tracked flows possible; dump skipped", extra={"ip": endpoint.ip})
            return
        await self._delete_flows([endpoint.ip], "cni add", by_cni=True)

    async def forget(self, name: str) -> None:
        """A pod deleted here (CNI DEL): out of the sets now, not when the feed says so,
        and its IP's tracked flows deleted."""
        async with self._lock:
            self.admitted.pop(name, None)
            gone = self.inputs.drop_endpoint(name) if self.inputs is not None else None
            if gone is not None:
                self.pending.endpoints.add(name)
        if gone is not None:
            with contextlib.suppress(PolicyError):  # reported; the next change loads again
                await self.enforce("cni")
            with contextlib.suppress(PolicyError):  # reported; the feed's release retries
                await self._delete_flows([gone.ip], "cni del", by_cni=True)

    async def _delete_flows(self, ips: Collection[str], why: str, by_cni: bool = False) -> None:
        """Delete the tracked flows of ``ips``; PolicyError if the kernel refuses.
        ``by_cni``: for a pod of this host, so the feed's release need not do it again."""
        loop = asyncio.get_running_loop()
        try:
            count = await loop.run_in_executor(self._flows, self.flow_forgetter, ips)
        except OSError as exc:
            self.metrics.errors.labels("conntrack").inc()
            log.error(
                "cannot delete tracked flows of released addresses",
                extra={"ips": sorted(ips), "why": why, "error": str(exc)},
            )
            raise PolicyError(f"cannot delete the tracked flows of {sorted(ips)}: {exc}") from None
        now = time.monotonic()
        if by_cni:
            self._flows_done.update(dict.fromkeys(ips, now))
        self.flows_pending.difference_update(ips)
        # Deleted while nobody holds them: they stay without flows until a holder comes.
        held = self.inputs.ip_owners if self.inputs is not None else {}
        self.maybe_tracked.difference_update(ip for ip in ips if ip not in held)
        self.flows_deleted += count
        self.metrics.flows.inc(count)
        if count:
            log.info(
                "tracked flows deleted", extra={"ips": sorted(ips), "flows": count, "why": why}
            )

    async def _flows_released(self, ips: Iterable[str], why: str) -> None:
        """Releases this host learned of: delete their flows, unless this host's CNI did so
        already (after a DEL nothing can be tracked for the IP again: it has no route)."""
        now = time.monotonic()
        self._flows_done = {ip: t for ip, t in self._flows_done.items() if now - t < 60.0}
        todo = (set(ips) | self.flows_pending) - self._flows_done.keys()
        if not todo:
            return
        self.flows_pending |= todo
        with contextlib.suppress(PolicyError):  # logged; retried with the next change
            await self._delete_flows(todo, why)

    # -- which addresses may have tracked flows ---------------------------------------------
    def _clean(self, ip: str) -> bool:
        """Whether ``ip`` surely has no tracked flow here (so its ADD needs no dump)."""
        if not self.swept or ip in self.maybe_tracked:
            return False
        return _block_of(ip, self.clean_blocks) is not None

    def _may_track(self, ips: Iterable[str]) -> None:
        """``ips`` gained a holder: they may have flows from now on."""
        for ip in ips:
            if self._sweep_added is not None:
                self._sweep_added.add(ip)  # the sweep's outcome must not forget them
            if self.swept and _block_of(ip, self.clean_blocks) is not None:
                self.maybe_tracked.add(ip)

    def _own_blocks(self) -> set[Block]:
        assert self.inputs is not None
        return {key for key, (host, _, _) in self.inputs.blocks.items() if host == self.host}

    async def _sweep(self, why: str) -> bool:
        """One walk of the table: delete the flows of every unheld address of a block, then
        start ``maybe_tracked`` afresh. On failure no block is clean: every ADD dumps."""
        if self.flow_sweeper is None or self.inputs is None or self._sweep_added is not None:
            return False
        self._sweep_tried = time.monotonic()
        # Snapshots taken on the event loop: the walk runs in the conntrack thread while
        # the inputs keep changing.
        held = frozenset(self.inputs.ip_owners)
        blocks = frozenset(self.inputs.blocks)
        prefixlens = frozenset(p for _, p in blocks)
        own = self._own_blocks()
        sweeper = self.flow_sweeper
        # A block is clean only if routing already drops its unheld addresses when the walk
        # starts: a flow confirmed before that is found by the walk, none can be after.
        probes = {block: _unheld_address(block, held) for block in own}
        route_drops = self.route_drops

        def routed_unreachable() -> set[Block]:
            return {b for b, ip in probes.items() if ip is not None and route_drops(ip)}

        try:
            routed = await asyncio.get_running_loop().run_in_executor(
                self._flows, routed_unreachable
            )
        except OSError as exc:
            log.warning(
                "cannot look up the routes of this host's blocks", extra={"error": str(exc)}
            )
            routed = set()

        def condemned(ip: str) -> bool:
            return ip not in held and _block_of(ip, blocks, prefixlens) is not None

        self._sweep_added = set()
        started = time.perf_counter()
        try:
            swept = await asyncio.get_running_loop().run_in_executor(
                self._flows, sweeper, condemned
            )
        except OSError as exc:
            self.swept, self.clean_blocks = False, set()
            self.sweep["failed"] += 1
            self.metrics.sweeps.labels("failed").inc()
            self.metrics.errors.labels("conntrack").inc()
            log.error(
                "cannot sweep the tracked flows; every CNI ADD dumps them",
                extra={"why": why, "error": str(exc)},
            )
            return False
        finally:
            added, self._sweep_added = self._sweep_added, None
        # Only the follow task sweeps and applies the feed, so this host's blocks did not
        # move during the walk; CNI commands did add holders (``added``).
        self.maybe_tracked = {
            ip
            for ip in itertools.chain(held, swept.failed, added)
            if _block_of(ip, own) is not None
        }
        self.swept, self.clean_blocks = True, own & routed
        self._unrouted = bool(own - routed)
        self.flows_deleted += swept.deleted
        self.metrics.flows.inc(swept.deleted)
        self.sweep["done"] += 1
        self.sweep["last"] = {
            "why": why,
            "seen": len(swept.seen),
            "deleted": swept.deleted,
            "failed": sorted(swept.failed),
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }
        self.metrics.sweeps.labels("done").inc()
        log.info("tracked flows swept", extra=self.sweep["last"])
        return True

    # -- following romanad ----------------------------------------------------------------
    async def load_state(self) -> int:
        answer = await self.upstream.policy_state()
        inputs = PolicyInputs.from_json(answer)
        self.feed.check(inputs.store_id, inputs.revision)
        async with self._lock:
            before = dict(self.inputs.ip_owners) if self.inputs is not None else {}
            # What happened while the feed was not followed is unknown (a block may have
            # left and come back): nothing is clean until the sweep below.
            self.swept, self.clean_blocks = False, set()
            self.maybe_tracked = set()
            # Pods admitted here that the state does not show yet stay (their allocation
            # is acknowledged; the feed will confirm it). Anything else the state lacks,
            # e.g. released while romanad was out of reach, is gone.
            for name, ep in list(self.admitted.items()):
                if name in inputs.endpoints:
                    del self.admitted[name]
                else:
                    inputs.put_endpoint(ep)
            self.inputs = inputs
            self.pending.structural = True
        await self.enforce("start" if not self.enforced.is_set() else "resync")
        # Holders that changed while the feed was not followed: their releases were missed.
        moved = [ip for ip, name in before.items() if inputs.ip_owners.get(ip) != name]
        await self._flows_released(moved, "reload")
        await self._sweep("start" if not before and self.sweep["done"] == 0 else "reload")
        return inputs.revision

    async def follow(self, loop: Loop) -> None:
        backoff = Backoff()
        since: int | None = None
        while True:
            loop.beat()
            try:
                if since is None:
                    since = await self.load_state()
                    backoff.reset()
                answer = await self.upstream.watch(since, self.watch_timeout)
                revision = int(answer["revision"])
                self.feed.check(answer.get("store_id"), revision, floor=since)
                released = [
                    str(c["ip"])
                    for c in answer["changes"]
                    if c.get("kind") == wire.ADDRESS_RELEASED and "ip" in c
                ]
                gained = self._blocks_moved(answer["changes"])
                async with self._lock:  # never while a compile reads the inputs
                    assert self.inputs is not None
                    self._may_track(
                        str(c["ip"])
                        for c in answer["changes"]
                        if c.get("kind") == wire.ADDRESS_ALLOCATED and "ip" in c
                    )
                    changed = self.inputs.follow(answer["changes"])
                    self._confirmed(answer["changes"])
                    self.pending.merge(changed)
                    self.inputs.revision = since = revision
                    if not self.pending and self.enforced.is_set():
                        self.revision = revision  # nothing the table depends on moved
                if self.pending:  # new changes, or earlier ones whose load failed
                    await self.enforce("watch")
                if released or self.flows_pending:
                    await self._flows_released(released, "released")
                if gained:
                    await self._sweep("block gained")
                elif not self.swept and time.monotonic() - self._sweep_tried >= SWEEP_RETRY:
                    await self._sweep("retry")  # no-op without a sweeper
                elif self._unrouted and time.monotonic() - self._sweep_tried >= UNROUTED_RETRY:
                    await self._sweep("blocks routed")
                backoff.reset()
            except Resync:
                since = None
            except (Unreachable, FeedRewound) as exc:
                # Keep the table as it is: isolated pods stay isolated.
                self.metrics.errors.labels(type(exc).__name__).inc()
                since = None
                await asyncio.sleep(backoff.next())
            except Unavailable as exc:
                # romanad answered 503 (busy: e.g. --max-watches long polls open). Keep the
                # place in the feed: re-reading /policy/state (megabytes) would add load.
                self.metrics.errors.labels(type(exc).__name__).inc()
                await asyncio.sleep(backoff.next())
            except (RomanaError, OSError) as exc:
                self.metrics.errors.labels(type(exc).__name__).inc()
                log.error("policy loop failed; retrying", extra={"error": str(exc)})
                since = None
                await asyncio.sleep(backoff.next())

    def _blocks_moved(self, changes: list[dict[str, Any]]) -> bool:
        """Blocks that leave this host are no longer clean (if one comes back, flows it
        gained elsewhere may be tracked here); whether this host gained one (to sweep)."""
        gained = False
        for c in changes:
            kind = c.get("kind")
            if kind not in (wire.BLOCK_ASSIGNED, wire.BLOCK_FREED):
                continue
            if kind == wire.BLOCK_ASSIGNED and c.get("host") == self.host:
                gained = True
                continue
            net = ipaddress.IPv4Network(str(c["cidr"]))
            self.clean_blocks.discard((int(net.network_address), net.prefixlen))
        return gained

    def _confirmed(self, changes: list[dict[str, Any]]) -> None:
        """The feed now speaks for admitted pods whose allocation or release it showed."""
        for c in changes:
            if c.get("kind") in (wire.ADDRESS_ALLOCATED, wire.ADDRESS_RELEASED):
                self.admitted.pop(c.get("name", ""), None)

    # -- guarding the kernel's table ------------------------------------------------------
    async def guard(self, loop: Loop) -> None:
        """Keep the kernel's table what was loaded: load it whole again as soon as another
        process's transaction touches it, and compare it with the kernel every
        ``repair_interval`` seconds (and whenever notifications were dropped)."""
        events = None
        try:
            events = TableEvents(TABLE, self.table.own_pids)
        except OSError as exc:  # still guarded, by the periodic check alone
            log.warning(
                "cannot follow nftables notifications; checking the table periodically only",
                extra={"error": str(exc), "interval": self.repair_interval},
            )
        self.watching = events is not None
        try:
            next_check = time.monotonic() + self.repair_interval
            while True:
                loop.beat()
                timeout = max(0.0, next_check - time.monotonic())
                if events is None:
                    await asyncio.sleep(timeout)
                    change = None
                else:
                    try:
                        change = await asyncio.wait_for(events.next(), timeout)
                    except TimeoutError:
                        change = None
                if change is not None and not change.lost:
                    await self.repair(str(change), "notification")
                    continue
                await self.check()
                next_check = time.monotonic() + self.repair_interval
        finally:
            self.watching = False
            if events is not None:
                events.close()

    async def check(self) -> str | None:
        """Compare the kernel's table with what was loaded; repair it if they differ.
        Returns what differed."""
        async with self._lock:
            try:
                problem = await self._off_loop(self.table.check)
            except PolicyError as exc:
                problem = exc.message
            self.checked += 1
            self.metrics.checks.inc()
        if problem is not None:
            await self.repair(problem, "check")
        return problem

    async def repair(self, reason: str, found_by: str) -> None:
        """Load the last compiled ruleset whole: someone else changed the table."""
        async with self._lock:
            ruleset = self.ruleset
            if ruleset is None:
                return
            self.table_problem = reason
            try:
                loaded = await self._off_loop(self.table.reload, ruleset)
            except PolicyError as exc:
                self._failed(exc)
                return
            self.table_problem = None
            self.repaired += 1
            self.metrics.repairs.labels(found_by).inc()
            self.repairs = [
                *self.repairs[-9:],
                {"at": round(time.time(), 3), "found_by": found_by, "reason": reason},
            ]
            log.warning(
                "policy table changed by someone else; loaded again",
                extra={
                    "reason": reason,
                    "found_by": found_by,
                    "ms": round(loaded.seconds * 1000, 1),
                },
            )

    def health(self) -> dict[str, Any]:
        rs = self.ruleset
        return {
            "enforced": self.enforced.is_set(),
            "revision": self.revision,
            "rules": rs.rules if rs else 0,
            "elements": rs.elements if rs else 0,
            "isolated_endpoints": len(rs.isolated) if rs else 0,
            "loads": dict(self.loads),
            "refused_policies": {
                **{k: said for k, (said, _) in self.broken.items()},
                **(rs.oversized if rs else {}),
            },
            "last_error": self.last_error,
            "flows_deleted": self.flows_deleted,
            "flows_pending": sorted(self.flows_pending),
            "flows": {
                "swept": self.swept,
                "clean_blocks": len(self.clean_blocks),
                "sweeps": dict(self.sweep),
                "dumps_skipped": self.flow_dumps_skipped,
                "maybe_tracked": len(self.maybe_tracked),
            },
            "table": {
                "intact": self.table_problem is None,
                "problem": self.table_problem,
                "notifications": self.watching,
                "checks": self.checked,
                "repairs": self.repaired,
                "last_repairs": self.repairs[-5:],
            },
        }


def _block_of(
    ip: str, blocks: Collection[Block], prefixlens: Iterable[int] | None = None
) -> Block | None:
    """The block of ``blocks`` that contains ``ip``, if any."""
    value = int(ipaddress.IPv4Address(ip))
    for prefixlen in {p for _, p in blocks} if prefixlens is None else prefixlens:
        key = (value & ~((1 << (32 - prefixlen)) - 1), prefixlen)
        if key in blocks:
            return key
    return None


__all__ = ["PolicyEnforcer", "PolicyMetrics"]


def _unheld_address(block: Block, held: Collection[str]) -> str | None:
    """An address of ``block`` that no endpoint holds (to ask the routing about), if any."""
    network, prefixlen = block
    for offset in range(1 << (32 - prefixlen)):
        candidate = str(ipaddress.IPv4Address(network + offset))
        if candidate not in held:
            return candidate
    return None
