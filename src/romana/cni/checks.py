"""CHECK and GC: the CNI commands that compare what should be with what is.

CHECK verifies one attachment against its ADD's result (romanad's allocation and the
kernel's interfaces, addresses and routes); GC releases this network's attachments on this
host that the runtime no longer lists. :class:`romana.cni.service.CniService` holds one
and hands it what it shares: the kernel's worker threads, which attachments have a command
in flight, and its DEL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from romana.cni.allocator import Allocator
from romana.cni.config import Invocation, split_address_name
from romana.cni.errors import CHECK_FAILED, INTERNAL, INVALID_CONFIG, CniError
from romana.cni.podnet import PodNetwork
from romana.cni.result import previous_ip, previous_mac

log = logging.getLogger("romana.cni")
T = TypeVar("T")


class KernelStep(Protocol):
    """Run ``fn(*args)`` on a kernel worker thread; an OSError becomes the CNI error that
    says the kernel refused to do ``action``."""

    def __call__(self, action: str, fn: Callable[..., T], *args: Any) -> Awaitable[T]: ...


class CheckAndGc:
    def __init__(
        self,
        podnet: PodNetwork,
        allocator: Allocator,
        host: str,
        kernel_step: KernelStep,
        in_flight: Callable[[str], bool],
        delete: Callable[[Invocation], Awaitable[None]],
    ) -> None:
        """``in_flight(name)``: a command for that attachment is running or waiting;
        ``delete(inv)``: the service's DEL, serialised with the attachment's commands."""
        self.podnet = podnet
        self.allocator = allocator
        self.host = host
        self.kernel_step = kernel_step
        self.in_flight = in_flight
        self.delete = delete

    # -- CHECK ------------------------------------------------------------------------------
    async def check(self, inv: Invocation) -> None:
        conf = inv.conf
        if conf.prev_result is None:
            raise CniError(
                INVALID_CONFIG,
                "CHECK needs prevResult",
                "the runtime must pass the result of the previous ADD",
            )
        address = await self.allocator.lookup(inv.address_name)
        if address is None:
            raise CniError(
                CHECK_FAILED,
                f"romanad has no address {inv.address_name}",
                "the allocation is gone: the pod needs a new ADD",
            )
        problems = []
        ip, host = address["ip"], self.host
        expected = previous_ip(conf.prev_result)
        if expected is not None and expected != ip:
            problems.append(f"romanad says {ip}, ADD reported {expected}")
        if address["host"] != host:
            problems.append(f"the address is allocated to host {address['host']}, not {host}")
        full = inv.mode == "full"
        problems += await self.kernel_step(
            "inspect the pod's network",
            self.podnet.inspect,
            inv.host_ifname if full else None,
            inv.netns,
            inv.ifname,
            ip,
            None if full else conf.host_route_dev,
            previous_mac(conf.prev_result, inv.ifname, inv.netns) if full else None,
        )
        if problems:
            raise CniError(
                CHECK_FAILED,
                f"{inv.address_name} is not as ADD left it: {problems[0]}",
                "; ".join(problems),
            )

    # -- GC ---------------------------------------------------------------------------------
    async def gc(self, inv: Invocation) -> None:
        """Release this network's attachments on this host that the runtime no longer lists.

        Attachments with a command in flight are left alone (their ADD may be racing the
        runtime's list). Every stale one is tried; failures are reported together.
        """
        conf = inv.conf
        valid = conf.valid_attachments or frozenset()
        stale = []
        for address in await self.allocator.addresses(self.host):
            parts = split_address_name(address["name"])
            if (
                parts is not None
                and parts[0] == conf.network
                and (parts[1], parts[2]) not in valid
                and not self.in_flight(address["name"])
            ):
                stale.append(Invocation(inv.mode, "DEL", conf, parts[1], "", parts[2]))
        outcomes = await asyncio.gather(*(self.delete(s) for s in stale), return_exceptions=True)
        failed = [
            (s, o) for s, o in zip(stale, outcomes, strict=True) if isinstance(o, BaseException)
        ]
        log.info(
            "GC",
            extra={
                "network": conf.network,
                "stale": len(stale),
                "released": len(stale) - len(failed),
            },
        )
        if failed:
            first = failed[0][1]
            code = first.cni_code if isinstance(first, CniError) else INTERNAL
            raise CniError(
                code,
                f"GC could not clean up {len(failed)} of {len(stale)} stale attachments",
                "; ".join(f"{s.address_name}: {o}" for s, o in failed),
            )
