"""Prometheus metrics of romanad; IPAM gauges are computed at scrape time from the engine."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from romana.ipam import Engine


class _IpamCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        blocks = GaugeMetricFamily(
            "romana_blocks_in_use", "Blocks assigned to hosts", labels=["network", "group"]
        )
        free = GaugeMetricFamily(
            "romana_free_addresses",
            "Addresses neither allocated nor blacked out",
            labels=["network", "group"],
        )
        allocated = GaugeMetricFamily(
            "romana_allocated_addresses", "Allocated addresses", labels=["network", "group"]
        )
        if self.engine.topology is not None:
            for network, group, usage in self.engine.group_usage():
                blocks.add_metric([network, group], usage.blocks)
                free.add_metric([network, group], usage.free)
                allocated.add_metric([network, group], usage.allocated)
        yield from (blocks, free, allocated)


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.allocations = Counter(
            "romana_allocations", "Addresses allocated", registry=self.registry
        )
        self.releases = Counter("romana_releases", "Addresses released", registry=self.registry)
        self.latency = Histogram(
            "romana_request_seconds",
            "API request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5),
        )
        self.registry.register(_IpamCollector(engine))

    def observe(self, method: str, route: str, seconds: float) -> None:
        self.latency.labels(method, route).observe(seconds)
