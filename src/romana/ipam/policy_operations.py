"""The engine's policy operations: endpoint and tenant labels, policies added and removed.

:class:`romana.ipam.engine.Engine` holds one and passes these calls to it. Like every
engine operation, each checks its request, plans facts and hands them to the engine's
``commit``, so policy changes share the log, the changes feed, replay, snapshots and
romanad's undo journal with addresses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from romana.errors import Conflict, NotFound
from romana.ipam.addr import ip_to_str
from romana.ipam.facts import (
    EndpointLabeled,
    Fact,
    PodRef,
    PolicyAdded,
    PolicyRemoved,
    TenantLabeled,
)
from romana.ipam.policy_book import StoredPolicy
from romana.ipam.state import IpamState
from romana.policy.inputs import PolicyInputs, ports_from_json
from romana.policy.model import Endpoint, Policy, tenant_labels
from romana.responses import TenantJson


class PolicyOperations:
    """Reads the engine's state through ``state`` at each call: romanad replaces the state
    when it rebuilds it from the store."""

    def __init__(
        self, state: Callable[[], IpamState], commit: Callable[[list[Fact]], None]
    ) -> None:
        self._state = state
        self._commit = commit

    # -- endpoints and tenants ------------------------------------------------------------
    def endpoint_facts(
        self,
        name: str,
        labels: Mapping[str, str] | None,
        ports: Sequence[Mapping[str, Any]] | None,
        pod: Mapping[str, str] | None = None,
    ) -> list[Fact]:
        """The fact giving address ``name`` these labels, ports and pod (None: keep what
        it has); [] if that is what it has."""
        old = self._state().book.endpoints.get(name)
        new_labels = dict(labels) if labels is not None else dict(old.labels if old else {})
        new_ports = (
            [dict(p) for p in ports] if ports is not None else list(old.ports if old else [])
        )
        new_pod = (
            PodRef(pod["namespace"], pod["name"], pod.get("uid") or "")
            if pod is not None
            else (old.pod if old else None)
        )
        if old is None and not new_labels and not new_ports and new_pod is None:
            return []
        if old is not None and (old.labels, old.ports, old.pod) == (new_labels, new_ports, new_pod):
            return []
        return [EndpointLabeled(name, new_labels, new_ports, new_pod)]

    def label_endpoint(
        self,
        name: str,
        labels: Mapping[str, str] | None,
        ports: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Replace an endpoint's labels and/or ports (None: keep); its pod stays."""
        if name not in self._state().addresses:
            raise NotFound(f'address "{name}" not found')
        facts = self.endpoint_facts(name, labels, ports)
        if facts:
            self._commit(facts)

    def label_tenant(self, name: str, labels: Mapping[str, str]) -> TenantJson:
        labels = dict(labels)
        if self._state().book.tenants.get(name, {}) != labels:
            self._commit([TenantLabeled(name, labels)])
        return self.tenant(name)

    def tenant(self, name: str) -> TenantJson:
        own = self._state().book.tenants.get(name, {})
        return {"name": name, "labels": own, "effective_labels": tenant_labels(name, own)}

    def tenants(self) -> list[TenantJson]:
        st = self._state()
        known = set(st.book.tenants)
        known |= {b.tenant for b in st.blocks.values() if b.tenant}
        return [self.tenant(name) for name in sorted(known)]

    # -- policies -------------------------------------------------------------------------
    def add_policies(self, given: Sequence[tuple[Policy, dict[str, Any]]], replace: bool) -> None:
        """Add policies, all or none; ``replace``: an existing key is updated (Kubernetes
        objects), else it is a conflict (Romana ids)."""
        facts: list[Fact] = []
        keys = [policy.key for policy, _ in given]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise Conflict(f"policy ids given twice: {', '.join(repeated)}")
        for policy, source in given:
            old = self._state().book.policies.get(policy.key)
            document = policy.to_json()
            if old is not None and not replace:
                raise Conflict(f'policy "{policy.key}" exists', ["remove it first to replace it"])
            if old is None or old.policy != document or old.source != source:
                facts.append(PolicyAdded(policy.key, document, source))
        if facts:
            self._commit(facts)

    def remove_policy(self, key: str) -> StoredPolicy:
        stored = self.policy(key)
        self._commit([PolicyRemoved(key)])
        return stored

    def policy(self, key: str) -> StoredPolicy:
        stored = self._state().book.policies.get(key)
        if stored is None:
            raise NotFound(f'policy "{key}" not found')
        return stored

    def policies(self) -> list[StoredPolicy]:
        return sorted(self._state().book.policies.values(), key=lambda p: p.key)

    def policy_inputs(self) -> PolicyInputs:
        """What agents compile their rules from (``GET /policy/state``)."""
        st = self._state()
        inputs = PolicyInputs(st.revision)
        # Sorted: insertion order differs between replicas (see romana.ipam.undo).
        inputs.tenants = {k: dict(v) for k, v in sorted(st.book.tenants.items())}
        inputs.hosts = {name: record.ip for name, record in st.hosts.items()}
        book = st.book.endpoints
        for _, address in sorted(st.ips.items()):
            name, block = address.name, address.block
            meta = book.get(name)
            inputs.put_endpoint(
                Endpoint(
                    name,
                    ip_to_str(address.ip),
                    block.host,
                    block.tenant,
                    block.segment,
                    dict(meta.labels) if meta else {},
                    ports_from_json(meta.ports) if meta else (),
                )
            )
        for base, block in st.blocks.items():
            inputs.blocks[(base, block.tree.block_mask)] = (block.host, block.tenant, block.segment)
        for key, stored in st.book.policies.items():
            inputs.policies[key] = Policy.from_json(stored.policy)
        return inputs
