"""The CNI commands, served inside romana-agent: ADD, DEL, CHECK, STATUS, GC, VERSION.

Every ADD either succeeds completely or leaves nothing behind: each step that changes
something registers its undo (release the address, delete the veth) before the next step
runs, and a failure (or cancellation) runs the undos in reverse before the error is
answered. DEL is idempotent: a missing namespace, interface or allocation is success.

Latency. An ADD asks romanad for the address while a worker thread builds the veth (the
two overlap), then puts the address on inline (~0.15 ms): on the agent's event loop, the
changes feed wakes up on that very allocation, and the answer should not wait behind it.
DEL sets the host end down inline, releases the address, answers, and deletes the veth
afterwards (the kernel takes ~16 ms for that; see ``podnet``).

Concurrency. The runtime may run many pods' commands at once; they proceed in parallel.
Commands for the same attachment are serialised by a per-attachment lock, and an
attachment's deferred veth deletion finishes before its next command starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from typing import Any, Protocol, TypeVar

from romana.cni import config, requestlog
from romana.cni.allocator import Allocator
from romana.cni.checks import CheckAndGc
from romana.cni.config import SUPPORTED_VERSIONS, Invocation, Mode
from romana.cni.errors import (
    INCOMPATIBLE_VERSION,
    INTERNAL,
    INVALID_ENVIRONMENT,
    KERNEL_REFUSED,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    CniError,
)
from romana.cni.metrics import CniMetrics
from romana.cni.podnet import Plumbing, PodNetwork, open_netns
from romana.cni.result import (
    add_result,
    error_object,
    ipam_result,
)
from romana.errors import RomanaError
from romana.policy.model import Endpoint, NamedPort
from romana.responses import AddressJson

log = logging.getLogger("romana.cni")
T = TypeVar("T")
Undo = Callable[[], Awaitable[object]]
LATEST = SUPPORTED_VERSIONS[-1]


class PolicyGate(Protocol):
    """The agent's policy loop, as the CNI sees it (``romana.agent.policy``)."""

    async def admit(self, endpoint: Endpoint, routed_here: bool = True) -> None: ...

    async def forget(self, name: str) -> None: ...


class PodDirectory(Protocol):
    """Where a Kubernetes pod's labels, named ports and uid are read (``romana.kube.pods``)."""

    async def lookup(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str], tuple[tuple[str, int, str], ...], str]: ...

    async def close(self) -> None: ...


class CniService:
    def __init__(
        self,
        podnet: PodNetwork,
        allocator: Allocator,
        host: str,
        metrics: CniMetrics | None = None,
        workers: int = 4,
        request_log: str | None = None,
        gate: PolicyGate | None = None,
        pods: PodDirectory | None = None,
    ) -> None:
        self.podnet = podnet
        self.pods = pods  # labels and ports of K8S_POD_NAME, from the API server
        self.gate = gate  # fail closed: a pod is in the policy table before it runs
        self.request_log = request_log  # the agent's --cni-request-log: a line per command
        self.allocator = allocator
        self.host = host
        self.metrics = metrics
        self._kernel = ThreadPoolExecutor(workers, thread_name_prefix="cni-netlink")
        # Veth deletions wait ~16 ms in the kernel each; they must not hold up ADDs.
        self._slow = ThreadPoolExecutor(workers, thread_name_prefix="cni-teardown")
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, int] = {}
        self._teardowns: dict[str, asyncio.Future[bool]] = {}
        self.check_and_gc = CheckAndGc(
            podnet,
            allocator,
            host,
            self._kernel_step,
            lambda name: name in self._locks,
            self._delete_attachment,
        )

    async def close(self) -> None:
        """Finish deferred teardowns, then stop the threads."""
        await asyncio.gather(*self._teardowns.values(), return_exceptions=True)
        self._kernel.shutdown(wait=True)
        self._slow.shutdown(wait=True)
        await self.allocator.close()
        if self.pods is not None:
            await self.pods.close()

    # -- one invocation ---------------------------------------------------------------------
    async def handle(self, mode: Mode, env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
        """Serve one invocation: (exit status, stdout) as the plugin must answer."""
        started = time.perf_counter()
        command = env.get("CNI_COMMAND", "")
        invocation: Invocation | None = None
        answer: dict[str, Any] | None = None
        error: CniError | None = None
        try:
            invocation = config.parse(mode, env, stdin)
            answer = await self._dispatch(invocation)
        except CniError as exc:
            error = exc
        except Exception as exc:  # a bug: answer the runtime anyway, keep the traceback
            log.exception("CNI command failed unexpectedly", extra={"command": command})
            error = CniError(
                INTERNAL,
                f"romana-agent failed: {type(exc).__name__}: {exc}",
                "see romana-agent's log",
            )
        self._record(command, invocation, answer, error, time.perf_counter() - started)
        if error is not None:
            version = invocation.conf.cni_version if invocation else _requested_version(stdin)
            return 1, json.dumps(error_object(version, error)).encode() + b"\n"
        return 0, b"" if answer is None else json.dumps(answer).encode() + b"\n"

    async def _dispatch(self, inv: Invocation) -> dict[str, Any] | None:
        if inv.command == "VERSION":
            return {
                "cniVersion": inv.conf.cni_version,
                "supportedVersions": list(SUPPORTED_VERSIONS),
            }
        if inv.command == "STATUS":
            await self.allocator.ready(self.host)
            return None
        if inv.command == "GC":
            await self.check_and_gc.gc(inv)
            return None
        if inv.command == "CHECK" and inv.conf.cni_version < "0.4.0":
            raise CniError(INCOMPATIBLE_VERSION, "CHECK needs CNI version 0.4.0 or later")
        if inv.command == "ADD":
            inv = await self._with_pod_metadata(inv)
        async with self._attachment(inv.address_name, inv.host_ifname):
            if inv.command == "ADD":
                return await (self._add(inv) if inv.mode == "full" else self._add_ipam(inv))
            if inv.command == "DEL":
                await self._delete(inv)
                return None
            await self.check_and_gc.check(inv)
            return None

    async def _with_pod_metadata(self, inv: Invocation) -> Invocation:
        """The pod's own labels and named ports, when it is a Kubernetes pod and the agent
        can read pods; they replace what the network configuration passed."""
        namespace, name = inv.args.get("K8S_POD_NAMESPACE"), inv.args.get("K8S_POD_NAME")
        if self.pods is None or not namespace or not name:
            return inv
        try:
            labels, ports, uid = await self.pods.lookup(namespace, name)
        except RomanaError as exc:  # fail closed: unlabelled, policies could miss the pod
            raise CniError(
                TRY_AGAIN_LATER, f"cannot read pod {namespace}/{name}'s labels", exc.message
            ) from None
        conf = dataclasses.replace(inv.conf, labels=tuple(sorted(labels.items())), ports=ports)
        args = inv.args
        if uid and not args.get("K8S_POD_UID"):  # the runtime's own word comes first
            args = {**args, "K8S_POD_UID": uid}
        return dataclasses.replace(inv, conf=conf, args=args)

    # -- ADD --------------------------------------------------------------------------------
    async def _add(self, inv: Invocation) -> dict[str, Any]:
        """romanad allocates while the kernel builds the veth; then the address goes on."""
        conf, veth = inv.conf, inv.host_ifname
        netns_fd = self._open_netns(inv)
        undo: list[Undo] = []
        plumbing: Plumbing | None = None
        try:
            allocated, plumbed = await asyncio.gather(
                self._allocate(inv, undo),
                self._kernel_step(
                    "create the pod's veth",
                    self.podnet.prepare,
                    veth,
                    netns_fd,
                    inv.ifname,
                    conf.mtu,
                ),
                return_exceptions=True,
            )
            if isinstance(plumbed, Plumbing):
                plumbing = plumbed
                undo.append(lambda: self._in_pool(self._slow, self.podnet.delete_link, veth))
            for outcome in (allocated, plumbed):  # romanad's first: its 11 makes ADD retry
                if isinstance(outcome, BaseException):
                    raise outcome
            assert not isinstance(allocated, BaseException) and plumbing is not None
            ip = allocated["ip"]
            await self._admit(inv, allocated, undo)
            # ~0.15 ms of netlink: inline, so nothing else on the loop (the agent's changes
            # feed wakes on this very allocation) runs before the answer goes out.
            host, pod = self._kernel_inline(
                "configure the pod's network", self.podnet.configure, plumbing, ip
            )
        except BaseException:
            await self._undo(inv, undo)
            raise
        finally:
            if plumbing is not None:
                plumbing.close()
            os.close(netns_fd)
        return add_result(conf.cni_version, ip, host, pod, inv.netns, conf.mtu)

    async def _add_ipam(self, inv: Invocation) -> dict[str, Any]:
        conf = inv.conf
        undo: list[Undo] = []
        try:
            allocated = await self._allocate(inv, undo)
            ip = allocated["ip"]
            await self._admit(inv, allocated, undo)
            if conf.host_route_dev is not None:
                await self._kernel_step(
                    f"route {ip} to {conf.host_route_dev}",
                    self.podnet.add_host_route,
                    ip,
                    conf.host_route_dev,
                )
        except BaseException:
            await self._undo(inv, undo)
            raise
        return ipam_result(conf.cni_version, ip, conf.routes)

    async def _allocate(self, inv: Invocation, undo: list[Undo]) -> AddressJson:
        conf = inv.conf
        address = await self.allocator.allocate(
            inv.address_name,
            self.host,
            inv.tenant,
            conf.segment_label,
            dict(conf.labels),
            [{"name": n, "port": p, "protocol": pr} for n, p, pr in conf.ports],
            pod=inv.pod,
        )
        undo.append(lambda: self.allocator.release(inv.address_name))
        return address

    async def _admit(self, inv: Invocation, address: AddressJson, undo: list[Undo]) -> None:
        """Policies see the pod before it has an address: isolated from its first packet."""
        gate = self.gate
        if gate is None:
            return
        conf = inv.conf
        endpoint = Endpoint(
            inv.address_name,
            address["ip"],
            self.host,
            address["tenant"],
            address["segment"],
            dict(conf.labels),
            tuple(NamedPort(n, p, pr) for n, p, pr in conf.ports),
        )
        try:
            await gate.admit(endpoint, routed_here=inv.mode == "full")
        except RomanaError as exc:
            raise CniError(
                TRY_AGAIN_LATER,
                "the pod's network policies could not be enforced",
                exc.message,
            ) from None
        undo.append(lambda: gate.forget(inv.address_name))

    async def _undo(self, inv: Invocation, undo: list[Undo]) -> None:
        for action in reversed(undo):
            try:
                await asyncio.shield(action())
            except Exception as exc:  # keep undoing; the runtime's DEL will retry the rest
                log.error(
                    "rollback step failed", extra={"address": inv.address_name, "error": str(exc)}
                )

    def _open_netns(self, inv: Invocation) -> int:
        """The pod's namespace; never blocks (see ``open_netns``) and never the agent's
        own namespace, where the pod's interface would replace a host interface."""
        try:
            fd = open_netns(inv.netns)
        except OSError as exc:
            code = UNKNOWN_CONTAINER if exc.errno == errno.ENOENT else INVALID_ENVIRONMENT
            raise CniError(
                code,
                f"cannot open the pod's network namespace {inv.netns}",
                exc.strerror or str(exc),
            ) from None
        pod, own = os.fstat(fd), os.stat("/proc/self/ns/net")
        if (pod.st_dev, pod.st_ino) == (own.st_dev, own.st_ino):
            os.close(fd)
            raise CniError(
                INVALID_ENVIRONMENT,
                f"the pod's network namespace {inv.netns} is the host's own",
                "CNI_NETNS must name the pod's network namespace",
            )
        return fd

    # -- DEL --------------------------------------------------------------------------------
    async def _delete(self, inv: Invocation) -> None:
        await (self._del(inv) if inv.mode == "full" else self._del_ipam(inv))

    async def _delete_attachment(self, inv: Invocation) -> None:
        """DEL after the attachment's other commands (GC's, for an attachment it found)."""
        async with self._attachment(inv.address_name, inv.host_ifname):
            await self._delete(inv)

    async def _del(self, inv: Invocation) -> None:
        veth = inv.host_ifname
        # Cut the pod off first (one netlink request, inline): once the address is released
        # it may be handed to another pod, and no route may lead to this one then.
        if self._kernel_inline("detach the pod's veth", self.podnet.detach, veth):
            self._delete_later(veth)
        await self.allocator.release(inv.address_name)  # unreachable: 11, DEL retried
        if self.gate is not None:
            await self.gate.forget(inv.address_name)

    async def _del_ipam(self, inv: Invocation) -> None:
        released = await self.allocator.release(inv.address_name)
        if self.gate is not None:
            await self.gate.forget(inv.address_name)
        # Only the route to the address released here: had it been released before, the
        # address may belong to another pod by now.
        if released is not None and inv.conf.host_route_dev is not None:
            await self._kernel_step(
                "remove the host route", self.podnet.delete_host_route, released["ip"]
            )

    def _delete_later(self, veth: str) -> None:
        """Delete the veth after answering: ~16 ms of kernel time nobody has to wait for."""
        task = asyncio.ensure_future(self._in_pool(self._slow, self.podnet.delete_link, veth))
        self._teardowns[veth] = task

        def done(future: asyncio.Future[bool]) -> None:
            if self._teardowns.get(veth) is future:
                del self._teardowns[veth]
            failed = future.cancelled() or future.exception() is not None
            if self.metrics:
                self.metrics.teardowns.labels("failed" if failed else "done").inc()
            if failed and not future.cancelled():
                log.error(
                    "deferred veth deletion failed",
                    extra={"veth": veth, "error": str(future.exception())},
                )

        task.add_done_callback(done)

    # -- helpers ----------------------------------------------------------------------------
    @asynccontextmanager
    async def _attachment(self, name: str, veth: str) -> AsyncIterator[None]:
        """One command at a time per attachment, after its deferred veth deletion."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        self._waiting[name] = self._waiting.get(name, 0) + 1
        try:
            async with lock:
                if (teardown := self._teardowns.get(veth)) is not None:
                    with suppress(Exception):
                        await asyncio.shield(teardown)
                yield
        finally:
            self._waiting[name] -= 1
            if not self._waiting[name]:
                del self._waiting[name], self._locks[name]

    async def _in_pool(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def _kernel_inline(self, action: str, fn: Callable[..., T], *args: Any) -> T:
        """Short kernel work on the event loop's thread itself (no thread hand-offs)."""
        try:
            return fn(*args)
        except OSError as exc:
            raise _kernel_error(action, exc) from None

    async def _kernel_step(self, action: str, fn: Callable[..., T], *args: Any) -> T:
        """Kernel work on a worker thread (see :class:`romana.cni.checks.KernelStep`)."""
        try:
            return await self._in_pool(self._kernel, fn, *args)
        except OSError as exc:
            raise _kernel_error(action, exc) from None

    def _record(
        self,
        command: str,
        inv: Invocation | None,
        answer: dict[str, Any] | None,
        error: CniError | None,
        elapsed: float,
    ) -> None:
        code = error.cni_code if error else 0
        if self.metrics:
            self.metrics.requests.labels(command or "-", str(code)).inc()
            self.metrics.seconds.labels(command or "-").observe(elapsed)
        entry: dict[str, Any] = {"command": command, "code": code, "ms": round(elapsed * 1000, 2)}
        if inv is not None and inv.container_id:
            entry.update(
                container=inv.container_id,
                ifname=inv.ifname,
                netns=inv.netns,
                network=inv.conf.network,
                mode=inv.mode,
            )
        if answer and answer.get("ips"):
            entry["ip"] = answer["ips"][0]["address"]
        if error is not None:
            entry.update(msg=error.msg, details=error.cni_details)
        if self.request_log is not None:
            requestlog.append(self.request_log, entry)
        # "msg" is a reserved LogRecord attribute: the log line calls it "error".
        fields = {("error" if k == "msg" else k): v for k, v in entry.items()}
        if error is not None:
            log.warning("CNI command failed", extra=fields)
        else:
            log.log(
                logging.INFO if command in {"ADD", "DEL"} else logging.DEBUG,
                "CNI command done",
                extra=fields,
            )


def _kernel_error(action: str, exc: OSError) -> CniError:
    return CniError(
        KERNEL_REFUSED,
        f"the kernel refused to {action}",
        f"[{errno.errorcode.get(exc.errno or 0, exc.errno)}] {exc.strerror or exc}",
    )


def _requested_version(stdin: bytes) -> str:
    """The cniVersion to answer an invalid request in: the requested one if we speak it."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return LATEST
    return version if version in SUPPORTED_VERSIONS else LATEST
