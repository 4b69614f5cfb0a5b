"""A thin client of etcd's v3 JSON gateway (etcd 3.4: ``/v3/kv/...``), synchronous.

Why this and not a gRPC client: the popular Python etcd3 clients pin old protobuf/grpcio
releases that current Python cannot install, or do not speak the v3.4 API; the gateway
is part of every etcd server, speaks the same v3 API (transactions, ranges, compaction),
and needs nothing but httpx. Keys and values are bytes, base64 on the wire; int64 fields
come back as strings, and fields equal to their default (false, 0, empty) are left out.

Failover: etcd clients do not move between endpoints by themselves over the gateway, so
every call goes to the current endpoint and, when it cannot be reached or answers
"unavailable", moves to the next one with jittered backoff, until ``deadline`` seconds.
A call whose outcome is unknown (the request went out, no answer came) raises
:class:`OutcomeUnknown`: the caller must check before it retries a write.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from romana.backoff import Backoff
from romana.errors import OutcomeUnknown, StoreError


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key after every key that starts with ``prefix``."""
    for i in range(len(prefix) - 1, -1, -1):
        if prefix[i] < 0xFF:
            return prefix[:i] + bytes([prefix[i] + 1])
    return b"\0"


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int


class EtcdClient:
    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float = 2.0,
        deadline: float = 10.0,
        ca: str | None = None,
        cert: tuple[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd: no endpoint given")
        scheme = "https" if ca or cert else "http"
        self.endpoints = [e if "://" in e else f"{scheme}://{e}" for e in endpoints]
        self.current = 0
        self.deadline = deadline
        verify: Any = ca if ca else True
        self._http = httpx.Client(timeout=timeout, verify=verify, cert=cert)
        self._tls: dict[str, Any] = {"verify": verify, "cert": cert}
        self._auth = auth
        self._token: str | None = None
        self.failovers = 0

    @property
    def endpoint(self) -> str:
        return self.endpoints[self.current]

    def close(self) -> None:
        self._http.close()

    # -- the calls ---------------------------------------------------------------------------
    def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        limit: int = 0,
        keys_only: bool = False,
        descending: bool = False,
    ) -> list[KeyValue]:
        body: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if limit:
            body["limit"] = limit
        if keys_only:
            body["keys_only"] = True
        if descending:
            body["sort_order"] = "DESCEND"
            body["sort_target"] = "KEY"
        answer = self.call("/v3/kv/range", body, write=False)
        return [_kv(kv) for kv in answer.get("kvs", [])]

    def get(self, key: bytes) -> KeyValue | None:
        found = self.range(key)
        return found[0] if found else None

    def put(self, key: bytes, value: bytes) -> int:
        answer = self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})
        return int(answer["header"]["revision"])

    def delete_range(self, key: bytes, range_end: bytes) -> int:
        answer = self.call("/v3/kv/deleterange", {"key": b64(key), "range_end": b64(range_end)})
        return int(answer.get("deleted", 0))

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]]) -> tuple[bool, int]:
        """(whether the comparisons held and ``success`` ran, etcd's revision after)."""
        answer = self.call("/v3/kv/txn", {"compare": compare, "success": success})
        return bool(answer.get("succeeded", False)), int(answer["header"]["revision"])

    def compact_history(self, revision: int) -> None:
        """Drop etcd's history before ``revision`` (etcd 3.4 does not do it by itself)."""
        try:
            self.call("/v3/kv/compaction", {"revision": str(revision), "physical": False})
        except StoreError as exc:
            if "required revision has been compacted" not in str(exc):
                raise

    def revision(self) -> int:
        answer = self.call("/v3/kv/range", {"key": b64(b"\0"), "limit": 1}, write=False)
        return int(answer["header"]["revision"])

    async def watch(self, key: bytes, duration: float) -> AsyncIterator[KeyValue]:
        """Every new version of ``key`` for up to ``duration`` seconds, from the current
        endpoint. Ends early when etcd cancels the watch (its start was compacted away)
        and raises StoreError when the endpoint cannot be reached: the caller watches
        again, and reads what it may have missed meanwhile."""
        endpoint = self.endpoint
        body = {"create_request": {"key": b64(key)}}
        headers = {"authorization": self._token} if self._token else {}
        timeout = httpx.Timeout(5.0, read=duration)  # a silent stream ends here too
        until = time.monotonic() + duration
        try:
            async with (
                httpx.AsyncClient(timeout=timeout, **self._tls) as http,
                http.stream("POST", endpoint + "/v3/watch", json=body, headers=headers) as answer,
            ):
                if answer.status_code != 200:
                    await answer.aread()
                    self._next()
                    raise StoreError(f"etcd at {endpoint} refused a watch: {_error(answer)}")
                async for line in answer.aiter_lines():
                    if line.strip():
                        result = json.loads(line).get("result")
                        if result is None:
                            raise StoreError(f"etcd at {endpoint} ended a watch: {line[:300]}")
                        if result.get("canceled"):
                            return
                        for event in result.get("events", []):
                            if event.get("type", "PUT") == "PUT":
                                yield _kv(event["kv"])
                    if time.monotonic() > until:
                        return  # watched long enough: the caller watches again, maybe elsewhere
        except httpx.ReadTimeout:
            return
        except httpx.HTTPError as exc:
            self._next()
            raise StoreError(
                f"etcd at {endpoint}: watch failed: {exc or type(exc).__name__}"
            ) from exc

    # -- plumbing ----------------------------------------------------------------------------
    def call(self, path: str, body: dict[str, Any], write: bool = True) -> dict[str, Any]:
        """POST ``body`` to ``path`` on the current endpoint, failing over until the
        deadline; a write that may have happened raises OutcomeUnknown."""
        backoff = Backoff(0.05, 1.0)
        give_up = time.monotonic() + self.deadline
        last = ""
        logged_in = False
        if self._auth is not None and self._token is None:
            self._login()  # etcd answers an anonymous call "user name is empty"
            logged_in = True
        while True:
            endpoint = self.endpoint
            sent = False
            try:
                headers = {"authorization": self._token} if self._token else {}
                request = self._http.build_request(
                    "POST", endpoint + path, json=body, headers=headers
                )
                sent = True
                response = self._http.send(request)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = f"{endpoint}: {exc or type(exc).__name__}"
            except httpx.TransportError as exc:
                if write and sent:
                    self._next()
                    raise OutcomeUnknown(
                        f"etcd at {endpoint}: no answer to a write ({exc})"
                    ) from exc
                last = f"{endpoint}: {exc or type(exc).__name__}"
            else:
                if response.status_code == 200:
                    return dict(response.json())
                error = _error(response)
                unauthorized = response.status_code == 401 or "token" in error.lower()
                if self._auth is not None and unauthorized and not logged_in:
                    self._login()
                    logged_in = True
                    continue
                if not _retryable(response.status_code, error):
                    raise StoreError(f"etcd at {endpoint} refused {path}: {error}")
                last = f"{endpoint}: {error}"
            if time.monotonic() > give_up:
                raise StoreError(f"etcd unavailable for {self.deadline:g} s: {last}")
            self._next()
            time.sleep(backoff.next())

    def _next(self) -> None:
        if len(self.endpoints) > 1:
            self.current = (self.current + 1) % len(self.endpoints)
            self.failovers += 1

    def _login(self) -> None:
        assert self._auth is not None
        name, password = self._auth
        try:
            response = self._http.post(
                self.endpoint + "/v3/auth/authenticate", json={"name": name, "password": password}
            )
        except httpx.TransportError as exc:
            self._next()
            raise StoreError(f"etcd at {self.endpoint}: cannot log in: {exc}") from exc
        if response.status_code != 200:
            raise StoreError(f"etcd at {self.endpoint} refused the login: {_error(response)}")
        self._token = str(response.json()["token"])


def _kv(kv: dict[str, Any]) -> KeyValue:
    return KeyValue(unb64(kv["key"]), unb64(kv.get("value", "")), int(kv.get("mod_revision", 0)))


def _error(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    return str(data.get("error") or data.get("message") or data)[:500]


def _retryable(status: int, error: str) -> bool:
    words = ("unavailable", "leader", "timeout", "too many requests", "no leader")
    return (status >= 500 and any(w in error.lower() for w in words)) or status == 503


__all__ = ["EtcdClient", "KeyValue", "b64", "prefix_end", "unb64"]
