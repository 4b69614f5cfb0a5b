"""A real romanad process for tests: started on a free loopback port, stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROMANAD = Path(sys.executable).parent / "romanad"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """On a free loopback port, or on the unix socket ``socket`` only (reachable from here
    even when it runs inside the network namespace ``netns``)."""

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        port: int | None = None,
        socket: Path | None = None,
        netns: str = "",
    ) -> None:
        self.data_dir = data_dir
        self.extra = extra
        self.socket, self.netns = socket, netns
        self.port = 0 if socket else port or free_port()
        self.url = f"unix:{socket}" if socket else f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        name = socket.stem if socket else f"romanad-{self.port}"
        self.log = data_dir.parent / f"{name}.log"

    def start(self, timeout: float = 60.0) -> Daemon:
        """Returns once it answers /healthz (on a loaded machine a start can take many
        seconds; only a romanad that never comes up waits out ``timeout``)."""
        log = self.log.open("ab")
        where = ["ip", "netns", "exec", self.netns] if self.netns else []
        if self.socket:
            self.socket.unlink(missing_ok=True)
        listen = self.url if self.socket else f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                *where,
                str(ROMANAD),
                "--listen",
                listen,
                "--data-dir",
                str(self.data_dir),
                *self.extra,
            ],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"romanad exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                )
            try:
                with self.client() as c:
                    if c.get("/healthz", timeout=1).status_code == 200:
                        return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"romanad did not become healthy: {self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Stop by PID; returns the exit code (SIGKILL after ``timeout``)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def client(self, **kw: object) -> httpx.Client:
        if self.socket:
            transport = httpx.HTTPTransport(uds=str(self.socket))
            return httpx.Client(transport=transport, base_url="http://romanad", timeout=15, **kw)  # type: ignore[arg-type]
        return httpx.Client(base_url=self.url, timeout=10, **kw)  # type: ignore[arg-type]


@contextmanager
def running(data_dir: Path, *extra: str) -> Iterator[Daemon]:
    daemon = Daemon(data_dir, *extra).start()
    try:
        yield daemon
    finally:
        daemon.stop()
