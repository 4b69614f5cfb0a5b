"""Real etcd processes for tests: loopback ports, data in /dev/shm, stopped by PID
(SIGKILL: SIGTERM would hand leadership over gracefully, hiding the faults tests want)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from .daemon import free_port


class EtcdMember:
    def __init__(self, name: str, cluster: str, token: str, root: Path) -> None:
        self.name = name
        self.client_port, self.peer_port = free_port(), free_port()
        self.data_dir = root / name
        self.log = root / f"{name}.log"
        self.cluster, self.token = cluster, token
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer(self) -> str:
        return f"{self.name}=http://127.0.0.1:{self.peer_port}"

    def start(self, state: str = "new") -> None:
        self.proc = subprocess.Popen(
            [
                "etcd",
                "--name",
                self.name,
                "--data-dir",
                str(self.data_dir),
                "--listen-client-urls",
                self.url,
                "--advertise-client-urls",
                self.url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{self.peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{self.peer_port}",
                "--initial-cluster",
                self.cluster,
                "--initial-cluster-token",
                self.token,
                "--initial-cluster-state",
                state,
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1).json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False


@contextmanager
def etcd_cluster(size: int = 1) -> Iterator[list[EtcdMember]]:
    root = Path(tempfile.mkdtemp(prefix="romana-etcd-", dir="/dev/shm"))
    token = root.name
    names = [f"n{i + 1}" for i in range(size)]
    members = [EtcdMember(name, "", token, root) for name in names]
    cluster = ",".join(m.peer for m in members)
    for m in members:
        m.cluster = cluster
    try:
        for m in members:
            m.start()
        deadline = time.monotonic() + 20
        while not all(m.healthy() for m in members):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "etcd did not become healthy: " + members[0].log.read_text()[-2000:]
                )
            time.sleep(0.1)
        yield members
    finally:
        for m in members:
            m.kill()
        shutil.rmtree(root, ignore_errors=True)
