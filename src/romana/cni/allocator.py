"""The plugin's romanad calls, with romanad's failures turned into CNI error codes.

romanad unreachable -> 11 "try again later" (the runtime retries); romanad refusing (no
such host, pool exhausted, ...) -> 100 with romanad's own message. Calls go to the
agent's romanad (its ``--url`` and token): a network configuration cannot name another.

The segment of an allocation is the value of the host's label named by
``segment_label``, read from romanad and cached for ``label_ttl`` seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from romana.cni.errors import (
    NOT_AVAILABLE,
    ROMANAD_REFUSED,
    TRY_AGAIN_LATER,
    CniError,
)
from romana.cni.lean_client import LeanRomanadClient
from romana.errors import Conflict, RomanaError, Unreachable
from romana.responses import AddressJson

log = logging.getLogger("romana.cni")
T = TypeVar("T")


class Allocator:
    def __init__(self, url: str, token: str | None, label_ttl: float = 10.0) -> None:
        self.client = LeanRomanadClient(url, token)
        self.label_ttl = label_ttl
        self._labels: dict[str, tuple[float, dict[str, str]]] = {}  # host -> (read at, labels)

    async def close(self) -> None:
        await self.client.close()

    async def allocate(
        self,
        name: str,
        host: str,
        tenant: str,
        segment_label: str,
        labels: dict[str, str] | None = None,
        ports: list[dict[str, Any]] | None = None,
        pod: Mapping[str, str] | None = None,
    ) -> AddressJson:
        """The pod's segment is its own ``segment_label`` label if it has one, else the
        host's; ``labels`` and ``ports`` go with the allocation (policies select by them),
        and ``pod`` (``{namespace, name, uid}``) ties the address to its pod."""
        if labels and segment_label in labels:
            segment = labels[segment_label]
        else:
            segment = await self.segment(host, segment_label)
        try:
            return await self.client.allocate(name, host, tenant, segment, labels, ports, pod)
        except Unreachable as exc:
            raise _unreachable("allocate an address", exc) from None
        except RomanaError as exc:
            if not isinstance(exc, Conflict):
                raise _refused("allocate an address", exc) from None
            # romanad answers an identical retry itself (200); a 409 means the name is held
            # with other parameters. Names are unique per attachment and the runtime never
            # ADDs an attachment twice without a DEL, so for this host and tenant it is this
            # pod's address from an ADD whose answer got lost, allocated when the host's
            # segment label said something else: the pod keeps it.
            existing = await self.lookup(name)
            if existing is None or existing["host"] != host or existing["tenant"] != tenant:
                raise _refused("allocate an address", exc) from None
            log.warning(
                "reusing an address left by an earlier ADD",
                extra={"address": name, "ip": existing["ip"]},
            )
            return existing

    async def release(self, name: str) -> AddressJson | None:
        """The released address, or None if it was not allocated (DEL is idempotent)."""
        return await _ask("release an address", self.client.release(name))

    async def lookup(self, name: str) -> AddressJson | None:
        return await _ask("look up an address", self.client.address(name))

    async def addresses(self, host: str) -> list[AddressJson]:
        return await _ask("list the host's addresses", self.client.addresses(host))

    async def segment(self, host: str, label: str) -> str:
        if not label:
            return ""
        cached = self._labels.get(host)
        now = time.monotonic()
        if cached is None or now - cached[0] > self.label_ttl:
            answer = await _ask("read this host's labels", self.client.host(host))
            cached = self._labels[host] = (now, dict(answer.get("labels") or {}))
        return cached[1].get(label, "")

    async def ready(self, host: str) -> None:
        """STATUS: romanad answers and knows this host, so an ADD can succeed."""
        try:
            await self.client.host(host)
        except Unreachable as exc:
            raise CniError(NOT_AVAILABLE, "romanad is unreachable", str(exc)) from None
        except RomanaError as exc:
            raise CniError(
                NOT_AVAILABLE, f"romanad cannot serve host {host}", exc.message
            ) from None


async def _ask(action: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except Unreachable as exc:
        raise _unreachable(action, exc) from None
    except RomanaError as exc:
        raise _refused(action, exc) from None


def _unreachable(action: str, exc: Exception) -> CniError:
    return CniError(TRY_AGAIN_LATER, f"romanad is unreachable: cannot {action}", str(exc))


def _refused(action: str, exc: RomanaError) -> CniError:
    return CniError(
        ROMANAD_REFUSED,
        f"romanad refused to {action}: {exc.message}",
        f"romanad error code {exc.wire_code!r}",
    )
