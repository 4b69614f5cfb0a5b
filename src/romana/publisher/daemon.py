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
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

from romana.api.client import DEFAULT_URL, RomanaClient
from romana.buildinfo import add_version_option
from romana.errors import RouterError
from romana.publisher import templates
from romana.publisher.announce import Policy
from romana.publisher.bird import BirdConfig
from romana.publisher.loop import Metrics, Publisher
from romana.publisher.options import Options
from romana.publisher.router import PeerSpec
from romana.serving import read_token_file, serve_health_in_thread

log = logging.getLogger("romana.publisher")


def builtin_router_template() -> templates.TemplateFile:
    from romana.publisher.defaults import ROUTER_BGP

    return templates.TemplateFile(Path("<built-in router-bgp.conf.j2>"), ROUTER_BGP)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="romana-publisher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    who = p.add_mutually_exclusive_group()
    who.add_argument("--host", help="publish this host's blocks (default: the hostname)")
    who.add_argument(
        "--router",
        metavar="GROUP",
        help="configure the router of this group path instead (e.g. rack-1)",
    )
    p.add_argument(
        "--url",
        default=os.environ.get("ROMANA_URL", DEFAULT_URL),
        help="romanad (http://HOST:PORT or unix:/path.sock; $ROMANA_URL)",
    )
    p.add_argument("--token-file", type=Path, help="romanad bearer token ($ROMANA_TOKEN)")
    p.add_argument(
        "--template",
        type=Path,
        help="Jinja2 template; best match of "
        "TEMPLATE.<host-ip>, TEMPLATE.<subnet-address>, TEMPLATE "
        "(router mode: the built-in BGP router template when omitted)",
    )
    p.add_argument(
        "--output",
        type=Path,
        required=True,
        help="the BIRD configuration file (the one BIRD was started with -c)",
    )
    p.add_argument(
        "--bird-socket", help="BIRD control socket to reload through (omitted: only write the file)"
    )
    p.add_argument("--bird", default="bird", help="bird binary for `bird -p` validation")
    p.add_argument(
        "--subnet",
        help="the host's subnet for template lookup "
        "(default: from the interface holding the host's IP, if any)",
    )
    p.add_argument("--local-as", type=int)
    p.add_argument("--neighbor-ip", help="host: the ToR; router: the parent group's router")
    p.add_argument("--neighbor-as", type=int)
    p.add_argument("--router-id", help="BIRD router id (host mode default: the host IP)")
    p.add_argument("--peer-as", type=int, help="router: AS of peers not given one by --peer")
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="NAME=IP[@AS]",
        help="router: a child group's router address, or a host's override",
    )
    p.add_argument(
        "--strict", action="store_true", help="router: accept from each host only its own blocks"
    )
    p.add_argument(
        "--announce",
        choices=[x.value for x in Policy],
        default="blocks",
        help="host: own blocks collapsed (default), or the whole leaf-group "
        "prefix while the host is alone in its group",
    )
    p.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="free template variables, as args.KEY",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=10.0,
        metavar="S",
        help="long-poll timeout; also how often a template edit is noticed",
    )
    p.add_argument("--once", action="store_true", help="render and apply once, then exit")
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve /metrics (Prometheus) and /healthz (HOST:PORT or unix:/path)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_version_option(p)
    return p.parse_args(argv)


def options(ns: argparse.Namespace) -> Options:
    token = (
        read_token_file("romana-publisher", ns.token_file) or os.environ.get("ROMANA_TOKEN") or None
    )
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
        host=None if ns.router else (ns.host or socket.gethostname()),
        router=ns.router,
        url=ns.url,
        token=token,
        template=ns.template,
        output=ns.output.absolute(),
        bird_socket=ns.bird_socket,
        bird=ns.bird,
        subnet=ns.subnet,
        local_as=ns.local_as,
        neighbor_ip=ns.neighbor_ip,
        neighbor_as=ns.neighbor_as,
        router_id=ns.router_id,
        peer_as=ns.peer_as,
        peers=peers,
        strict=ns.strict,
        announce=Policy(ns.announce),
        args=args,
        poll=ns.poll_interval,
        once=ns.once,
    )


def main(argv: list[str] | None = None) -> None:
    ns = parse_args(argv)
    from romana.serving import setup_logging

    setup_logging(ns.log_level)
    if ns.log_level != "debug":  # one line per HTTP request is noise at info level
        logging.getLogger("httpx").setLevel(logging.WARNING)
    opts = options(ns)
    metrics = Metrics()
    builtin = builtin_router_template()

    def stop(signum: int, _: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        sys.exit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    log.info(
        "starting",
        extra={
            "mode": "router" if opts.router else "host",
            "who": opts.router or opts.host,
            "url": opts.url,
            "output": str(opts.output),
            "socket": opts.bird_socket,
        },
    )
    with RomanaClient(opts.url, opts.token) as client:
        publisher = Publisher(
            opts, client, BirdConfig(opts.output, opts.bird_socket, opts.bird), metrics, builtin
        )
        if ns.metrics_listen:
            try:
                serve_health_in_thread(
                    log.name, ns.metrics_listen, metrics.registry, publisher.health
                )
            except (ValueError, OSError) as exc:
                raise SystemExit(
                    f"romana-publisher: --metrics-listen {ns.metrics_listen}: {exc}"
                ) from exc
        sys.exit(publisher.run())


if __name__ == "__main__":
    main()
