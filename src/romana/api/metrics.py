"""Prometheus metrics of romanad; IPAM gauges are computed at scrape time from the engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from romana.buildinfo import register_build_info
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


class _StoreCollector(Collector):
    """The write path's counters (see romana.api.service.StoreStats), read at scrape."""

    COUNTERS = (
        ("appends", "Batches appended to the store"),
        ("conflicts", "Appends lost to another replica (then undone, caught up, retried)"),
        ("undone", "Batches taken back from memory by their inverse facts"),
        ("reloads", "Times the state was rebuilt from the store"),
        ("failed", "Appends that failed or whose outcome was unknown (answered 503)"),
        ("foreign", "Facts applied from other replicas or read back after a failure"),
    )

    def __init__(self, stats: Callable[[], tuple[Any, int]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats, durable = self.stats()
        for name, text in self.COUNTERS:
            yield CounterMetricFamily(f"romana_store_{name}", text, value=getattr(stats, name))
        yield GaugeMetricFamily(
            "romana_store_behind",
            "Facts this replica has heard of in the store and not applied yet (watch lag)",
            value=max(0, stats.seen_head - durable),
        )


class _WatchCollector(Collector):
    """The long-poll budget (see romana.api.watches), read at scrape."""

    def __init__(self, watches: Callable[[], dict[str, int]]) -> None:
        self.watches = watches

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        now = self.watches()
        yield GaugeMetricFamily("romana_watches_open", "Long polls waiting", value=now["open"])
        yield GaugeMetricFamily(
            "romana_watches_limit", "Long polls served at once (--max-watches)", value=now["limit"]
        )
        yield CounterMetricFamily(
            "romana_watches_refused",
            "Watches answered 503 because --max-watches were open",
            value=now["refused"],
        )


class Metrics:
    def __init__(
        self,
        engine: Engine,
        store_stats: Callable[[], tuple[Any, int]] | None = None,
        watches: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        register_build_info(self.registry)
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
        if store_stats is not None:
            self.registry.register(_StoreCollector(store_stats))
        if watches is not None:
            self.registry.register(_WatchCollector(watches))

    def observe(self, method: str, route: str, seconds: float) -> None:
        self.latency.labels(method, route).observe(seconds)
