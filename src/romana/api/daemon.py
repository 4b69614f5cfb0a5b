"""`romanad`: the IPAM daemon (REST API over the engine, durable in an embedded store)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from romana.serving import bind, read_token_file, serve, setup_logging

DEFAULT_LISTEN = "127.0.0.1:9600"


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/romana")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "romana"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="romanad", description=__doc__)
    parser.add_argument("--listen", action="append", metavar="ADDRESS",
                        help="HOST:PORT or unix:/path.sock; repeat to listen on several "
                        f"(default {DEFAULT_LISTEN})")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="where the store lives (default %(default)s)")
    parser.add_argument("--topology", type=Path,
                        help="topology map to apply at start when the store holds none")
    parser.add_argument("--token-file", type=Path,
                        help="require 'Authorization: Bearer <token>' on every change")
    parser.add_argument("--snapshot-every", type=int, default=50_000, metavar="FACTS",
                        help="write a snapshot after this many facts (default %(default)s)")
    parser.add_argument("--keep-history", type=int, default=10_000, metavar="FACTS",
                        help="facts kept before the newest snapshot for lagging watchers "
                        "(default %(default)s)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
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

    from romana.api.app import create_app
    from romana.api.service import IpamService
    from romana.errors import RomanaError
    from romana.store.sqlite import SqliteStore
    from romana.topology import read_file

    try:
        store = SqliteStore(args.data_dir)
        service = IpamService(store, snapshot_every=max(1, args.snapshot_every),
                              keep_history=max(0, args.keep_history))
    except RomanaError as exc:
        sys.exit(f"romanad: {exc.message}")
    if service.engine.topology is None and args.topology is not None:
        try:
            document = read_file(args.topology)
            service.run_now(lambda: service.engine.apply_topology(document))
        except RomanaError as exc:
            store.close()
            sys.exit(f"romanad: --topology {args.topology}: {exc.message}")
        log.info("topology applied from file", extra={"file": str(args.topology)})

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await service.start()
        log.info("serving", extra={"listen": listen, "data_dir": str(args.data_dir),
                                   "auth": token is not None})
        yield
        await service.stop()
        log.info("stopped cleanly", extra={"revision": service.engine.revision})

    app = create_app(service, token)
    app.router.lifespan_context = lifespan
    # Watchers hold long polls open; without a bound, shutdown would wait for each to time
    # out. After 2 s they are cut (they reconnect to the next romanad) and the store closes.
    serve(app, sockets, listen, graceful_timeout=2)

if __name__ == "__main__":
    main()
