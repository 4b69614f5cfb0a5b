"""`romanad`: the IPAM daemon (REST API over the engine, durable in an embedded store)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:9600"


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/romana")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "romana"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: easy to grep by eye, easy to ship to a log pipeline."""

    _skip = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message",
                                                                             "color_message"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in self._skip})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="romanad", description=__doc__)
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT (default %(default)s)")
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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler], force=True)
    log = logging.getLogger("romanad")
    try:
        host, port = args.listen.rsplit(":", 1)
        port_number = int(port)
    except ValueError:
        sys.exit(f"romanad: --listen must be HOST:PORT, not {args.listen!r}")
    token = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            sys.exit(f"romanad: cannot read token file {args.token_file}: {exc.strerror}")
        if not token:
            sys.exit(f"romanad: token file {args.token_file} is empty")

    import uvicorn

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
        log.info("serving", extra={"listen": args.listen, "data_dir": str(args.data_dir),
                                   "auth": token is not None})
        yield
        await service.stop()
        log.info("stopped cleanly", extra={"revision": service.engine.revision})

    app = create_app(service, token)
    app.router.lifespan_context = lifespan
    config = uvicorn.Config(app, host=host, port=port_number, log_config=None,
                            access_log=False, lifespan="on")
    # uvicorn handles SIGTERM/SIGINT (graceful shutdown, then lifespan stop) and finally
    # re-raises the signal to the previous handler: make that a normal exit, status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    asyncio.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
