"""CHECK and GC: the CNI commands that compare what should be with what is.

CHECK verifies one attachment against its ADD's result (romanad's allocation and the
kernel's interfaces, addresses and routes); GC releases this network's attachments on this
host that the runtime no longer lists. Part of :class:`romana.cni.service.CniService`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from romana.cni.allocator import Allocator
from romana.cni.config import Invocation, split_address_name
from romana.cni.errors import CHECK_FAILED, INTERNAL, INVALID_CONFIG, CniError
from romana.cni.podnet import PodNetwork
from romana.cni.result import previous_ip, previous_mac

log = logging.getLogger("romana.cni")
T = TypeVar("T")


class CheckAndGc:
    podnet: PodNetwork
    allocator: Allocator
    host: str
    _locks: dict[str, asyncio.Lock]
    _attachment: Callable[[str, str], AbstractAsyncContextManager[None]]
    _kernel_step: Callable[..., Awaitable[Any]]
    _del: Callable[[Invocation], Awaitable[None]]
    _del_ipam: Callable[[Invocation], Awaitable[None]]

    # -- CHECK ------------------------------------------------------------------------------
    async def _check(self, inv: Invocation) -> None:
        conf = inv.conf
        if conf.prev_result is None:
            raise CniError(
                INVALID_CONFIG,
                "CHECK needs prevResult",
                "the runtime must pass the result of the previous ADD",
            )
        client = self.allocator.client(conf)
        address = await self.allocator.lookup(client, inv.address_name)
        if address is None:
            raise CniError(
                CHECK_FAILED,
                f"romanad has no address {inv.address_name}",
                "the allocation is gone: the pod needs a new ADD",
            )
        problems = []
        ip, host = str(address["ip"]), self.host
        expected = previous_ip(conf.prev_result)
        if expected is not None and expected != ip:
            problems.append(f"romanad says {ip}, ADD reported {expected}")
        if address["host"] != host:
            problems.append(f"the address is allocated to host {address['host']}, not {host}")
        full = inv.mode == "full"
        problems += await self._kernel_step(
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
    async def _gc(self, inv: Invocation) -> None:
        """Release this network's attachments on this host that the runtime no longer lists.

        Attachments with a command in flight are left alone (their ADD may be racing the
        runtime's list). Every stale one is tried; failures are reported together.
        """
        conf = inv.conf
        valid = conf.valid_attachments or frozenset()
        client = self.allocator.client(conf)
        stale = []
        for address in await self.allocator.addresses(client, self.host):
            parts = split_address_name(address["name"])
            if (
                parts is not None
                and parts[0] == conf.network
                and (parts[1], parts[2]) not in valid
                and address["name"] not in self._locks
            ):
                stale.append(Invocation(inv.mode, "DEL", conf, parts[1], "", parts[2]))
        outcomes = await asyncio.gather(*(self._collect(s) for s in stale), return_exceptions=True)
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

    async def _collect(self, stale: Invocation) -> None:
        async with self._attachment(stale.address_name, stale.host_ifname):
            await (self._del(stale) if stale.mode == "full" else self._del_ipam(stale))
