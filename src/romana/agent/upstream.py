"""The agent's asynchronous view of romanad: route sets, networks and the changes feed.

Failures are sorted into what the follow loop must do about them: ``Unreachable`` (back
off and retry; keep the kernel as it is), ``Resync`` (history compacted: read everything
again) and any other ``RomanaError`` (romanad answered, but refused: log it loudly).
"""

from __future__ import annotations

from typing import Any

import httpx

from romana.api.client import endpoint
from romana.errors import RomanaError


class Unreachable(RomanaError):
    code = "unreachable"


class Resync(RomanaError):
    code = "resync"


class Upstream:
    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        base, socket_path = endpoint(url)
        transport = httpx.AsyncHTTPTransport(uds=socket_path) if socket_path else None
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self._http = httpx.AsyncClient(base_url=base, transport=transport, headers=headers,
                                       timeout=timeout)

    async def close(self) -> None:
        await self._http.aclose()

    async def host_routes(self, host: str) -> dict[str, Any]:
        return await self._get("/routes", params={"host": host})  # type: ignore[no-any-return]

    async def network_cidrs(self) -> list[str]:
        return [n["cidr"] for n in await self._get("/networks")]

    async def watch(self, since: int, timeout: float) -> dict[str, Any]:
        """Facts after ``since``; romanad holds the request up to ``timeout`` seconds."""
        return await self._get(  # type: ignore[no-any-return]
            "/watch", params={"since": since, "timeout": timeout},
            timeout=httpx.Timeout(10.0, read=timeout + 10.0))

    async def _get(self, path: str, **kw: Any) -> Any:
        try:
            response = await self._http.get(path, **kw)
        except httpx.TransportError as exc:  # includes timeouts
            raise Unreachable(f"cannot reach romanad at {self.url}: "
                              f"{exc or type(exc).__name__}") from exc
        if response.status_code == 410:
            raise Resync("romanad compacted the changes we had not seen")
        if response.is_error:
            try:
                error = response.json()["error"]
                raise RomanaError(f"romanad refused GET {path}: {error['message']}",
                                  list(error.get("details") or []))
            except (ValueError, KeyError, TypeError):
                raise RomanaError(f"romanad answered {response.status_code} to GET {path}"
                                  ) from None
        return response.json()
