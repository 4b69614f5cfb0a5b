"""The agent's end of the plugin's Unix socket: decode a request, serve it, answer.

The wire format is the plugin's (``plugin.c``; ``romana.cni.shim`` is its reference in
Python): one request per connection, the ``CNI_*`` environment and the raw stdin in, the
exit status and stdout out. The socket is created mode 0600 (the runtime runs plugins as
root), in a directory made if missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from romana.cni.allocator import Allocator
from romana.cni.config import Mode
from romana.cni.errors import INTERNAL, INVALID_CONFIG, IO_FAILURE
from romana.cni.metrics import CniMetrics
from romana.cni.podnet import PodNetwork
from romana.cni.service import LATEST, CniService, PodDirectory, PolicyGate
from romana.cni.shim import MAGIC
from romana.serving import bind

log = logging.getLogger("romana.cni")
MAX_REQUEST = 4 << 20  # a network configuration with a large prevResult fits easily
READ_TIMEOUT = 10.0
SHUTDOWN_GRACE = 15.0  # seconds commands in flight get to finish when the agent stops


class ProtocolError(ValueError):
    """The bytes on the socket are not a shim request (another program, or a mismatch)."""


def decode(data: bytes) -> tuple[Mode, dict[str, str], bytes]:
    """(mode, CNI_* environment, stdin) of one request."""
    if not data.startswith(MAGIC):
        raise ProtocolError("not a romana CNI request (wrong protocol version?)")
    mode_raw, sep, rest = data[len(MAGIC) :].partition(b"\0")
    if not sep or mode_raw not in (b"full", b"ipam"):
        raise ProtocolError(f"unknown plugin mode {mode_raw[:20]!r}")
    env: dict[str, str] = {}
    while True:
        entry, sep, rest = rest.partition(b"\0")
        if not sep:
            raise ProtocolError("the environment block is not terminated")
        if not entry:
            break
        key, _, value = entry.partition(b"=")
        env[key.decode("ascii", "replace")] = value.decode("utf-8", "surrogateescape")
    mode: Mode = "ipam" if mode_raw == b"ipam" else "full"
    return mode, env, rest


def bind_socket(path: str) -> socket.socket:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return bind(f"unix:{path}", mode=0o600)


class CniServer:
    def __init__(self, sock: socket.socket, service: CniService) -> None:
        self.sock = sock
        self.service = service
        self._server: asyncio.Server | None = None
        self._inflight: set[asyncio.Task[Any]] = set()

    @classmethod
    def for_agent(
        cls,
        sock: socket.socket,
        host: str,
        url: str,
        token: str | None,
        protocol: int,
        registry: CollectorRegistry,
        request_log: str | None = None,
        gate: PolicyGate | None = None,
        pods: PodDirectory | None = None,
    ) -> CniServer:
        """What romana-agent runs: its romanad, its host name, its route protocol, and its
        policy loop (``gate``)."""
        service = CniService(
            PodNetwork(protocol),
            Allocator(url, token),
            host,
            CniMetrics(registry),
            request_log=request_log,
            gate=gate,
            pods=pods,
        )
        return cls(sock, service)

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, sock=self.sock)

    async def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting, let commands in flight finish (and answer), then stop."""
        if self._server is not None:
            self._server.close()
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=grace)
        await self.service.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a connection callback always runs in its own task
        self._inflight.add(task)
        try:
            try:
                data = await asyncio.wait_for(_read_all(reader), READ_TIMEOUT)
                mode, env, stdin = decode(data)
            except RequestTooLarge as exc:
                status, out = _error_reply(INVALID_CONFIG, str(exc), "a CNI request is small")
            except ProtocolError as exc:
                status, out = _error_reply(
                    IO_FAILURE,
                    str(exc),
                    "reinstall the plugin from the agent's version (romana-cni install)",
                )
            else:
                try:
                    status, out = await self.service.handle(mode, env, stdin)
                except Exception as exc:  # handle() answers every error; this is a bug
                    log.exception("CNI request failed unexpectedly")
                    status, out = _error_reply(
                        INTERNAL,
                        f"romana-agent failed: {type(exc).__name__}: {exc}",
                        "see romana-agent's log",
                    )
            writer.write(b"%d\n" % status + out)
            await writer.drain()
        except (TimeoutError, ConnectionError, ProtocolError) as exc:
            log.warning("CNI connection dropped", extra={"error": str(exc) or type(exc).__name__})
        finally:
            self._inflight.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class RequestTooLarge(ProtocolError):
    pass


def _error_reply(code: int, msg: str, details: str) -> tuple[int, bytes]:
    error = {"cniVersion": LATEST, "code": code, "msg": msg, "details": details}
    return 1, json.dumps(error).encode() + b"\n"


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    chunks, size = [], 0
    while chunk := await reader.read(1 << 16):
        size += len(chunk)
        if size > MAX_REQUEST:
            raise RequestTooLarge(f"request larger than {MAX_REQUEST} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


__all__ = ["CniServer", "ProtocolError", "bind_socket", "decode"]
