"""romanad's answers, its OpenAPI spec and its clients agree: one shape per answer
(``romana.responses``), declared by the handler, published in the spec, returned by the
clients and checked against what a real romanad (in this process, on a real SQLite store)
says. A field added on one side only, a client method reading the wrong endpoint's shape,
or an endpoint without a schema fails here."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import threading
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import TypeAdapter
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from romana import responses
from romana.api.app import create_app
from romana.api.client import AsyncRomanaClient, RomanaClient
from romana.api.routers import ROUTERS
from romana.api.service import IpamService
from romana.cni.lean_client import LeanRomanadClient
from romana.store.sqlite import SqliteStore

from .conftest import racks_topology

# Client methods that return one field of their endpoint's answer, for convenience.
UNWRAPPED = {
    "RomanaClient.tenants": "tenants",
    "RomanaClient.policies": "policies",
    "RomanaClient.add_policy": "policies",
    "RomanaClient.network_policies": "items",
    "LeanRomanadClient.addresses": "addresses",  # every page's addresses of one host
}
ROUTES = [route for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)]
# Endpoints no client calls (a new endpoint must get a client method or a line here).
NOT_CALLED = {("GET", "/networks/{name}/blocks")}


class Recorder:
    """ASGI wrapper noting the requests a client sends (the first one of each call)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


class Romanad:
    def __init__(self, app: FastAPI, recorder: Recorder, url: str) -> None:
        self.app, self.recorder, self.url = app, recorder, url
        self.called: set[tuple[str, str]] = set()

    def route(self, method: str, path: str) -> APIRoute:
        scope = {"type": "http", "method": method, "path": path}
        for route in ROUTES:
            if route.matches(scope)[0] == Match.FULL:
                return route
        raise AssertionError(f"{method} {path}: no route")

    def check(self, name: str, declared: Any, answer: Any) -> Any:
        """The client's declared type is the endpoint's, and the real answer fits it."""
        assert self.recorder.seen, f"{name} sent nothing"
        method, path = self.recorder.seen[0]
        self.recorder.seen.clear()
        route = self.route(method, path)
        self.called.add((method, route.path))
        if route.response_model is None:  # not JSON (/metrics)
            assert declared is str and isinstance(answer, str)
            return answer
        expected = route.response_model
        if name in UNWRAPPED:
            expected = get_type_hints(expected)[UNWRAPPED[name]]
        assert _without_none(declared) == expected, f"{name}: {declared} vs {method} {path}"
        TypeAdapter(declared).validate_python(answer)
        return answer


@pytest.fixture(scope="module")
def romanad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Romanad]:
    store = SqliteStore(tmp_path_factory.mktemp("contract"))
    service = IpamService(store)
    app = create_app(service)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()

    app.router.lifespan_context = lifespan
    recorder = Recorder(app)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(recorder, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):  # started within 5 s, or the test fails below
            if server.started:
                break
            time.sleep(0.01)
        assert server.started, "romanad did not start in this process"
        yield Romanad(app, recorder, f"http://127.0.0.1:{listener.getsockname()[1]}")
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()
        store.close()


def test_every_json_answer_has_a_schema_and_every_error_the_error_shape(
    romanad: Romanad,
) -> None:
    spec = romanad.app.openapi()
    schemas = spec["components"]["schemas"]
    operations = 0
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            operations += 1
            where = f"{method.upper()} {path}"
            answers = operation["responses"]
            ok = next(code for code in answers if code.startswith("2"))
            content = answers[ok].get("content", {})
            if path == "/metrics":
                assert "application/json" not in content, where
                continue
            schema = content["application/json"]["schema"]
            assert schema not in ({}, {"type": "object"}), f"{where}: answer without a schema"
            for codes in ("4XX", "5XX"):
                error = answers[codes]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/ErrorBody"}, where
    assert operations >= 35, "every endpoint is in the spec"
    # The schemas are the shapes' own: a field the shape refuses is refused in the spec too.
    assert schemas["AddressJson"]["additionalProperties"] is False
    assert set(schemas["AddressJson"]["required"]) == {
        "name", "ip", "network", "host", "tenant", "segment", "block"
    }  # fmt: skip
    get_topology = spec["paths"]["/topology"]["get"]["responses"]["200"]["content"]
    assert get_topology["application/json"]["schema"] == {"$ref": "#/components/schemas/Topology"}


def test_clients_return_what_their_endpoints_declare_and_romanad_answers_it(
    romanad: Romanad,
) -> None:
    """Every method of the three clients against one romanad: the method's return type is
    its endpoint's declared shape, and the real answer validates against it (list pages,
    which romanad serialises itself, included)."""

    def sync(client: RomanaClient, name: str, *args: Any, **kw: Any) -> Any:
        method = getattr(client, name)
        declared = get_type_hints(method)["return"]
        return romanad.check(method.__qualname__, declared, method(*args, **kw))

    async def call_async(client: Any, name: str, *args: Any, **kw: Any) -> Any:
        method: Callable[..., Awaitable[Any]] = getattr(client, name)
        declared = get_type_hints(method)["return"]
        return romanad.check(method.__qualname__, declared, await method(*args, **kw))

    pod = {"namespace": "shop", "name": "web-1", "uid": "u-1"}
    port = {"name": "http", "port": 80, "protocol": "TCP"}
    web = {"app": "web"}
    k8s = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "shop"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    native = {
        "id": "web-in",
        "direction": "ingress",
        "applied_to": [{"tenant_id": "shop"}],
        "ingress": [{"peers": [{"cidr": "10.9.0.0/16"}], "rules": [{"protocol": "TCP"}]}],
    }
    with RomanaClient(romanad.url) as c:
        sync(c, "apply_topology", racks_topology(2))
        sync(c, "topology")
        sync(c, "add_host", "h1", "192.168.0.1", {"rack": "rack-1"})
        sync(c, "add_host", "h2", "192.168.0.2", {"rack": "rack-2"})
        sync(c, "set_labels", "h2", {"rack": "rack-2", "disk": "ssd"})
        sync(c, "host", "h1")
        sync(c, "hosts")
        address = sync(c, "allocate", "a1", "h1", "shop", labels=web, ports=[port], pod=pod)
        assert address["pod"] == pod and address["ports"] == [{**port, "protocol": "tcp"}]
        sync(c, "allocate", "a2", "h2", "shop", ip=None)
        sync(c, "label_endpoint", "a2", {"app": "db"})
        sync(c, "address", "a1")
        sync(c, "addresses", host="h1")
        sync(c, "networks")
        sync(c, "blocks")
        sync(c, "add_blackout", "net", "10.1.255.0/24")
        sync(c, "blackouts", "net")
        sync(c, "remove_blackout", "net", "10.1.255.0/24")
        sync(c, "label_tenant", "shop", {"team": "shop"})
        sync(c, "tenant", "shop")
        sync(c, "tenants")
        sync(c, "add_policy", native)
        sync(c, "policies")
        sync(c, "policy", "web-in")
        sync(c, "put_network_policy", k8s)
        sync(c, "network_policies")
        sync(c, "remove_network_policy", "shop", "deny")
        sync(c, "remove_policy", "web-in")
        sync(c, "routes", host="h1")
        sync(c, "routes", group="/")
        sync(c, "routes_summary")
        verified = sync(c, "routes_verify")
        assert verified["ok"] and verified["addresses"] == 2
        sync(c, "health")
        sync(c, "version")
        sync(c, "metrics")
        sync(c, "watch", since=0, timeout=0)
        sync(c, "release", "a2")

    async def other_clients() -> None:
        agent = AsyncRomanaClient(romanad.url)
        try:
            await call_async(agent, "allocate", "b1", "h2", "shop")
            await call_async(agent, "routes", host="h2")
            await call_async(agent, "networks")
            await call_async(agent, "topology")
            await call_async(agent, "health")
            await call_async(agent, "policy_state")
            await call_async(agent, "watch", since=1, timeout=0)
        finally:
            await agent.close()
        lean = LeanRomanadClient(romanad.url)
        try:
            await call_async(lean, "allocate", "c1", "h1", "shop", pod=pod)
            await call_async(lean, "address", "c1")
            assert await lean.address("nothing") is None  # 404: None, as declared
            romanad.recorder.seen.clear()
            await call_async(lean, "addresses", "h1")
            await call_async(lean, "host", "h1")
            await call_async(lean, "release", "c1")
        finally:
            await lean.close()

    asyncio.run(other_clients())
    with RomanaClient(romanad.url) as c:
        sync(c, "add_host", "h3", "192.168.0.3", {"rack": "rack-1"})
        sync(c, "remove_host", "h3")
    every = {(method, route.path) for route in ROUTES for method in route.methods}
    assert every - romanad.called == NOT_CALLED


def test_every_client_method_is_exercised_above() -> None:
    """A new client method must join the scenario (so its type is tied to its endpoint)."""
    source = inspect.getsource(
        test_clients_return_what_their_endpoints_declare_and_romanad_answers_it
    )
    for client in (RomanaClient, AsyncRomanaClient, LeanRomanadClient):
        for name, member in vars(client).items():
            public = not name.startswith("_") and name not in {"close", "call"}
            if public and inspect.isfunction(member):
                assert f'"{name}"' in source, f"{client.__name__}.{name} is not checked"


def _without_none(declared: Any) -> Any:
    """``X | None`` -> ``X``: a client answers None for "not found" by design."""
    if get_origin(declared) in (Union, types.UnionType):
        kept = [a for a in get_args(declared) if a is not type(None)]
        if len(kept) == 1:
            return kept[0]
    return declared


def test_the_shapes_refuse_fields_they_do_not_declare() -> None:
    shapes = [v for v in vars(responses).values() if isinstance(v, type) and issubclass(v, dict)]
    assert len(shapes) >= 30
    block = {
        "cidr": "10.1.0.0/29",
        "network": "net",
        "group": "rack-1",
        "host": "h1",
        "tenant": "",
        "segment": "",
        "allocated_ip_count": 1,
    }
    TypeAdapter(responses.BlockJson).validate_python(block)
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        TypeAdapter(responses.BlockJson).validate_python({**block, "owner": "h1"})
