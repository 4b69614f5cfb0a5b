"""romana-publisher: announces a host's address blocks (or configures a group's router)
through BIRD, following romanad's changes feed.

One process per BIRD. ``--host NAME`` renders the host's configuration (its blocks as
``networks``); ``--router GROUP`` renders the configuration of a group's router (a BGP
neighbour per host with prefix-group import filters; ``--strict`` keeps per-host block
filters current). Either way: a full read at start, then the feed; a re-render only when
the rendered inputs or the template changed; the last good configuration stays in place
on any error (template, BIRD parse, reload), and romanad being away is waited out with
backoff, never a crash.

The publisher needs no network namespace of its own: it writes a file and talks to
BIRD's control socket, a Unix socket reachable from anywhere on the machine.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from romana.api.client import DEFAULT_URL, RomanaClient
from romana.errors import BirdError, NotFound, RomanaError, RouterError, TemplateError
from romana.publisher import source, templates
from romana.publisher.announce import Policy, announced
from romana.publisher.bird import BirdConfig
from romana.publisher.router import PeerSpec, missing_as, pattern, router_data
from romana.serving import read_token_file

log = logging.getLogger("romana.publisher")

BACKOFF_MAX = 15.0


class Metrics:
    """The publisher's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.renders = Counter("romana_publisher_renders_total",
                               "Configurations rendered from the template", registry=r)
        self.reloads = Counter("romana_publisher_reloads_total",
                               "Configurations installed and accepted by BIRD", registry=r)
        self.failures = Counter("romana_publisher_failures_total",
                                "Failures by stage: template, validate, write, reload, romanad, "
                                "internal",
                                ["stage"], registry=r)
        self.last_good = Gauge("romana_publisher_last_good_timestamp_seconds",
                               "When BIRD last accepted a configuration from us", registry=r)
        self.stale = Gauge("romana_publisher_config_stale",
                           "1 while BIRD runs an older configuration than the current inputs "
                           "call for (a failure is being waited out)", registry=r)
        self.prefixes = Gauge("romana_publisher_prefixes",
                              "Prefixes announced (host) or accepted from peers (router)",
                              registry=r)
        self.peers = Gauge("romana_publisher_peers", "BGP peers configured (router)",
                           registry=r)
        self.revision = Gauge("romana_publisher_revision",
                              "Last romanad revision seen on the changes feed", registry=r)
        for stage in ("template", "validate", "write", "reload", "romanad", "internal"):
            self.failures.labels(stage)


@dataclass
class Options:
    """What to publish and where: the command line, or the CLI's one-shot equivalent."""

    host: str | None
    router: str | None
    url: str
    token: str | None
    template: Path | None
    output: Path
    bird_socket: str | None
    bird: str = "bird"
    subnet: str | None = None
    local_as: int | None = None
    neighbor_ip: str | None = None
    neighbor_as: int | None = None
    router_id: str | None = None
    peer_as: int | None = None
    peers: dict[str, PeerSpec] = field(default_factory=dict)
    strict: bool = False
    announce: Policy = Policy.BLOCKS
    args: dict[str, str] = field(default_factory=dict)
    poll: float = 10.0
    once: bool = False


def common_variables(opts: Options) -> dict[str, Any]:
    """Variables set only when given: a template using an unset one fails to render."""
    out: dict[str, Any] = {"args": dict(opts.args)}
    for key in ("local_as", "neighbor_ip", "neighbor_as", "router_id"):
        value = getattr(opts, key)
        if value is not None:
            out[key] = value
    return out


def host_variables(opts: Options, inputs: source.HostInputs) -> dict[str, Any]:
    networks = announced(inputs.placements, inputs.local, inputs.group_sizes, opts.announce)
    groups = {net: {"group": p.group, "cidr": p.cidr} for net, p in inputs.placements.items()}
    first = next(iter(inputs.placements.values()), None)
    return {
        **common_variables(opts),
        "networks": networks,
        "host": {"name": inputs.name, "ip": inputs.ip, "labels": dict(inputs.labels)},
        "host_name": inputs.name,
        "host_ip": inputs.ip,
        "groups": groups,
        "group": first.group if first else None,
        "group_cidrs": sorted({p.cidr for p in inputs.placements.values()}),
        "policy": str(opts.announce),
        "router_id": opts.router_id or inputs.ip,
    }


def router_variables(opts: Options, inputs: source.RouterInputs) -> dict[str, Any]:
    data = router_data(inputs.group, inputs.hosts, inputs.routes, strict=opts.strict,
                       peers=opts.peers, peer_as=opts.peer_as)
    return {**common_variables(opts), "group": data.group, "cidrs": list(data.cidrs),
            "cidr_patterns": [pattern(c) for c in data.cidrs], "leaf": data.leaf,
            "strict": data.strict, "peers": list(data.peers),
            "unpeered": list(data.unpeered), "missing_as": missing_as(data)}


def detect_subnet(ip: str) -> str | None:
    """The subnet of the interface holding ``ip`` in this network namespace, if any."""
    try:
        out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True,
                             text=True, timeout=5).stdout
        links = json.loads(out or "[]")
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    for link in links:
        for addr in link.get("addr_info", []):
            if addr.get("local") == ip:
                net = ipaddress.IPv4Network(f"{ip}/{addr.get('prefixlen', 32)}", strict=False)
                return str(net) if net.prefixlen < 32 else None
    return None


class Publisher:
    """The loop: read, render when inputs changed, apply safely, follow the feed."""

    def __init__(self, opts: Options, client: RomanaClient, bird: BirdConfig,
                 metrics: Metrics, builtin: templates.Source | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
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

    # -- romanad ----------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read everything the configuration depends on."""
        since = source.start_revision(self.client)
        if self.opts.router is not None:
            self.router_inputs = source.read_router(self.client, self.opts.router,
                                                    self.opts.strict)
        else:
            assert self.opts.host is not None
            try:
                self.host_inputs = source.read_host(self.client, self.opts.host,
                                                    self.opts.announce is Policy.GROUP)
            except NotFound:
                if self.host_inputs is None:
                    raise  # never registered yet: wait for it (logged, with backoff)
                # Removed from romanad: its blocks are freed and may go to other hosts.
                log.warning("host no longer registered in romanad: announcing nothing",
                            extra={"host": self.opts.host})
                self.host_inputs = replace(self.host_inputs, placements={}, local=(),
                                           group_sizes={})
            if self.subnet is None and not self._detected:
                self.subnet = detect_subnet(self.host_inputs.ip)
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
        if int(answer["revision"]) < self.since:
            log.warning("romanad's revision went backwards (a new store?): re-reading",
                        extra={"had": self.since, "now": answer["revision"]})
            self.since = None
            return
        relevant = [c for c in answer["changes"] if self.cares(c)]
        if relevant:
            log.info("relevant changes", extra={"kinds": sorted({c["kind"] for c in relevant}),
                                                "revision": answer["revision"]})
            self.refresh()
        self.since = max(self.since, int(answer["revision"]))
        self.metrics.revision.set(self.since)

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

    def template(self) -> templates.Source:
        if self.opts.template is None:
            assert self.builtin is not None
            return self.builtin
        ip = self.host_inputs.ip if self.host_inputs else None
        return templates.Source.read(templates.find(self.opts.template, ip, self.subnet))

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
            log.info("configuration applied", extra={
                "template": str(template.path), "output": str(self.bird.output),
                **self._summary(variables)})
        return True

    def _failed(self, stage: str, message: str, key: object, retry: bool = False) -> bool:
        """Count and log a failure once per distinct input (retries count each time)."""
        repeated = key == self._last and not self.healthy and not retry
        self._last = key
        self.healthy = False
        self.metrics.stale.set(1)
        if not repeated:
            self.metrics.failures.labels(stage).inc()
            log.error("keeping the last good configuration", extra={
                "stage": stage, "error": message, "retry": retry})
        return False

    @staticmethod
    def _summary(variables: Mapping[str, Any]) -> dict[str, Any]:
        if "networks" in variables:
            return {"networks": variables["networks"]}
        return {"peers": [p.name for p in variables["peers"]],
                "unpeered": variables["unpeered"]}

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> int:
        backoff = 0.5
        while True:
            try:
                if self.since is None:
                    self.refresh()
                ok = self.publish()
                if self.opts.once:
                    return 0 if ok else 1
                self.follow()
                backoff = 0.5
            except RomanaError as exc:
                code = getattr(exc, "code", "")
                if code == "resync":
                    log.warning("changes feed compacted past our revision: re-reading")
                    self.since = None
                    continue
                self.metrics.failures.labels("romanad").inc()
                log.error("romanad: %s", getattr(exc, "message", str(exc)),
                          extra={"retry_in": backoff})
                if self.opts.once:
                    return 1
                self.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception:  # a surprise (a malformed answer, a bug): log, wait, go on
                self.metrics.failures.labels("internal").inc()
                log.exception("unexpected error", extra={"retry_in": backoff})
                if self.opts.once:
                    return 1
                self.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)


def builtin_router_template() -> templates.Source:
    from romana.publisher.defaults import ROUTER_BGP

    return templates.Source(Path("<built-in router-bgp.conf.j2>"), ROUTER_BGP)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="romana-publisher", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    who = p.add_mutually_exclusive_group()
    who.add_argument("--host", help="publish this host's blocks (default: the hostname)")
    who.add_argument("--router", metavar="GROUP",
                     help="configure the router of this group path instead (e.g. rack-1)")
    p.add_argument("--url", default=os.environ.get("ROMANA_URL", DEFAULT_URL),
                   help="romanad (http://HOST:PORT or unix:/path.sock; $ROMANA_URL)")
    p.add_argument("--token-file", type=Path, help="romanad bearer token ($ROMANA_TOKEN)")
    p.add_argument("--template", type=Path, help="Jinja2 template; best match of "
                   "TEMPLATE.<host-ip>, TEMPLATE.<subnet-address>, TEMPLATE "
                   "(router mode: the built-in BGP router template when omitted)")
    p.add_argument("--output", type=Path, required=True,
                   help="the BIRD configuration file (the one BIRD was started with -c)")
    p.add_argument("--bird-socket", help="BIRD control socket to reload through "
                   "(omitted: only write the file)")
    p.add_argument("--bird", default="bird", help="bird binary for `bird -p` validation")
    p.add_argument("--subnet", help="the host's subnet for template lookup "
                   "(default: from the interface holding the host's IP, if any)")
    p.add_argument("--local-as", type=int)
    p.add_argument("--neighbor-ip", help="host: the ToR; router: the parent group's router")
    p.add_argument("--neighbor-as", type=int)
    p.add_argument("--router-id", help="BIRD router id (host mode default: the host IP)")
    p.add_argument("--peer-as", type=int, help="router: AS of peers not given one by --peer")
    p.add_argument("--peer", action="append", default=[], metavar="NAME=IP[@AS]",
                   help="router: a child group's router address, or a host's override")
    p.add_argument("--strict", action="store_true",
                   help="router: accept from each host only its own blocks")
    p.add_argument("--announce", choices=[x.value for x in Policy], default="blocks",
                   help="host: own blocks collapsed (default), or the whole leaf-group "
                   "prefix while the host is alone in its group")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="free template variables, as args.KEY")
    p.add_argument("--poll-interval", type=float, default=10.0, metavar="S",
                   help="long-poll timeout; also how often a template edit is noticed")
    p.add_argument("--once", action="store_true", help="render and apply once, then exit")
    p.add_argument("--metrics-listen", metavar="HOST:PORT", help="serve Prometheus metrics")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    return p.parse_args(argv)


def options(ns: argparse.Namespace) -> Options:
    token = (read_token_file("romana-publisher", ns.token_file)
             or os.environ.get("ROMANA_TOKEN") or None)
    args: dict[str, str] = {}
    for item in ns.arg:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"romana-publisher: --arg {item!r}: expected KEY=VALUE")
        args[key] = value
    try:
        peers = dict(PeerSpec.parse(p) for p in ns.peer)
    except RouterError as exc:
        raise SystemExit(f"romana-publisher: {exc}") from exc
    if ns.router is None and ns.template is None:
        raise SystemExit("romana-publisher: --template is required in host mode")
    return Options(
        host=None if ns.router else (ns.host or socket.gethostname()), router=ns.router,
        url=ns.url, token=token, template=ns.template, output=ns.output.absolute(),
        bird_socket=ns.bird_socket, bird=ns.bird, subnet=ns.subnet, local_as=ns.local_as,
        neighbor_ip=ns.neighbor_ip, neighbor_as=ns.neighbor_as, router_id=ns.router_id,
        peer_as=ns.peer_as, peers=peers, strict=ns.strict, announce=Policy(ns.announce),
        args=args, poll=ns.poll_interval, once=ns.once)


def main(argv: list[str] | None = None) -> None:
    ns = parse_args(argv)
    from romana.serving import setup_logging

    setup_logging(ns.log_level)
    if ns.log_level != "debug":  # one line per HTTP request is noise at info level
        logging.getLogger("httpx").setLevel(logging.WARNING)
    opts = options(ns)
    metrics = Metrics()
    if ns.metrics_listen:
        host, _, port = ns.metrics_listen.rpartition(":")
        try:
            start_http_server(int(port), addr=host or "0.0.0.0", registry=metrics.registry)
        except (ValueError, OSError) as exc:
            raise SystemExit(f"romana-publisher: --metrics-listen {ns.metrics_listen}: {exc}"
                             ) from exc
    builtin = builtin_router_template()

    def stop(signum: int, _: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        sys.exit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    log.info("starting", extra={"mode": "router" if opts.router else "host",
                                "who": opts.router or opts.host, "url": opts.url,
                                "output": str(opts.output), "socket": opts.bird_socket})
    with RomanaClient(opts.url, opts.token) as client:
        publisher = Publisher(opts, client, BirdConfig(opts.output, opts.bird_socket,
                                                       opts.bird), metrics, builtin)
        sys.exit(publisher.run())


if __name__ == "__main__":
    main()
