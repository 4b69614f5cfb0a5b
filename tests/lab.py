"""A throwaway network lab for data-plane tests: namespaces, veths, bridges, processes.

Everything a :class:`Lab` creates is removed when it closes, even when the test failed:
processes are stopped by PID (SIGTERM, then SIGKILL), namespaces are deleted. Namespace
names carry the test process's PID so parallel or leftover runs never collide.

The e2e harnesses differ only in their wiring: each builds its hosts with
:meth:`Lab.switch` and :meth:`Lab.host` (or by hand, for routed fabrics) and starts Romana's
processes with :meth:`Lab.agent` or :func:`romana_argv`, whose keyword arguments are the
programs' flags.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .wait import wait_until

BIN = Path(sys.executable).parent  # the virtualenv's romanad, romana-agent, romana-cni, ...


def romana_argv(program: str, *args: str, **flags: object) -> list[str]:
    """``BIN/program ARGS FLAGS``: each keyword is a flag, ``cni_socket=path`` giving
    ``--cni-socket path``; ``True`` gives the bare flag, ``None`` and ``False`` leave it
    out, and a list gives the flag once per item."""
    argv = [str(BIN / program), *args]
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is True:
                argv.append(flag)
            elif item is not None and item is not False:
                argv += [flag, str(item)]
    return argv


def agent_argv(host: str, url: str, **flags: object) -> list[str]:
    """romana-agent for ``host`` following romanad at ``url``, with ``flags`` (see
    :func:`romana_argv`)."""
    return romana_argv("romana-agent", host=host, url=url, **flags)


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
        return json.loads(out) if out.strip() else []

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


class Switch(Netns):
    """A namespace whose bridge ``br0`` joins hosts on one segment and is their gateway."""

    def __init__(self, name: str, gateway: str) -> None:
        super().__init__(name)
        self.gateway = gateway


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
        return self._add(Netns(f"{self.prefix}-{name}"))

    def _add(self, ns: Netns) -> Netns:
        run("ip", "netns", "add", ns.name)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        ns.sysctl("net.ipv4.ip_forward", "1")
        return ns

    def switch(self, name: str, address: str) -> Switch:
        """A switch namespace whose bridge holds ``address`` (``192.168.7.1/24``): the
        segment's hosts (:meth:`host`) route through it by default."""
        sw = Switch(f"{self.prefix}-{name}", address.partition("/")[0])
        self._add(sw)
        self.bridge(sw, "br0")
        sw.ip("addr", "add", address, "dev", "br0")
        return sw

    def host(self, name: str, address: str, switch: Switch) -> Netns:
        """A host namespace on ``switch``'s segment: eth0 with ``address`` (``.../24``),
        plugged into the bridge as ``p<name>``, its default route via the switch."""
        host = self.netns(name)
        self.veth(host, "eth0", switch, f"p{name}")
        switch.ip("link", "set", f"p{name}", "master", "br0")
        host.ip("addr", "add", address, "dev", "eth0")
        # Also what proxy ARP needs to answer for the pods' link-local gateway.
        host.ip("route", "add", "default", "via", switch.gateway)
        return host

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

    def agent(
        self,
        ns: Netns,
        host: str,
        url: str,
        *,
        serving: Path | None = None,
        log: Path | None = None,
        **flags: object,
    ) -> subprocess.Popen[bytes]:
        """romana-agent for ``host`` inside ``ns``, logging to ``agent-HOST.log`` in the lab's
        directory; with ``serving``, returns once that Unix socket exists (the agent's CNI
        socket or listener: it is up)."""
        proc = self.spawn(
            ns, *agent_argv(host, url, **flags), log=log or self.workdir / f"agent-{host}.log"
        )
        if serving is not None:
            wait_until(serving.is_socket, 30, what=f"{host}'s agent to serve {serving}")
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
