"""The agent's Prometheus metrics (own registry: tests may run several agents in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from romana.buildinfo import register_build_info


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        register_build_info(r)
        self.routes = Gauge(
            "romana_agent_routes_managed", "Routes the agent keeps in its table.", registry=r
        )
        self.syncs = Counter(
            "romana_agent_syncs_total", "Route syncs by reason.", ["reason"], registry=r
        )
        self.sync_seconds = Histogram(
            "romana_agent_sync_seconds",
            "Time from deciding to sync to the kernel matching.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.changes = Counter(
            "romana_agent_route_changes_total",
            "Kernel route operations applied.",
            ["op"],
            registry=r,
        )
        self.errors = Counter(
            "romana_agent_errors_total", "Failures by kind.", ["kind"], registry=r
        )
        self.romanad_up = Gauge(
            "romana_agent_romanad_up", "1 while romanad answers, 0 while it does not.", registry=r
        )
        self.revision = Gauge(
            "romana_agent_revision", "romanad revision the kernel routes reflect.", registry=r
        )
        self.last_sync = Gauge(
            "romana_agent_last_sync_timestamp_seconds",
            "Unix time of the last successful sync.",
            registry=r,
        )
