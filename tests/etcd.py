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
    """One member; on loopback, or inside ``netns`` at ``host`` (a partition test cuts
    its link there)."""

    def __init__(
        self,
        name: str,
        cluster: str,
        token: str,
        root: Path,
        host: str = "127.0.0.1",
        netns: str | None = None,
    ) -> None:
        self.name = name
        self.host, self.netns = host, netns
        self.client_port, self.peer_port = (2379, 2380) if netns else (free_port(), free_port())
        self.data_dir = root / name
        self.log = root / f"{name}.log"
        self.cluster, self.token = cluster, token
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer(self) -> str:
        return f"{self.name}=http://{self.host}:{self.peer_port}"

    def start(self, state: str = "new") -> None:
        where = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.proc = subprocess.Popen(
            [
                *where,
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
                f"http://{self.host}:{self.peer_port}",
                "--initial-advertise-peer-urls",
                f"http://{self.host}:{self.peer_port}",
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
        if self.netns:  # not reachable from here: ask from inside its namespace
            check = ["ip", "netns", "exec", self.netns, "etcdctl", "--endpoints", self.url]
            done = subprocess.run(
                [*check, "--command-timeout=1s", "endpoint", "health"],
                capture_output=True,
                env={**os.environ, "ETCDCTL_API": "3"},
                check=False,
            )
            return done.returncode == 0
        try:
            return httpx.get(f"{self.url}/health", timeout=1).json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    def is_leader(self) -> bool:
        """Whether this member leads (asked over the JSON gateway; loopback members)."""
        try:
            status = httpx.post(f"{self.url}/v3/maintenance/status", json={}, timeout=1).json()
        except (httpx.HTTPError, ValueError):
            return False
        return bool(status.get("leader")) and status.get("leader") == status["header"].get(
            "member_id"
        )


@contextmanager
def etcd_cluster(
    size: int = 1, placed: list[tuple[str, str]] | None = None
) -> Iterator[list[EtcdMember]]:
    """``size`` members on loopback, or one per (host IP, namespace) in ``placed``."""
    root = Path(tempfile.mkdtemp(prefix="romana-etcd-", dir="/dev/shm"))
    token = root.name
    where = placed or [("127.0.0.1", "")] * size
    members = [
        EtcdMember(f"n{i + 1}", "", token, root, host, ns or None)
        for i, (host, ns) in enumerate(where)
    ]
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
