"""`romanad`: the IPAM daemon (REST API over the engine, durable in an embedded store)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from romana.api.watches import DEFAULT_LIMIT as DEFAULT_WATCH_LIMIT
from romana.buildinfo import add_version_option
from romana.serving import bind, read_token_file, serve, setup_logging
from romana.store.base import Store

DEFAULT_LISTEN = "127.0.0.1:9600"
# A node's agent keeps two long polls (routes, policies) and a publisher one, plus short
# requests: 4,096 connections and 3,000 watches serve about 1,000 nodes (docs/romanad.md).
MAX_CONNECTIONS = 4096


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/romana")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "romana"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="romanad", description=__doc__)
    parser.add_argument(
        "--listen",
        action="append",
        metavar="ADDRESS",
        help="HOST:PORT or unix:/path.sock; repeat to listen on several "
        f"(default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="where the store lives (default %(default)s)",
    )
    parser.add_argument(
        "--store",
        default="sqlite",
        metavar="sqlite|etcd://HOST:PORT[,HOST:PORT...]",
        help="sqlite (embedded, in --data-dir; the default) or an etcd cluster "
        "(etcds:// for TLS), which any number of romanad replicas may share",
    )
    parser.add_argument(
        "--etcd-prefix", default="/romana", help="key prefix in etcd (default %(default)s)"
    )
    parser.add_argument("--etcd-ca", metavar="FILE", help="CA bundle for etcds://")
    parser.add_argument(
        "--etcd-cert", nargs=2, metavar=("CERT", "KEY"), help="client certificate for etcds://"
    )
    parser.add_argument(
        "--etcd-user-file",
        type=Path,
        metavar="FILE",
        help="etcd user and password, as USER:PASSWORD on one line",
    )
    parser.add_argument(
        "--etcd-timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="wait this long for an etcd answer before trying the next member; a write "
        "with no answer is checked before anything else (default %(default)s)",
    )
    parser.add_argument(
        "--topology",
        type=Path,
        help="topology map to apply at start when the store holds none (a file, or a "
        "predefined name: kubeadm, kops-aws-us-west-1, kops-aws-us-east-1)",
    )
    parser.add_argument(
        "--token-file", type=Path, help="require 'Authorization: Bearer <token>' on every change"
    )
    parser.add_argument(
        "--auth-reads",
        action="store_true",
        help="require the token on reads too (all but /healthz, /readyz and /metrics); "
        "needs --token-file",
    )
    parser.add_argument(
        "--snapshot-every",
        type=int,
        default=50_000,
        metavar="FACTS",
        help="write a snapshot after this many facts (default %(default)s)",
    )
    parser.add_argument(
        "--keep-history",
        type=int,
        default=10_000,
        metavar="FACTS",
        help="facts kept before the newest snapshot for lagging watchers (default %(default)s)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="copy the write-ahead log into the database this often (default %(default)s)",
    )
    parser.add_argument(
        "--accept-data-loss",
        action="store_true",
        help="start on a store that is shorter than it was or another "
        "store's (refused otherwise: see docs/romanad.md)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=MAX_CONNECTIONS,
        metavar="N",
        help="open connections at most; one more is answered 503 (default %(default)s; "
        "size it to the cluster: docs/romanad.md)",
    )
    parser.add_argument(
        "--max-watches",
        type=int,
        default=DEFAULT_WATCH_LIMIT,
        metavar="N",
        help="long polls (GET /watch) waiting at once at most; one more is answered 503 "
        "with Retry-After; a quarter of --max-connections always stays for other requests "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a connection must send its request headers within this (default %(default)s)",
    )
    parser.add_argument(
        "--event-loop",
        choices=["auto", "asyncio"],
        default="auto",
        help="auto: uvloop when installed (the default, faster); asyncio: "
        "the standard loop, for comparison (benchmarks/api_bench.py)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    add_version_option(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level)
    log = logging.getLogger("romanad")
    listen = args.listen or [DEFAULT_LISTEN]
    try:
        sockets = [bind(address) for address in listen]
    except (ValueError, OSError) as exc:
        sys.exit(f"romanad: cannot listen on {listen}: {exc}")
    token = read_token_file("romanad", args.token_file)
    if args.auth_reads and token is None:
        sys.exit("romanad: --auth-reads needs --token-file (the token that reads require)")

    from romana.api.app import create_app
    from romana.api.service import IpamService
    from romana.connections import descriptor_budget, watch_budget
    from romana.errors import RevisionConflict, RomanaError
    from romana.topology import read_file

    store: Store | None = None
    try:
        store, where = open_store(args)
        service = IpamService(
            store,
            snapshot_every=max(1, args.snapshot_every),
            keep_history=max(0, args.keep_history),
            where=where,
            checkpoint_every=max(0.0, args.checkpoint_every),
        )
    except RomanaError as exc:
        if store is not None:
            store.close()
        hint = f" ({'; '.join(map(str, exc.details))})" if exc.details else ""
        sys.exit(f"romanad: {exc.message}{hint}")
    if args.accept_data_loss:
        log.warning(
            "--accept-data-loss: the store was taken as it is",
            extra={"revision": service.engine.revision, "store_id": store.store_id},
        )
    if service.engine.topology is None and args.topology is not None:
        try:
            document = read_file(args.topology)
            try:
                service.mutate_before_serving(lambda: service.engine.apply_topology(document))
            except RevisionConflict:  # a replica starting beside us wrote first
                service.reload_now()
                if service.engine.topology is None:
                    service.mutate_before_serving(lambda: service.engine.apply_topology(document))
        except RomanaError as exc:
            store.close()
            sys.exit(f"romanad: --topology {args.topology}: {exc.message}")
        log.info("topology applied from file", extra={"file": str(args.topology)})

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await service.start()
        loop = type(asyncio.get_running_loop())
        log.info(
            "serving",
            extra={
                "listen": listen,
                "data_dir": str(args.data_dir),
                "auth": token is not None,
                "auth_reads": args.auth_reads,
                "event_loop": f"{loop.__module__}.{loop.__qualname__}",
            },
        )
        yield
        await service.stop()
        log.info("stopped cleanly", extra={"revision": service.engine.revision})

    connections = descriptor_budget(max(1, args.max_connections))
    app = create_app(service, token, watch_budget(connections, max(1, args.max_watches)))
    app.router.lifespan_context = lifespan
    if args.auth_reads and token is not None:
        from romana.api.middleware import TokenForReads

        app.add_middleware(TokenForReads, token=token)
    # Watchers hold long polls open: at the stop signal they are answered at once (503,
    # "stopping"), so the graceful shutdown (bounded at 2 s) does not wait on them.
    serve(
        app,
        sockets,
        listen,
        graceful_timeout=2,
        on_stop=service.begin_stop,
        loop=args.event_loop,
        max_connections=connections,
        header_timeout=max(0.1, args.header_timeout),
    )


def open_store(args: argparse.Namespace) -> tuple[Store, str]:
    """The store ``--store`` names, and where it is (for messages)."""
    if args.store == "sqlite":
        from romana.store.sqlite import SqliteStore

        return SqliteStore(args.data_dir, accept_loss=args.accept_data_loss), str(args.data_dir)
    from romana.store.etcd import EtcdStore, parse_url
    from romana.store.etcd_client import EtcdClient

    try:
        endpoints = parse_url(args.store)
    except ValueError as exc:
        sys.exit(f"romanad: --store: {exc}")
    auth = None
    if args.etcd_user_file is not None:
        user, _, password = args.etcd_user_file.read_text().strip().partition(":")
        auth = (user, password)
    client = EtcdClient(
        endpoints,
        ca=args.etcd_ca,
        cert=tuple(args.etcd_cert) if args.etcd_cert else None,
        auth=auth,
        timeout=max(0.1, args.etcd_timeout),
    )
    return EtcdStore(client, args.etcd_prefix), f"{args.store} {args.etcd_prefix}"


if __name__ == "__main__":
    main()
