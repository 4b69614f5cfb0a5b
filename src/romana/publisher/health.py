"""The publisher's HTTP endpoint (``--metrics-listen``): ``/healthz`` and ``/metrics``.

The publisher's loop is synchronous, so this runs in a daemon thread on the standard
library's threading HTTP server; it only reads the publisher's state.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from romana.serving import bind

Health = Callable[[], tuple[bool, dict[str, Any]]]


def serve_in_thread(
    listen: str, registry: CollectorRegistry, health: Health
) -> ThreadingHTTPServer:
    """Start serving on ``HOST:PORT`` or ``unix:/path``; raises ValueError or OSError."""
    sock = bind(listen)

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
            logging.getLogger("romana.publisher.http").debug(format % args)

    server = ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock  # bound (and listening) by the one binder of every daemon
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="publisher-http", daemon=True).start()
    return server
