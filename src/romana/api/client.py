"""The romanad client: synchronous (CLI, publisher, tests) and asynchronous (the agent).

Each method is one endpoint and returns the server's JSON unchanged (typed below), so the CLI
can print exactly what the server said with ``--json``. Error responses come back as the
``romana.errors`` exception the server raised (:func:`romana.errors.from_wire`, the one
decoder every client uses, the CNI's lean one included), so callers handle local and remote
errors alike; no answer at all is :class:`~romana.errors.Unreachable`. Only httpx is
imported: the CLI loads this module on every remote command.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, cast
from urllib.parse import quote

import httpx

from romana.errors import RomanaError, Unreachable, from_wire
from romana.responses import (
    AddressJson,
    AddressList,
    Blackouts,
    BlockList,
    Changes,
    Health,
    HostJson,
    HostList,
    NetworkJson,
    NetworkPolicyList,
    PolicyJson,
    PolicyList,
    PolicyState,
    RomanadVersion,
    RouteSetJson,
    RouteSummary,
    RouteVerifyReport,
    TenantJson,
    TenantList,
    TopologyApplied,
    TopologyDocument,
)

DEFAULT_URL = "http://127.0.0.1:9600"


def endpoint(url: str) -> tuple[str, str | None]:
    """Base URL and Unix socket path for a romanad address.

    Accepts ``http://host:port``, ``host:port`` (as people type it) and ``unix:/path.sock``
    (romanad's local socket: reachable from any network namespace on the machine).
    """
    if url.startswith("unix:"):
        return "http://romanad", url.removeprefix("unix:").removeprefix("//")
    return (url if "://" in url else f"http://{url}").rstrip("/"), None


class RomanaClient:
    """``RomanaClient(url, token=None, timeout=10)``; use as a context manager or ``close()``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 10,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url, socket_path = endpoint(url)
        if socket_path is not None and transport is None:
            transport = httpx.HTTPTransport(uds=socket_path)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, headers=headers, transport=transport
        )
        self.url = url if socket_path else self.url  # name the socket in error messages

    def __enter__(self) -> RomanaClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- topology ---------------------------------------------------------------------
    def topology(self) -> TopologyDocument:
        """The applied map, every group annotated with its CIDR and hosts."""
        return cast(TopologyDocument, self._call("GET", "/topology"))

    def apply_topology(self, document: Mapping[str, Any]) -> TopologyApplied:
        return cast(TopologyApplied, self._call("POST", "/topology", json=dict(document)))

    # -- networks, blocks and blackouts -----------------------------------------------
    def networks(self) -> list[NetworkJson]:
        return cast(list[NetworkJson], self._call("GET", "/networks"))

    def blocks(self, network: str | None = None) -> BlockList:
        path = "/blocks" if network is None else f"/networks/{_seg(network)}/blocks"
        return cast(BlockList, self._all_pages(path, "blocks", {}))

    def blackouts(self, network: str) -> Blackouts:
        return cast(Blackouts, self._call("GET", f"/networks/{_seg(network)}/blackout"))

    def add_blackout(self, network: str, cidr: str) -> Blackouts:
        return cast(
            Blackouts,
            self._call("POST", f"/networks/{_seg(network)}/blackout", json={"cidr": cidr}),
        )

    def remove_blackout(self, network: str, cidr: str) -> Blackouts:
        return cast(
            Blackouts,
            self._call("DELETE", f"/networks/{_seg(network)}/blackout", json={"cidr": cidr}),
        )

    # -- hosts ------------------------------------------------------------------------
    def hosts(self) -> HostList:
        return cast(HostList, self._all_pages("/hosts", "hosts", {}))

    def host(self, name: str) -> HostJson:
        return cast(HostJson, self._call("GET", f"/hosts/{_seg(name)}"))

    def add_host(self, name: str, ip: str, labels: Mapping[str, str] | None = None) -> HostJson:
        body = {"name": name, "ip": ip, "tags": dict(labels or {})}
        return cast(HostJson, self._call("POST", "/hosts", json=body))

    def remove_host(self, name: str) -> HostJson:
        return cast(HostJson, self._call("DELETE", f"/hosts/{_seg(name)}"))

    def set_labels(self, name: str, labels: Mapping[str, str]) -> HostJson:
        """Replace the host's labels with exactly ``labels``."""
        return cast(HostJson, self._call("PUT", f"/hosts/{_seg(name)}/tags", json=dict(labels)))

    # -- addresses --------------------------------------------------------------------
    def allocate(
        self,
        name: str,
        host: str,
        tenant: str = "",
        segment: str = "",
        ip: str | None = None,
        labels: Mapping[str, str] | None = None,
        ports: list[dict[str, Any]] | None = None,
        pod: Mapping[str, str] | None = None,
    ) -> AddressJson:
        """``pod``: ``{namespace, name, uid}`` of the pod the address is for (``uid`` may
        be empty or left out)."""
        body = _allocation(name, host, tenant, segment, ip, labels, ports, pod)
        return cast(AddressJson, self._call("POST", "/address", json=body))

    def label_endpoint(
        self,
        name: str,
        labels: Mapping[str, str] | None = None,
        ports: list[dict[str, Any]] | None = None,
    ) -> AddressJson:
        """Replace an endpoint's labels and/or named ports (None: keep)."""
        body: dict[str, Any] = {}
        if labels is not None:
            body["labels"] = dict(labels)
        if ports is not None:
            body["ports"] = ports
        return cast(AddressJson, self._call("PUT", f"/address/{_seg(name)}/labels", json=body))

    def address(self, name: str) -> AddressJson:
        return cast(AddressJson, self._call("GET", f"/address/{_seg(name)}"))

    def release(self, name_or_ip: str) -> AddressJson:
        return cast(AddressJson, self._call("DELETE", "/address", params={"name": name_or_ip}))

    def addresses(self, host: str | None = None, tenant: str | None = None) -> AddressList:
        params = {k: v for k, v in (("host", host), ("tenant", tenant)) if v is not None}
        return cast(AddressList, self._all_pages("/addresses", "addresses", params))

    # -- tenants and policies ---------------------------------------------------------
    def tenants(self) -> list[TenantJson]:
        """Every tenant (the answer's ``tenants``)."""
        return cast(TenantList, self._call("GET", "/tenants"))["tenants"]

    def tenant(self, name: str) -> TenantJson:
        return cast(TenantJson, self._call("GET", f"/tenants/{_seg(name)}"))

    def label_tenant(self, name: str, labels: Mapping[str, str]) -> TenantJson:
        """Replace a tenant's labels with exactly ``labels``."""
        return cast(TenantJson, self._call("PUT", f"/tenants/{_seg(name)}", json=dict(labels)))

    def add_policy(self, document: Mapping[str, Any]) -> list[PolicyJson]:
        """A Romana policy, a ``securitypolicies`` wrapper or a Kubernetes NetworkPolicy;
        the policies added (the answer's ``policies``)."""
        answer = self._call("POST", "/policies", json=dict(document))
        return cast(PolicyList, answer)["policies"]

    def policies(self) -> list[PolicyJson]:
        """Every policy (the answer's ``policies``)."""
        return cast(PolicyList, self._call("GET", "/policies"))["policies"]

    def policy(self, key: str) -> PolicyJson:
        return cast(PolicyJson, self._call("GET", f"/policies/{_seg(key)}"))

    def remove_policy(self, key: str) -> PolicyJson:
        return cast(PolicyJson, self._call("DELETE", f"/policies/{_seg(key)}"))

    def put_network_policy(self, document: Mapping[str, Any]) -> PolicyJson:
        """Add or replace a Kubernetes NetworkPolicy (same namespace and name)."""
        return cast(PolicyJson, self._call("POST", "/k8s/networkpolicies", json=dict(document)))

    def network_policies(self) -> list[dict[str, Any]]:
        """Every Kubernetes NetworkPolicy romanad holds, as it was given (``items``)."""
        return cast(NetworkPolicyList, self._call("GET", "/k8s/networkpolicies"))["items"]

    def remove_network_policy(self, namespace: str, name: str) -> PolicyJson:
        path = f"/k8s/networkpolicies/{_seg(namespace)}/{_seg(name)}"
        return cast(PolicyJson, self._call("DELETE", path))

    # -- routes -----------------------------------------------------------------------
    def routes(self, host: str | None = None, group: str | None = None) -> RouteSetJson:
        """The route set of a host or of a group's router (give exactly one)."""
        params = {k: v for k, v in (("host", host), ("group", group)) if v is not None}
        return cast(RouteSetJson, self._call("GET", "/routes", params=params))

    def routes_summary(self) -> RouteSummary:
        return cast(RouteSummary, self._call("GET", "/routes/summary"))

    def routes_verify(self) -> RouteVerifyReport:
        return cast(RouteVerifyReport, self._call("GET", "/routes/verify"))

    # -- operations -------------------------------------------------------------------
    def health(self) -> Health:
        return cast(Health, self._call("GET", "/healthz"))

    def version(self) -> RomanadVersion:
        """romanad's build, store kind and uptime."""
        return cast(RomanadVersion, self._call("GET", "/version"))

    def metrics(self) -> str:
        """The Prometheus exposition text."""
        return self._send("GET", "/metrics").text

    def watch(self, since: int = 0, timeout: float = 30.0, limit: int = 1000) -> Changes:
        """Long-poll facts after ``since``; a compacted history raises code "resync"."""
        params = {"since": since, "timeout": timeout, "limit": limit}
        # The server may hold the request for ``timeout``; allow that on top of our own.
        read = (self._http.timeout.read or 10) + timeout
        extended = httpx.Timeout(self._http.timeout.connect, read=read)
        return cast(Changes, self._call("GET", "/watch", params=params, timeout=extended))

    # -- plumbing ---------------------------------------------------------------------
    def _call(self, method: str, path: str, **kw: Any) -> Any:
        return _json(self._send(method, path, **kw), method, path, self.url)

    def _all_pages(self, path: str, key: str, params: dict[str, str]) -> dict[str, Any]:
        """Every page of a list endpoint, as one answer. ``revision`` is the first page's:
        watching from it replays whatever changed while the later pages were read."""
        answer = self._call("GET", path, params=params)
        items, cursor = list(answer[key]), answer.get("next")
        while cursor:
            page = self._call("GET", path, params={**params, "after": cursor})
            items += page[key]
            cursor = page.get("next")
        return {**answer, key: items, "next": None}

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        return _checked(response, method, path, self.url)


class AsyncRomanaClient:
    """The agent's view of romanad, asynchronous: the same endpoints, errors and URLs."""

    def __init__(
        self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 10
    ) -> None:
        base, socket_path = endpoint(url)
        transport = httpx.AsyncHTTPTransport(uds=socket_path) if socket_path else None
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self._http = httpx.AsyncClient(
            base_url=base, transport=transport, headers=headers, timeout=timeout
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def allocate(
        self,
        name: str,
        host: str,
        tenant: str = "",
        segment: str = "",
        ip: str | None = None,
        labels: Mapping[str, str] | None = None,
        ports: list[dict[str, Any]] | None = None,
        pod: Mapping[str, str] | None = None,
    ) -> AddressJson:
        """As :meth:`RomanaClient.allocate`."""
        body = _allocation(name, host, tenant, segment, ip, labels, ports, pod)
        return cast(AddressJson, await self._call("POST", "/address", json=body))

    async def routes(self, host: str | None = None, group: str | None = None) -> RouteSetJson:
        params = {"host": host} if host is not None else {"group": group or "/"}
        return cast(RouteSetJson, await self._call("GET", "/routes", params=params))

    async def networks(self) -> list[NetworkJson]:
        return cast(list[NetworkJson], await self._call("GET", "/networks"))

    async def topology(self) -> TopologyDocument:
        """The applied map, annotated (the agent reads outbound NAT from it)."""
        return cast(TopologyDocument, await self._call("GET", "/topology"))

    async def health(self) -> Health:
        return cast(Health, await self._call("GET", "/healthz"))

    async def policy_state(self) -> PolicyState:
        """Endpoints, tenants, hosts and policies at one revision (see romana.policy)."""
        return cast(PolicyState, await self._call("GET", "/policy/state"))

    async def watch(self, since: int = 0, timeout: float = 30.0, limit: int = 1000) -> Changes:
        """Long-poll facts after ``since``; a compacted history raises Resync."""
        params = {"since": since, "timeout": timeout, "limit": limit}
        extended = httpx.Timeout(10.0, read=timeout + 10.0)
        return cast(Changes, await self._call("GET", "/watch", params=params, timeout=extended))

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        return _json(_checked(response, method, path, self.url), method, path, self.url)


def _allocation(
    name: str,
    host: str,
    tenant: str,
    segment: str,
    ip: str | None,
    labels: Mapping[str, str] | None,
    ports: list[dict[str, Any]] | None,
    pod: Mapping[str, str] | None,
) -> dict[str, Any]:
    """A ``POST /address`` body; what is None is left out (romanad keeps what it has)."""
    body: dict[str, Any] = {"name": name, "host": host, "tenant": tenant, "segment": segment}
    if ip is not None:
        body["ip"] = ip
    if labels is not None:
        body["labels"] = dict(labels)
    if ports is not None:
        body["ports"] = ports
    if pod is not None:
        body["pod"] = dict(pod)
    return body


def _checked(response: httpx.Response, method: str, path: str, url: str) -> httpx.Response:
    if response.is_error:
        raise from_wire(response.status_code, response.content, f"{method} {path} at {url}")
    return response


def _json(response: httpx.Response, method: str, path: str, url: str) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise RomanaError(
            f"romanad at {url} sent invalid JSON for {method} {path}", [response.text[:200]]
        ) from exc


def _unreachable(url: str, exc: httpx.TransportError) -> Unreachable:
    if isinstance(exc, httpx.TimeoutException):
        return Unreachable(f"romanad at {url} did not answer in time: {type(exc).__name__}")
    return Unreachable(f"cannot reach romanad at {url}: {exc or type(exc).__name__}")


def _seg(value: str) -> str:
    """Quote one path segment so a name can never change the route."""
    return quote(value, safe="")
