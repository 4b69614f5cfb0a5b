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
nftables refuses keeps isolating its endpoints but allows nothing, is reported (metrics,
``/healthz``, the log), and never keeps the other policies from loading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from romana import wire
from romana.agent.nftables import Loaded, NftTable
from romana.api.client import AsyncRomanaClient
from romana.backoff import Backoff
from romana.errors import FeedRewound, PolicyError, Resync, RomanaError, Unavailable
from romana.feed import FeedGuard
from romana.policy.compile import Ruleset, compile_host
from romana.policy.incremental import update_members
from romana.policy.inputs import Changed, PolicyInputs
from romana.policy.model import Endpoint, Policy
from romana.policy.nft import render_full
from romana.supervise import Loop

log = logging.getLogger("romana.agent.policy")
T = TypeVar("T")


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
            "romana_policy_refused_policies", "Policies this host's nft refused.", registry=r
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
    ) -> None:
        self.host = host
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
        self.feed = FeedGuard(log, "the policy loop")
        self._lock = asyncio.Lock()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="policy")

    def close(self) -> None:
        self._worker.shutdown(wait=True)

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
        if self.ruleset is not None:
            ruleset = update_members(self.ruleset, inputs, self.host, pending, broken)
        kind = "update"
        if ruleset is None:
            ruleset, kind = compile_host(inputs, self.host, broken), "full"
        self.metrics.compile_seconds.labels(kind).observe(time.perf_counter() - started)
        try:
            loaded = self.table.load(ruleset)
        except PolicyError as refused:
            newly = self._refused_policies(inputs, ruleset)
            if not newly:
                raise
            trial = {**self.broken, **{k: (said, inputs.policies[k]) for k, said in newly.items()}}
            ruleset = compile_host(inputs, self.host, frozenset(trial))
            loaded = self.table.load(ruleset)
            self.broken = trial
            for key, said in newly.items():
                log.error(
                    "nftables refuses a policy on this host; its endpoints allow nothing",
                    extra={"policy": key, "error": said, "whole_load": refused.message},
                )
            self.metrics.errors.labels("refused_policy").inc(len(newly))
        self.metrics.broken.set(len(self.broken))
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
            said = self.table.accepts(render_full(compile_host(alone, self.host)))
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
    async def admit(self, endpoint: Endpoint) -> None:
        """Put a starting pod into the table before it can send (CNI ADD)."""
        try:
            await asyncio.wait_for(self.enforced.wait(), self.admit_timeout)
        except TimeoutError:
            raise Unavailable(
                "the policy table is not loaded yet (romanad unreachable since start?)"
            ) from None
        async with self._lock:
            assert self.inputs is not None
            self.pending.endpoints |= {endpoint.name, *self.inputs.put_endpoint(endpoint)}
            self.admitted[endpoint.name] = endpoint
        await self.enforce("cni")

    async def forget(self, name: str) -> None:
        """A pod deleted here (CNI DEL): out of the sets now, not when the feed says so."""
        async with self._lock:
            self.admitted.pop(name, None)
            gone = self.inputs is not None and self.inputs.drop_endpoint(name) is not None
            if gone:
                self.pending.endpoints.add(name)
        if gone:
            with contextlib.suppress(PolicyError):  # reported; the next change loads again
                await self.enforce("cni")

    # -- following romanad ----------------------------------------------------------------
    async def load_state(self) -> int:
        answer = await self.upstream.policy_state()
        inputs = PolicyInputs.from_json(answer)
        self.feed.check(inputs.store_id, inputs.revision)
        async with self._lock:
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
                async with self._lock:  # never while a compile reads the inputs
                    assert self.inputs is not None
                    changed = self.inputs.follow(answer["changes"])
                    self._confirmed(answer["changes"])
                    self.pending.merge(changed)
                    self.inputs.revision = since = revision
                    if not self.pending and self.enforced.is_set():
                        self.revision = revision  # nothing the table depends on moved
                if self.pending:  # new changes, or earlier ones whose load failed
                    await self.enforce("watch")
                backoff.reset()
            except Resync:
                since = None
            except (Unavailable, FeedRewound) as exc:
                # Keep the table as it is: isolated pods stay isolated.
                self.metrics.errors.labels(type(exc).__name__).inc()
                since = None
                await asyncio.sleep(backoff.next())
            except (RomanaError, OSError) as exc:
                self.metrics.errors.labels(type(exc).__name__).inc()
                log.error("policy loop failed; retrying", extra={"error": str(exc)})
                since = None
                await asyncio.sleep(backoff.next())

    def _confirmed(self, changes: list[dict[str, Any]]) -> None:
        """The feed now speaks for admitted pods whose allocation or release it showed."""
        for c in changes:
            if c.get("kind") in (wire.ADDRESS_ALLOCATED, wire.ADDRESS_RELEASED):
                self.admitted.pop(c.get("name", ""), None)

    def health(self) -> dict[str, Any]:
        rs = self.ruleset
        return {
            "enforced": self.enforced.is_set(),
            "revision": self.revision,
            "rules": rs.rules if rs else 0,
            "elements": rs.elements if rs else 0,
            "isolated_endpoints": len(rs.isolated) if rs else 0,
            "loads": dict(self.loads),
            "refused_policies": {k: said for k, (said, _) in self.broken.items()},
            "last_error": self.last_error,
        }


__all__ = ["PolicyEnforcer", "PolicyMetrics"]
