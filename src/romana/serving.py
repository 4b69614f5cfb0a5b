"""What every long-running romana process shares: JSON logs, listening sockets, and the
small HTTP server of the processes that are not web apps (``/healthz`` and ``/metrics``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

# ``/healthz``: whether the process is healthy, and the JSON body that says why.
HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: easy to grep by eye, easy to ship to a log pipeline."""

    _skip = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
        "message",
        "color_message",
    }

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


def setup_logging(level: str) -> None:
    from romana.logflood import FloodFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(FloodFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for chatty in ("httpx", "httpx2"):  # a line per request: only with --log-level debug
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))


def bind(listen: str, mode: int = 0o660) -> socket.socket:
    """A listening socket for ``HOST:PORT`` or ``unix:/path`` (raises ValueError/OSError).

    A Unix socket is reachable from every network namespace of the machine, which is how
    processes inside a host's namespace (agent, CNI plugin) reach a local daemon.
    """
    if listen.startswith("unix:"):
        path = Path(listen.removeprefix("unix:"))
        if path.is_socket() and not _in_use(path):
            path.unlink()  # left over by a process that died; a live one keeps its socket
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, mode)
        except OSError:
            sock.close()
            raise
    else:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT (port 0-65535) or unix:/path, not {listen!r}")
        # proto=IPPROTO_TCP matters: asyncio disables Nagle only on sockets that say so,
        # and without TCP_NODELAY every small response waits ~40 ms for a delayed ACK.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((host.strip("[]"), int(port)))
        except OSError:
            sock.close()
            raise
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def unlink_unix(listen: str) -> None:
    if listen.startswith("unix:"):
        with contextlib.suppress(OSError):
            Path(listen.removeprefix("unix:")).unlink()


def read_token_file(program: str, path: Path | None) -> str | None:
    """The bearer token in ``path`` (None without one); exits with a clear message if the
    file cannot be read or is empty: a daemon must not start half-authenticated."""
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        sys.exit(f"{program}: cannot read token file {path}: {exc.strerror}")
    if not token:
        sys.exit(f"{program}: token file {path} is empty")
    return token


def serve(
    app: Any,
    sockets: list[socket.socket],
    listen: list[str],
    graceful_timeout: float | None = None,
    on_stop: Callable[[], None] | None = None,
    loop: str = "auto",
    max_connections: int | None = None,
    header_timeout: float | None = None,
) -> None:
    """Run an ASGI app on already bound sockets until SIGTERM/SIGINT, then exit 0.

    uvicorn runs on its best event loop (uvloop, with httptools parsing HTTP), shuts down
    gracefully (then runs the lifespan's stop) and finally re-raises the signal to the
    previous handler: make that a normal exit. ``on_stop`` is called on the loop as soon
    as the signal arrives, before the graceful wait. Unix socket files go away. Every
    connection must send its request headers within ``header_timeout`` seconds, and at
    most ``max_connections`` are open at once (see :mod:`romana.connections`).
    """
    import uvicorn

    from romana import connections

    wanted = max_connections or connections.DEFAULT_MAX_CONNECTIONS
    head = header_timeout or connections.DEFAULT_HEADER_TIMEOUT
    http = connections.guarded_http(connections.descriptor_budget(wanted), head, 3 * head)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if on_stop is not None and not self.should_exit:
                with contextlib.suppress(RuntimeError):  # no loop yet: nothing to tell
                    import asyncio

                    asyncio.get_running_loop().call_soon_threadsafe(on_stop)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        loop=loop,
        http=http,
        timeout_graceful_shutdown=None
        if graceful_timeout is None
        else max(1, round(graceful_timeout)),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    try:
        Server(config).run(sockets=sockets)
    finally:
        for address in listen:
            unlink_unix(address)


def serve_health_in_thread(
    name: str, listen: str, registry: CollectorRegistry, health: HealthCheck
) -> ThreadingHTTPServer:
    """Serve ``/healthz`` and ``/metrics`` on ``HOST:PORT`` or ``unix:/path`` from a daemon
    thread (raises ValueError or OSError), for processes whose main loop is not a web app
    (the publisher's is synchronous, the listener's is busy with the cluster). ``name`` is
    the caller's logger: requests are logged at debug level to ``name.http``, from a thread
    of that name. The server only reads what ``health`` and ``registry`` return."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    sock = bind(listen)
    log = logging.getLogger(f"{name}.http")

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # seconds for a request to arrive: an idle client does not hold a thread

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                ok, body = health()
                self._answer(200 if ok else 503, "application/json", json.dumps(body).encode())
            elif path == "/metrics":
                self._answer(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            else:
                self._answer(404, "application/json", b'{"error": "not found"}')

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format % args)

    server = ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock  # bound (and listening) by the one binder of every daemon
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"{name}.http", daemon=True).start()
    return server
