"""The CNI server's Prometheus metrics, registered in the agent's registry (its /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class CniMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "romana_cni_requests_total",
            "CNI invocations served, by command and CNI result code (0: success).",
            ["command", "code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "romana_cni_request_seconds",
            "Time the agent spent on a CNI invocation.",
            ["command"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=registry,
        )
        self.teardowns = Counter(
            "romana_cni_deferred_teardowns_total",
            "Pod veths deleted after DEL answered, by outcome.",
            ["outcome"],
            registry=registry,
        )
