"""Keep romanad in step with the cluster: level-triggered and idempotent.

Every watch event marks its key dirty; the loop compares, key by key, what romanad holds
with what the object says (:mod:`romana.kube.desired`) and writes only the difference.
A full comparison runs once every kind is listed (so a restarted listener converges,
and what vanished while it was away is removed) and again every ``resync`` seconds
(so a write that failed, or a host that could not move yet, is tried again).

Every write sets a whole value (a host's labels, a tenant's labels, an endpoint's labels
and ports, a policy by namespace and name) and a removal of something already gone is
success: two listeners at once converge on the same state (see docs/kubernetes.md).

Each object is its own problem (:mod:`romana.kube.refusals`): a write romanad refuses
(a 4xx) is recorded against that object, reported, and never blocks the others; only
romanad being away or broken (5xx, no answer) stops a pass, and the keys it had not done
yet stay dirty. A NetworkPolicy that cannot be enforced as written (untranslatable, or
refused by romanad) fails closed: its stand-in (:meth:`NetworkPolicy.isolating`) isolates
the pods it selects and allows nothing, until the policy is fixed.

Hosts are never moved silently. New node labels that no longer fit the host's group (or
a new InternalIP) are applied by removing and re-adding the host only while it holds no
addresses; otherwise the host stays, a Warning event is posted on the Node and logged,
and every resync tries again. A deleted node's host is removed after ``grace`` seconds
(its blocks are freed then), unless the node comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from romana.api.client import RomanaClient
from romana.backoff import Backoff
from romana.errors import Conflict, NotFound, RomanaError
from romana.kube import desired, endpoints
from romana.kube.desired import MANAGED, EndpointSpec, HostSpec
from romana.kube.endpoints import Holdings
from romana.kube.reflector import Reflector
from romana.kube.refusals import (
    NOT_ENFORCED,
    Refusal,
    Refusals,
    Subject,
    Warn,
    is_transient,
    refusal_of,
)
from romana.policy.k8s import policy_key
from romana.supervise import Loop

log = logging.getLogger("romana.kube")
NAMESPACED = ("Pod", "NetworkPolicy")


@dataclass(slots=True)
class SyncStats:
    full_syncs: int = 0
    writes: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    last_full_sync: float | None = None

    def wrote(self, what: str) -> None:
        self.writes[what] = self.writes.get(what, 0) + 1


class Sync:
    def __init__(
        self,
        romanad: RomanaClient,
        reflectors: Mapping[str, Reflector],
        warn: Warn,
        grace: float = 300.0,
        resync: float = 60.0,
    ) -> None:
        self.romanad, self.reflectors, self.warn = romanad, reflectors, warn
        self.grace, self.resync = grace, resync
        self.dirty: dict[str, set[str]] = {kind: set() for kind in reflectors}
        self.wake = asyncio.Event()
        self.full_due = True
        self.removals: dict[str, float] = {}  # host -> when it goes (monotonic)
        self.not_moved: dict[str, str] = {}  # host -> why (warned once per reason)
        self.refusals = Refusals(warn)
        self.stats = SyncStats()
        self._caches: dict[str, dict[str, Any]] = {kind: {} for kind in reflectors}
        self._done: set[tuple[str, str]] = set()  # (kind, key) finished in this pass
        self._claims: Counter[str] | None = None  # live pods per IP, for this pass
        self.converged = asyncio.Event()  # set after each pass that left nothing to do

    def changed(self, kind: str, key: str) -> None:
        self.dirty.setdefault(kind, set()).add(key)
        self.converged.clear()
        self.wake.set()

    def cache(self, kind: str) -> dict[str, Any]:
        return self._caches[kind]

    # -- the loop -------------------------------------------------------------------------
    async def run(self, loop: Loop) -> None:
        for reflector in self.reflectors.values():
            await reflector.synced.wait()
        backoff = Backoff(0.2, 10.0)
        next_full = 0.0
        while True:
            loop.beat()
            if time.monotonic() >= next_full:
                self.full_due, next_full = True, time.monotonic() + self.resync
            # The pass runs in a thread (romanad's client is synchronous): it gets copies
            # of the caches and of the dirty keys, taken here, on the loop that owns them.
            self.wake.clear()
            full, taken = self.full_due, self.dirty
            self.dirty = {kind: set() for kind in self.reflectors}
            self._caches = {k: dict(r.cache) for k, r in self.reflectors.items()}
            self._done, self._claims = set(), None
            try:
                await asyncio.to_thread(self._pass, full, taken)
                self.full_due = False
                backoff.reset()
            except RomanaError as exc:  # romanad away: keep what this pass had not done
                for kind, keys in taken.items():
                    self.dirty[kind] |= {k for k in keys if (kind, k) not in self._done}
                self.stats.failures += 1
                delay = backoff.next()
                log.warning(
                    "romanad write failed; retrying",
                    extra={"error": exc.message, "retry_in": round(delay, 2)},
                )
                await asyncio.sleep(delay)
                continue
            if not any(self.dirty.values()) and not self.wake.is_set():
                self.converged.set()
            deadlines = [next_full, *self.removals.values()]
            timeout = max(0.0, min(deadlines) - time.monotonic())
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
                await asyncio.sleep(0.02)  # a burst of events becomes one pass
            except TimeoutError:
                pass

    def _pass(self, full: bool, dirty: dict[str, set[str]]) -> None:
        """A full comparison, or the dirty keys; then the removals that are due."""
        if full:
            self._full()
        else:
            for kind, keys in dirty.items():
                for key in sorted(keys):
                    self._one(kind, key)
        self._due_removals()

    def _one(self, kind: str, key: str) -> None:
        obj = self.cache(kind).get(key)
        subject = self._subject(kind, key, obj)
        if kind == "Node":
            self._guarded(subject, lambda: self._node(key, obj, self._host(key)))
        elif kind == "Namespace":
            self._guarded(subject, lambda: self._tenant(key, self._tenant_labels(key)))
        elif kind == "Pod":
            self._guarded(subject, lambda: self._pod(obj))
        elif kind == "NetworkPolicy":
            namespace, _, name = key.partition("/")
            self._guarded(
                subject,
                lambda: self._policy(namespace, name, obj, self._stored_policy(namespace, name)),
            )

    def _full(self) -> None:
        hosts = {h["name"]: h for h in self.romanad.hosts()["hosts"]}
        nodes = self.cache("Node")
        for name in sorted(hosts.keys() | nodes.keys()):
            node = nodes.get(name)
            self._guarded(
                self._subject("Node", name, node), partial(self._node, name, node, hosts.get(name))
            )
        tenants = {t["name"]: t["labels"] for t in self.romanad.tenants()}
        spaces = self.cache("Namespace")
        for name in sorted(tenants.keys() | spaces.keys()):
            self._guarded(
                self._subject("Namespace", name, spaces.get(name)),
                partial(self._tenant, name, tenants.get(name, {})),
            )
        pods = self.cache("Pod")
        holdings = Holdings(self.romanad.addresses()["addresses"], self._pod_claims())
        for key in sorted(pods):
            spec = desired.endpoint(pods[key])
            if spec is not None:
                self._guarded(
                    self._subject("Pod", key, pods[key]),
                    partial(self._label, spec, holdings),
                )
        # Pods no longer live were not visited: a refusal about them is moot now.
        self.refusals.keep_only("Pod", {k for k in pods if desired.live(pods[k])})
        stored = {_policy_name(p): p for p in self.romanad.network_policies()}
        wanted = {tuple(k.split("/", 1)): v for k, v in self.cache("NetworkPolicy").items()}
        for namespace, name in sorted(stored.keys() | wanted.keys()):
            obj = wanted.get((namespace, name))
            self._guarded(
                self._subject("NetworkPolicy", f"{namespace}/{name}", obj),
                partial(self._policy, namespace, name, obj, stored.get((namespace, name))),
            )
        self.stats.full_syncs += 1
        self.stats.last_full_sync = time.time()

    # -- one object at a time -------------------------------------------------------------
    def _guarded(self, subject: Subject, write: Callable[[], Refusal | None]) -> None:
        """``write`` for one object: a refusal (returned, or a 4xx raised) is recorded
        against it and the pass goes on; romanad away or broken ends the pass."""
        try:
            refusal = write()
        except Exception as exc:
            if is_transient(exc):
                raise
            refusal = refusal_of(subject.kind, exc)
        if refusal is None:
            self.refusals.cleared(subject.kind, subject.key)
        else:
            self.refusals.refused(subject, refusal)
        self._done.add((subject.kind, subject.key))

    def _subject(self, kind: str, key: str, obj: Any) -> Subject:
        meta = getattr(obj, "metadata", None)
        uid = getattr(meta, "uid", None) or None
        if kind in NAMESPACED:
            namespace, _, name = key.partition("/")
            return Subject(kind, name, namespace, uid)
        return Subject(kind, key, None, uid)

    # -- hosts ----------------------------------------------------------------------------
    def _host(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.romanad.host(name))
        except NotFound:
            return None

    def _node(self, name: str, node: Any, held: Mapping[str, Any] | None) -> None:
        spec = desired.host(node) if node is not None else None
        if node is None:
            managed = held is not None and held["labels"].get(MANAGED[0]) == MANAGED[1]
            if managed and name not in self.removals:
                log.info(
                    "node deleted; its host goes after the grace period",
                    extra={"host": name, "grace": self.grace},
                )
                self.removals[name] = time.monotonic() + self.grace
            return
        if self.removals.pop(name, None) is not None:
            log.info("node is back; its host stays", extra={"host": name})
        if spec is None:
            log.warning("node has no InternalIP yet; not added", extra={"host": name})
            return
        if held is None:
            self._add_host(spec)
        elif held["ip"] != spec.ip:
            self._move(spec, held, f"its InternalIP changed from {held['ip']} to {spec.ip}")
        elif held["labels"] != spec.labels:
            try:
                self.romanad.set_labels(spec.name, spec.labels)
                self.stats.wrote("host_labels")
                self.not_moved.pop(spec.name, None)
            except Conflict as exc:
                self._move(spec, held, _why(exc))
            except NotFound:
                # Removed since it was read: another listener is moving it to the group its
                # new labels need. Adding it as it should be is idempotent whoever is first.
                self._add_host(spec)
        else:
            self.not_moved.pop(spec.name, None)

    def _add_host(self, spec: HostSpec) -> None:
        # A refusal (the IP is another host's, no group fits its labels, it lies inside a
        # pod network...) is this node's alone: _guarded records and reports it.
        self.romanad.add_host(spec.name, spec.ip, spec.labels)
        self.stats.wrote("host_added")
        self.not_moved.pop(spec.name, None)
        log.info("host added", extra={"host": spec.name, "ip": spec.ip})

    def _move(self, spec: HostSpec, held: Mapping[str, Any], why: str) -> None:
        if held["block_count"] == 0:
            with contextlib.suppress(NotFound):
                self.romanad.remove_host(spec.name)
            self.stats.wrote("host_moved")
            log.info("host moved (it held no addresses)", extra={"host": spec.name, "why": why})
            self._add_host(spec)
            return
        self._refused(
            spec.name,
            "RomanaHostNotMoved",
            f"host {spec.name} keeps its place: {why}; it holds addresses "
            f"({held['block_count']} blocks), so it moves once they are released",
        )

    def _refused(self, name: str, reason: str, message: str) -> None:
        if self.not_moved.get(name) == message:
            return  # said already; every resync tries again quietly
        self.not_moved[name] = message
        log.error("host not updated", extra={"host": name, "reason": reason, "why": message})
        self.warn(Subject("Node", name), reason, message)

    def _due_removals(self) -> None:
        now = time.monotonic()
        for name, when in sorted(self.removals.items()):
            if when > now:
                continue
            if name not in self.cache("Node"):
                # A refusal drops the removal too: the next full pass, finding the host
                # without its node, schedules it again (after the grace period).
                self._guarded(Subject("Node", name), partial(self._remove_host, name))
            del self.removals[name]
            self.not_moved.pop(name, None)

    def _remove_host(self, name: str) -> None:
        try:
            self.romanad.remove_host(name)
            self.stats.wrote("host_removed")
            log.info("host removed (node deleted)", extra={"host": name})
        except NotFound:
            pass

    # -- tenants, endpoints, policies -----------------------------------------------------
    def _tenant_labels(self, name: str) -> dict[str, str]:
        try:
            return dict(self.romanad.tenant(name)["labels"])
        except NotFound:
            return {}

    def _tenant(self, name: str, held: Mapping[str, str]) -> None:
        namespace = self.cache("Namespace").get(name)
        wanted = desired.tenant_labels(namespace) if namespace is not None else {}
        if dict(held) != wanted:
            self.romanad.label_tenant(name, wanted)
            self.stats.wrote("tenant_labels")

    def _pod(self, obj: Any) -> None:
        spec = desired.endpoint(obj) if obj is not None else None
        if spec is None or spec.node is None:
            return  # gone, not ours to label (terminating...), or not on a node yet
        on_node = self.romanad.addresses(host=spec.node)["addresses"]
        self._label(spec, Holdings(on_node, self._pod_claims()))

    def _pod_claims(self) -> Counter[str]:
        if self._claims is None:
            self._claims = endpoints.claims(self.cache("Pod").values())
        return self._claims

    def _label(self, spec: EndpointSpec, holdings: Holdings) -> None:
        for address in holdings.of(spec):
            if address.get("labels") == spec.labels and address.get("ports") == spec.ports:
                continue
            try:
                self.romanad.label_endpoint(address["name"], spec.labels, spec.ports)
                self.stats.wrote("endpoint_labels")
            except NotFound:
                pass  # released meanwhile: the pod is gone or restarting

    def _stored_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.romanad.policy(policy_key(namespace, name))["source"])
        except NotFound:
            return None

    def _policy(
        self, namespace: str, name: str, obj: Any, held: Mapping[str, Any] | None
    ) -> Refusal | None:
        """Put the policy (or, failing that, its fail-closed stand-in); remove it when the
        object is gone. A Refusal when the stand-in is what romanad enforces."""
        if obj is None:
            if held is not None:
                try:
                    self.romanad.remove_network_policy(namespace, name)
                    self.stats.wrote("policy_removed")
                except NotFound:
                    pass
            return None
        wanted = desired.network_policy(obj)
        why, error = wanted.not_enforced, "untranslatable"
        if why is None:
            try:
                self._put_policy(wanted.source, held)
                return None
            except RomanaError as exc:
                if is_transient(exc):
                    raise
                why, error = f"refused by romanad: {_why(exc)}", exc.wire_code
            wanted = desired.stand_in(desired.policy_document(obj), why)
        self._put_policy(wanted.source, held)  # a refusal of the stand-in: RomanaPolicyRefused
        message = (
            f"NetworkPolicy {namespace}/{name} is not enforced as written ({why}); "
            "the pods it selects are isolated and nothing is allowed until it is fixed"
        )
        return Refusal(NOT_ENFORCED, message, error, fail_closed=True)

    def _put_policy(self, source: dict[str, Any], held: Mapping[str, Any] | None) -> None:
        if held != source:
            self.romanad.put_network_policy(source)
            self.stats.wrote("policy_put")


def _why(exc: RomanaError) -> str:
    return "; ".join([exc.message, *map(str, exc.details)])


def _policy_name(source: Mapping[str, Any]) -> tuple[str, str]:
    meta = source.get("metadata", {})
    return str(meta.get("namespace", "default")), str(meta.get("name", ""))
