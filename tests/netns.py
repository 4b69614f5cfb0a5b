"""A throwaway network lab for data-plane tests: namespaces, veths, bridges, processes.

Everything a :class:`Lab` creates is removed when it closes, even when the test failed:
processes are stopped by PID (SIGTERM, then SIGKILL), namespaces are deleted. Namespace
names carry the test process's PID so parallel or leftover runs never collide.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any


def run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({result.returncode}): "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result


class Netns:
    """A network namespace created by a lab (IPv4 forwarding on, loopback up)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "-n", self.name, *args, check=check)

    def ip_json(self, *args: str) -> list[dict[str, Any]]:
        out = run("ip", "-j", "-n", self.name, *args).stdout
        return json.loads(out) if out.strip() else []  # type: ignore[no-any-return]

    def exec(
        self, *cmd: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.name, *cmd, check=check, timeout=timeout)

    def sysctl(self, key: str, value: str) -> None:
        self.exec("sysctl", "-q", "-w", f"{key}={value}")

    def ping(self, address: str, count: int = 1, wait: float = 1.0) -> bool:
        result = self.exec(
            "ping", "-n", "-q", "-c", str(count), "-W", str(wait), address, check=False
        )
        return result.returncode == 0

    def routes(self, table: str = "main") -> list[dict[str, Any]]:
        return self.ip_json("route", "show", "table", table)


class Lab:
    """Creates namespaces, links and processes; removes all of them on close."""

    def __init__(self, tag: str, workdir: Path) -> None:
        self.prefix = f"rt{os.getpid() % 100000}{tag}"
        self.workdir = workdir
        self.namespaces: list[Netns] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self._links = 0

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def netns(self, name: str) -> Netns:
        ns = Netns(f"{self.prefix}-{name}")
        run("ip", "netns", "add", ns.name)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        ns.sysctl("net.ipv4.ip_forward", "1")
        return ns

    def veth(self, a: Netns, a_name: str, b: Netns, b_name: str) -> None:
        """A veth pair with one end in each namespace, both up."""
        self._links += 1
        tmp = f"rv{os.getpid() % 100000}x{self._links}"  # <= 14 chars, unique in the root ns
        run("ip", "link", "add", tmp, "type", "veth", "peer", "name", tmp + "p")
        run("ip", "link", "set", tmp, "netns", a.name, "name", a_name)
        run("ip", "link", "set", tmp + "p", "netns", b.name, "name", b_name)
        a.ip("link", "set", a_name, "up")
        b.ip("link", "set", b_name, "up")

    def endpoint(self, host: Netns, link: str, name: str, ip: str) -> Netns:
        """A pod wired as the CNI wires one: namespace ``name`` with ``ip``/32 on eth0 and a
        default route via a link-local gateway, veth ``link`` on ``host`` answering ARP
        for it (proxy ARP, at once) and routing ``ip`` to it."""
        ns = self.netns(name)
        self.veth(host, link, ns, "eth0")
        ns.ip("addr", "add", f"{ip}/32", "dev", "eth0")
        ns.ip("route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
        ns.ip("route", "add", "default", "via", "169.254.1.1")
        host.sysctl(f"net.ipv4.conf.{link}.proxy_arp", "1")
        host.sysctl(f"net.ipv4.neigh.{link}.proxy_delay", "0")  # the default waits 0.8 s
        host.ip("route", "add", f"{ip}/32", "dev", link, "scope", "link")
        return ns

    def bridge(self, ns: Netns, name: str, ports: Sequence[str] = ()) -> None:
        ns.ip("link", "add", name, "type", "bridge")
        for port in ports:
            ns.ip("link", "set", port, "master", name)
        ns.ip("link", "set", name, "up")

    def spawn(
        self, ns: Netns | None, *cmd: str, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a process (inside ``ns`` when given); stopped by PID when the lab closes."""
        argv = ["ip", "netns", "exec", ns.name, *cmd] if ns else list(cmd)
        out: IO[bytes] | int = log.open("ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill_pidfile(self, pidfile: Path) -> None:
        """Stop a daemon that forked itself away (e.g. BIRD), by the PID it wrote."""
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                if not _alive(pid):
                    return
                time.sleep(0.05)

    def close(self) -> None:
        for proc in reversed(self.processes):
            self.stop(proc)
        for ns in reversed(self.namespaces):
            # Killing what still runs inside first, or the namespace lingers.
            pids = run("ip", "netns", "pids", ns.name, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "del", ns.name, check=False)
        self.namespaces.clear()
        self.processes.clear()


def _alive(pid: int) -> bool:
    """Running, and not a zombie: a daemon that forked away is reaped by init, which here
    takes up to ~2 s; waiting for that would only slow teardown down."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def wait_until(
    predicate: Any, timeout: float = 10.0, interval: float = 0.05, message: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")
