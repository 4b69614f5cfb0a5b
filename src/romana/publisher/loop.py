"""The publisher's loop: read romanad, render when the inputs changed, apply safely, follow
the changes feed; the last good configuration stays in place on any error.

The loop refuses a feed that went back in time or comes from another store (a romanad
restored from an older backup, or started on a fresh data directory): the configuration
BIRD runs stays as it is and ``/healthz`` says ``feed: rewound`` until the publisher is
restarted (which accepts the store it then finds).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from romana.api.client import RomanaClient
from romana.backoff import Backoff
from romana.buildinfo import register_build_info
from romana.errors import BirdError, FeedRewound, NotFound, Resync, RomanaError, TemplateError
from romana.feed import FeedGuard
from romana.publisher import source, templates
from romana.publisher.announce import Policy
from romana.publisher.bird import BirdConfig
from romana.publisher.options import Options
from romana.publisher.variables import host_variables, router_variables
from romana.supervise import Loop

log = logging.getLogger("romana.publisher")

BACKOFF_MAX = 15.0


class Metrics:
    """The publisher's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        register_build_info(r)
        self.renders = Counter(
            "romana_publisher_renders_total",
            "Configurations rendered from the template",
            registry=r,
        )
        self.reloads = Counter(
            "romana_publisher_reloads_total",
            "Configurations installed and accepted by BIRD",
            registry=r,
        )
        self.failures = Counter(
            "romana_publisher_failures_total",
            "Failures by stage: template, validate, write, reload, romanad, internal",
            ["stage"],
            registry=r,
        )
        self.last_good = Gauge(
            "romana_publisher_last_good_timestamp_seconds",
            "When BIRD last accepted a configuration from us",
            registry=r,
        )
        self.stale = Gauge(
            "romana_publisher_config_stale",
            "1 while BIRD runs an older configuration than the current inputs "
            "call for (a failure is being waited out)",
            registry=r,
        )
        self.prefixes = Gauge(
            "romana_publisher_prefixes",
            "Prefixes announced (host) or accepted from peers (router)",
            registry=r,
        )
        self.peers = Gauge("romana_publisher_peers", "BGP peers configured (router)", registry=r)
        self.revision = Gauge(
            "romana_publisher_revision",
            "Last romanad revision seen on the changes feed",
            registry=r,
        )
        self.rewound = Gauge(
            "romana_publisher_feed_rewound",
            "1 while romanad's feed went back in time or changed store "
            "(not followed; the last good configuration stays)",
            registry=r,
        )
        self.restarts = Counter(
            "romana_publisher_loop_restarts_total",
            "Times the loop was restarted after an unexpected error",
            registry=r,
        )
        for stage in ("template", "validate", "write", "reload", "romanad", "internal"):
            self.failures.labels(stage)


class Publisher:
    """The loop: read, render when inputs changed, apply safely, follow the feed."""

    def __init__(
        self,
        opts: Options,
        client: RomanaClient,
        bird: BirdConfig,
        metrics: Metrics,
        builtin: templates.TemplateFile | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.opts = opts
        self.client = client
        self.bird = bird
        self.metrics = metrics
        self.builtin = builtin
        self.sleep = sleep
        self.host_inputs: source.HostInputs | None = None
        self.router_inputs: source.RouterInputs | None = None
        self.since: int | None = None
        self.subnet = opts.subnet
        self._detected = False  # looked for the host's subnet on local interfaces
        self._last: object = None  # (template, variables) last rendered
        self.healthy = True
        self.feed = FeedGuard(log, "this publisher")
        # Stuck: no round of the loop for several long polls (each lasts ``poll`` seconds).
        self.loop = Loop("publish", restart=True, stuck_after=max(60.0, 4 * opts.poll))

    # -- romanad ----------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read everything the configuration depends on."""
        store_id, since = source.start_revision(self.client)
        self._check_feed(store_id, since)
        if self.opts.router is not None:
            self.router_inputs = source.read_router(self.client, self.opts.router, self.opts.strict)
        else:
            assert self.opts.host is not None
            try:
                self.host_inputs = source.read_host(
                    self.client, self.opts.host, self.opts.announce is Policy.GROUP
                )
            except NotFound:
                if self.host_inputs is None:
                    raise  # never registered yet: wait for it (logged, with backoff)
                # Removed from romanad: its blocks are freed and may go to other hosts.
                log.warning(
                    "host no longer registered in romanad: announcing nothing",
                    extra={"host": self.opts.host},
                )
                self.host_inputs = replace(
                    self.host_inputs, placements={}, local=(), group_sizes={}
                )
            if self.subnet is None and not self._detected:
                self.subnet = templates.detect_subnet(self.host_inputs.ip)
                self._detected = True
        if self.since is None or since > self.since:
            self.since = since

    def cares(self, change: Mapping[str, Any]) -> bool:
        if self.router_inputs is not None:
            return source.router_cares(change, self.router_inputs, self.opts.strict)
        assert self.host_inputs is not None
        return source.host_cares(change, self.host_inputs, self.opts.announce is Policy.GROUP)

    def follow(self) -> None:
        """One long poll of the changes feed; a re-read if any change matters."""
        assert self.since is not None
        answer = self.client.watch(self.since, timeout=self.opts.poll)
        self._check_feed(answer.get("store_id"), int(answer["revision"]), floor=self.since)
        relevant = [c for c in answer["changes"] if self.cares(c)]
        if relevant:
            log.info(
                "relevant changes",
                extra={
                    "kinds": sorted({c["kind"] for c in relevant}),
                    "revision": answer["revision"],
                },
            )
            self.refresh()
        self.since = max(self.since, int(answer["revision"]))
        self.metrics.revision.set(self.since)

    def _check_feed(self, store_id: str | None, revision: int, floor: int | None = None) -> None:
        try:
            self.feed.check(store_id, revision, floor)
        except FeedRewound:
            self.metrics.rewound.set(1)
            raise
        self.metrics.rewound.set(0)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(alive, what ``/healthz`` shows): 503 only for a failing or stuck loop; romanad
        away, a refused configuration or a rewound feed are reported, not fatal."""
        ok = self.loop.state == "running" and not self.loop.stuck
        return ok, {
            "status": "ok" if ok else "degraded",
            "mode": "router" if self.opts.router else "host",
            "who": self.opts.router or self.opts.host,
            "config": "current" if self.healthy else "stale",
            "feed": "rewound" if self.feed.problem else "followed",
            "feed_problem": self.feed.problem,
            "store_id": self.feed.store_id,
            "revision": self.since,
            "loops": {"publish": self.loop.to_json()},
        }

    # -- rendering and BIRD -----------------------------------------------------------
    def variables(self) -> dict[str, Any]:
        if self.router_inputs is not None:
            variables = router_variables(self.opts, self.router_inputs)
            self.metrics.peers.set(len(variables["peers"]))
            self.metrics.prefixes.set(sum(len(p.prefixes) for p in variables["peers"]))
            return variables
        assert self.host_inputs is not None
        variables = host_variables(self.opts, self.host_inputs)
        self.metrics.prefixes.set(len(variables["networks"]))
        return variables

    def template(self) -> templates.TemplateFile:
        if self.opts.template is None:
            assert self.builtin is not None
            return self.builtin
        ip = self.host_inputs.ip if self.host_inputs else None
        return templates.TemplateFile.read(templates.find(self.opts.template, ip, self.subnet))

    def render_current(self) -> str:
        """Read romanad once and render (raises RomanaError, RouterError, TemplateError)."""
        self.refresh()
        return templates.render(self.template(), self.variables())

    def publish(self) -> bool:
        """Render and apply if anything changed; False while a failure is waited out."""
        variables = self.variables()
        try:
            template = self.template()
        except TemplateError as exc:
            return self._failed("template", str(exc), (str(exc), variables))
        key: object = (template, variables)
        if key == self._last and not self.bird.reload_pending:
            return self.healthy
        try:
            text = templates.render(template, variables)
        except TemplateError as exc:
            return self._failed("template", str(exc), key)
        self.metrics.renders.inc()
        try:
            changed = self.bird.apply(text)
        except BirdError as exc:
            return self._failed(exc.stage, exc.message, key, retry=exc.retry)
        self._last = key
        self.healthy = True
        self.metrics.stale.set(0)
        if changed:
            self.metrics.reloads.inc()
            self.metrics.last_good.set_to_current_time()
            log.info(
                "configuration applied",
                extra={
                    "template": str(template.path),
                    "output": str(self.bird.output),
                    **self._summary(variables),
                },
            )
        return True

    def _failed(self, stage: str, message: str, key: object, retry: bool = False) -> bool:
        """Count and log a failure once per distinct input (retries count each time)."""
        repeated = key == self._last and not self.healthy and not retry
        self._last = key
        self.healthy = False
        self.metrics.stale.set(1)
        if not repeated:
            self.metrics.failures.labels(stage).inc()
            log.error(
                "keeping the last good configuration",
                extra={"stage": stage, "error": message, "retry": retry},
            )
        return False

    @staticmethod
    def _summary(variables: Mapping[str, Any]) -> dict[str, Any]:
        if "networks" in variables:
            return {"networks": variables["networks"]}
        return {"peers": [p.name for p in variables["peers"]], "unpeered": variables["unpeered"]}

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> int:
        """Publish, then follow the feed, forever (``--once``: publish once, exit 0 or 1).

        The loop supervises itself: romanad errors are waited out with backoff; anything
        else is logged with its traceback, counted as a restart, and the loop starts over
        from a full read after a backoff, so the publisher never stops silently."""
        backoff = Backoff(0.5, BACKOFF_MAX)
        self.loop.state = "running"
        while True:
            self.loop.beat()
            try:
                if self.since is None:
                    self.refresh()
                ok = self.publish()
                if self.opts.once:
                    return 0 if ok else 1
                self.follow()
                backoff.reset()
                self.loop.state = "running"
            except Resync:
                log.warning("changes feed compacted past our revision: re-reading")
                self.since = None
            except FeedRewound:
                if self.opts.once:
                    return 1
                self.since = None  # keep what BIRD runs; look again later
                self.sleep(backoff.next())
            except RomanaError as exc:
                self.metrics.failures.labels("romanad").inc()
                delay = backoff.next()
                log.error("romanad: %s", exc.message, extra={"retry_in": round(delay, 2)})
                if self.opts.once:
                    return 1
                self.sleep(delay)
            except Exception as exc:  # a surprise (a malformed answer, a bug): start over
                self.metrics.failures.labels("internal").inc()
                self.metrics.restarts.inc()
                delay = backoff.next()
                self.loop.state, self.loop.last_error = "restarting", repr(exc)
                self.loop.restarts += 1
                log.exception(
                    "unexpected error; restarting the loop", extra={"retry_in": round(delay, 2)}
                )
                if self.opts.once:
                    return 1
                self.since = None
                self.sleep(delay)
