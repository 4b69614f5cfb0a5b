"""romanad's record of endpoint metadata (labels, named ports, the pod), tenant labels and
policies (applied from facts).

It lives inside :class:`romana.ipam.state.IpamState` so that one log, one replay and one
snapshot carry addresses and the metadata policies select them by; an address released
takes its endpoint metadata with it. What agents compile from it is :mod:`romana.policy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from romana.ipam.facts import EndpointLabeled, PodRef, PolicyAdded, PolicyRemoved, TenantLabeled


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    key: str
    policy: dict[str, Any]  # romana.policy.model.Policy as JSON
    source: dict[str, Any]  # as given: a Romana policy or a Kubernetes NetworkPolicy


@dataclass
class PolicyBook:
    endpoints: dict[str, EndpointLabeled] = field(default_factory=dict)  # by address name
    tenants: dict[str, dict[str, str]] = field(default_factory=dict)
    policies: dict[str, StoredPolicy] = field(default_factory=dict)

    def endpoint_labeled(self, fact: EndpointLabeled) -> None:
        if fact.labels or fact.ports or fact.pod is not None:
            self.endpoints[fact.name] = fact
        else:
            self.endpoints.pop(fact.name, None)

    def tenant_labeled(self, fact: TenantLabeled) -> None:
        if fact.labels:
            self.tenants[fact.tenant] = dict(fact.labels)
        else:
            self.tenants.pop(fact.tenant, None)

    def policy_added(self, fact: PolicyAdded) -> None:
        self.policies[fact.key] = StoredPolicy(fact.key, fact.policy, fact.source)

    def policy_removed(self, fact: PolicyRemoved) -> None:
        del self.policies[fact.key]

    def address_released(self, name: str) -> None:
        self.endpoints.pop(name, None)

    def snapshot(self) -> dict[str, Any]:
        return {
            "tenants": dict(sorted(self.tenants.items())),
            "endpoints": [_endpoint_row(e) for _, e in sorted(self.endpoints.items())],
            "policies": [
                {"key": p.key, "policy": p.policy, "source": p.source}
                for p in self.policies.values()
            ],
        }


def _endpoint_row(e: EndpointLabeled) -> list[Any]:
    """``[name, labels, ports]``, and the pod fourth when known (snapshot version 4)."""
    row: list[Any] = [e.name, e.labels, e.ports]
    if e.pod is not None:
        row.append(e.pod.to_json())
    return row


def facts_of(snapshot: dict[str, Any]) -> list[Any]:
    """The facts that rebuild a book from :meth:`PolicyBook.snapshot` (after addresses)."""
    facts: list[Any] = [TenantLabeled(t, dict(v)) for t, v in snapshot.get("tenants", {}).items()]
    for name, labels, ports, *pod in snapshot.get("endpoints", ()):
        ref = PodRef.from_json(pod[0]) if pod else None
        facts.append(EndpointLabeled(name, dict(labels), list(ports), ref))
    facts += [PolicyAdded(p["key"], p["policy"], p["source"]) for p in snapshot.get("policies", ())]
    return facts
