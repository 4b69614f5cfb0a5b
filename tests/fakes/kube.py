"""A Kubernetes API server for tests, since no kube-apiserver can run on these machines:
list, watch and write in the real wire format, with cut streams, compacted history and
refusals on demand. kubectl and lightkube are run against it to show it speaks the real
thing (``tests/test_kube_api.py``); ``tests/kube.py`` builds test clusters on it."""

from __future__ import annotations

import asyncio
import copy
import threading
import uuid
from typing import Any


class KubeKind:
    """One resource the test API server serves."""

    def __init__(self, group_version: str, kind: str, plural: str, namespaced: bool) -> None:
        self.group_version, self.kind, self.plural = group_version, kind, plural
        self.namespaced = namespaced
        self.group = group_version.rpartition("/")[0]


KUBE_KINDS = {
    k.plural: k
    for k in (
        KubeKind("v1", "Node", "nodes", False),
        KubeKind("v1", "Namespace", "namespaces", False),
        KubeKind("v1", "Pod", "pods", True),
        KubeKind("v1", "Event", "events", True),
        KubeKind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", True),
        KubeKind("v1", "Secret", "secrets", True),
    )
}


class _Watcher:
    def __init__(self, kind: KubeKind, namespace: str | None) -> None:
        self.kind, self.namespace = kind, namespace
        # An event, a raw line (bytes: sent as they are), or None: cut the stream.
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]] | bytes | None] = asyncio.Queue()


class FakeKubeApi:
    """The Kubernetes API as the listener and kubectl use it, in memory (no kube-apiserver
    can run on these machines). Real wire format, real semantics where a client can tell:

    - one resourceVersion counter for every object (as etcd's revision); lists carry it;
    - lists page with ``limit``/``continue``, every page at the first page's version;
    - ``?watch=1`` streams one JSON event per line over chunked encoding, from the given
      resourceVersion (history replayed), or, without one, ADDED for every object first;
      ``allowWatchBookmarks`` adds BOOKMARK events (an object with only a resourceVersion);
      a version older than the compacted history gets an ERROR event with a 410 Status;
    - create (409 AlreadyExists), replace (409 Conflict on a stale resourceVersion), merge
      patch (also on ``/status``), delete (a DELETED event with the last state);
    - Secrets admitted as the real server does (``data`` must be base64, ``stringData`` is
      merged into it, ``type`` defaults to Opaque); ``calls`` lists every request as
      (RBAC verb, resource, namespace, name), to compare with a Role's rules.

    Faults, under ``/_test/``: ``cut`` ends every watch stream mid-line (the connection drops
    without the closing chunk), ``compact`` forgets the history up to now, ``refuse?n=N``
    answers the next N watch requests 429, ``raw?plural=P`` writes a line (the body, or
    ``&line=``) as it is into every open watch of that kind (an unknown event type, an
    object of another kind: what a broken or hostile server sends), ``stats`` counts
    requests by verb.
    """

    def __init__(self, token: str | None = None, bookmark_interval: float = 1.0) -> None:
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.revision = 1
        self.compacted = 0  # a watch from below this version gets 410
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # rv, plural, type, obj
        self.watchers: set[_Watcher] = set()
        self.refuse_watches = 0
        self.requests: dict[str, int] = {}
        # (verb, plural, namespace, name) of every resource request, in order: what an RBAC
        # Role would have to allow (tests compare it with the manifests' rules).
        self.calls: list[tuple[str, str, str | None, str | None]] = []
        self._pages: dict[str, list[dict[str, Any]]] = {}

    # -- the ASGI app -----------------------------------------------------------------------
    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.routing import Route

        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        return Starlette(routes=[Route("/{path:path}", self._handle, methods=methods)])

    async def _handle(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        path = request.url.path.rstrip("/")
        if path.startswith("/_test/"):
            if path == "/_test/raw":
                given = request.query_params.get("line")
                line = given.encode() if given is not None else await request.body()
                return JSONResponse(self._raw(request.query_params["plural"], line))
            return JSONResponse(self._control(path.removeprefix("/_test/"), request))
        if self.token is not None and request.headers.get("authorization") != (
            f"Bearer {self.token}"
        ):
            return _status(401, "Unauthorized", "Unauthorized")
        discovery = self._discovery(path)
        if discovery is not None:
            return JSONResponse(discovery)
        target = self._target(path)
        if target is None:
            return _status(
                404, "NotFound", f"the server could not find the requested resource {path}"
            )
        kind, namespace, name, sub = target
        params = request.query_params
        verb = request.method.lower()
        watching = params.get("watch") in ("1", "true")
        counted = "watch" if watching else verb
        self.requests[counted] = self.requests.get(counted, 0) + 1
        rbac_verb = {"post": "create", "put": "update"}.get(verb, verb)
        if verb == "get":
            rbac_verb = "watch" if watching else ("list" if name is None else "get")
        self.calls.append((rbac_verb, kind.plural, namespace, name))
        for selector in ("labelSelector", "fieldSelector"):
            if params.get(selector):
                return _status(400, "BadRequest", f"this test server has no {selector}")
        if verb == "get" and name is None:
            if watching:
                return self._watch(kind, namespace, params)
            return JSONResponse(self._list(kind, namespace, params))
        if verb == "get":
            found = self.objects.get((kind.plural, namespace or "", name or ""))
            if found is None:
                return _not_found(kind, name or "")
            return JSONResponse(found)
        body = await request.json() if verb in ("post", "put", "patch") else None
        return self._write(verb, kind, namespace, name, sub, body)

    # -- faults -----------------------------------------------------------------------------
    def _control(self, what: str, request: Any) -> dict[str, Any]:
        if what == "cut":
            for watcher in list(self.watchers):
                watcher.queue.put_nowait(None)
            return {"cut": len(self.watchers)}
        if what == "compact":
            self.compacted = self.revision + 1
            self.history.clear()
            return {"compacted": self.compacted}
        if what == "refuse":
            self.refuse_watches = int(request.query_params.get("n", "1"))
            return {"refusing": self.refuse_watches}
        if what == "stats":
            return {"requests": dict(self.requests), "watchers": len(self.watchers)}
        return {"error": f"no such control {what}"}

    def _raw(self, plural: str, line: bytes) -> dict[str, Any]:
        kind = KUBE_KINDS[plural]
        watchers = [w for w in self.watchers if w.kind is kind]
        for watcher in watchers:
            watcher.queue.put_nowait(line if line.endswith(b"\n") else line + b"\n")
        return {"raw": len(watchers)}

    # -- reads ------------------------------------------------------------------------------
    def _matching(self, kind: KubeKind, namespace: str | None) -> list[dict[str, Any]]:
        return [
            obj
            for (plural, ns, _), obj in sorted(self.objects.items())
            if plural == kind.plural and (namespace is None or ns == namespace)
        ]

    def _list(self, kind: KubeKind, namespace: str | None, params: Any) -> dict[str, Any]:
        token = params.get("continue")
        if token:
            rv = token.partition(":")[0]
            items = self._pages.pop(token, [])
        else:
            rv = str(self.revision)
            items = [_without_type(o) for o in self._matching(kind, namespace)]
        limit = int(params.get("limit") or 0)
        metadata: dict[str, Any] = {"resourceVersion": rv}
        if limit and len(items) > limit:
            rest = items[limit:]
            items = items[:limit]
            following = f"{rv}:{uuid.uuid4().hex}"
            self._pages[following] = rest
            metadata["continue"] = following
            metadata["remainingItemCount"] = len(rest)
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.group_version,
            "metadata": metadata,
            "items": items,
        }

    def _watch(self, kind: KubeKind, namespace: str | None, params: Any) -> Any:
        from starlette.responses import StreamingResponse

        if self.refuse_watches > 0:
            self.refuse_watches -= 1
            return _status(429, "TooManyRequests", "the server is busy, try again later")
        since = params.get("resourceVersion") or ""
        bookmarks = params.get("allowWatchBookmarks") in ("1", "true")
        timeout = float(params.get("timeoutSeconds") or 1800)
        watcher = _Watcher(kind, namespace)
        first: list[tuple[str, dict[str, Any]]] = []
        if since in ("", "0"):
            first = [("ADDED", obj) for obj in self._matching(kind, namespace)]
        elif int(since) < self.compacted - 1:
            gone = _status_body(
                410, "Expired", f"too old resource version: {since} ({self.compacted - 1})"
            )
            first = [("ERROR", gone)]
        else:
            first = [
                (event, obj)
                for rv, plural, event, obj in self.history
                if rv > int(since) and plural == kind.plural and _in(obj, namespace)
            ]
        expired = bool(first) and first[0][0] == "ERROR"
        if not expired:
            self.watchers.add(watcher)

        async def stream() -> Any:
            try:
                for event, obj in first:
                    yield _line(event, obj)
                if expired:
                    return
                loop = asyncio.get_running_loop()
                ends = loop.time() + timeout
                while (left := ends - loop.time()) > 0:
                    wait = min(left, self.bookmark_interval) if bookmarks else left
                    try:
                        item = await asyncio.wait_for(watcher.queue.get(), wait)
                    except TimeoutError:
                        if bookmarks:
                            yield _line("BOOKMARK", self._bookmark(kind))
                        continue
                    if item is None:
                        yield b'{"type":"MODIFIED","object":{"kind":'
                        raise ConnectionAbortedError("watch cut by the test")
                    yield item if isinstance(item, bytes) else _line(*item)
            finally:
                self.watchers.discard(watcher)

        return StreamingResponse(stream(), media_type="application/json")

    def _bookmark(self, kind: KubeKind) -> dict[str, Any]:
        return {
            "kind": kind.kind,
            "apiVersion": kind.group_version,
            "metadata": {"resourceVersion": str(self.revision)},
        }

    # -- writes -----------------------------------------------------------------------------
    def _write(
        self,
        verb: str,
        kind: KubeKind,
        namespace: str | None,
        name: str | None,
        sub: str | None,
        body: Any,
    ) -> Any:
        from starlette.responses import JSONResponse

        if verb == "post":
            if not isinstance(body, dict) or not body.get("metadata", {}).get("name"):
                return _status(422, "Invalid", "metadata.name: Required value")
            name = str(body["metadata"]["name"])
        key = (kind.plural, namespace or "", name or "")
        old = self.objects.get(key)
        if verb in ("post", "put") and kind.plural == "secrets":
            invalid = _admit_secret(body)
            if invalid:
                return _status(422, "Invalid", invalid)
        if verb == "post":
            if old is not None:
                return _status(409, "AlreadyExists", f'{kind.plural} "{name}" already exists')
            obj = copy.deepcopy(body)
            meta = obj["metadata"]
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = "2026-12-01T00:00:00Z"
            if kind.namespaced:
                meta["namespace"] = namespace
            return JSONResponse(self._commit(kind, key, "ADDED", obj), status_code=201)
        if old is None:
            return _not_found(kind, name or "")
        if verb == "delete":
            del self.objects[key]
            gone = copy.deepcopy(old)
            self.revision += 1
            gone["metadata"]["resourceVersion"] = str(self.revision)
            self._publish(kind, "DELETED", gone)
            return JSONResponse(_status_body(200, "", "deleted") | {"status": "Success"})
        if verb == "put":
            given = str(body.get("metadata", {}).get("resourceVersion") or "")
            if given and given != old["metadata"]["resourceVersion"]:
                return _status(
                    409,
                    "Conflict",
                    "the object has been modified; please apply "
                    "your changes to the latest version and try again",
                )
            obj = copy.deepcopy(body)
            if sub == "status":
                obj = {**copy.deepcopy(old), "status": obj.get("status", {})}
        else:
            obj = _merge_patch(copy.deepcopy(old), body)
        for kept in ("uid", "creationTimestamp", "namespace"):
            if kept in old["metadata"]:
                obj.setdefault("metadata", {})[kept] = old["metadata"][kept]
        obj["metadata"]["name"] = name
        unchanged = {**obj, "metadata": {**obj["metadata"], "resourceVersion": ""}}
        before = {**old, "metadata": {**old["metadata"], "resourceVersion": ""}}
        if unchanged == before:
            return JSONResponse(old)  # as the real server: a no-op write is no new version
        return JSONResponse(self._commit(kind, key, "MODIFIED", obj))

    def _commit(
        self, kind: KubeKind, key: tuple[str, str, str], event: str, obj: dict[str, Any]
    ) -> dict[str, Any]:
        self.revision += 1
        obj["kind"], obj["apiVersion"] = kind.kind, kind.group_version
        obj["metadata"]["resourceVersion"] = str(self.revision)
        self.objects[key] = obj
        self._publish(kind, event, obj)
        return obj

    def _publish(self, kind: KubeKind, event: str, obj: dict[str, Any]) -> None:
        self.history.append((self.revision, kind.plural, event, copy.deepcopy(obj)))
        for watcher in list(self.watchers):
            if watcher.kind is kind and _in(obj, watcher.namespace):
                watcher.queue.put_nowait((event, copy.deepcopy(obj)))

    # -- paths and discovery ----------------------------------------------------------------
    def _target(self, path: str) -> tuple[KubeKind, str | None, str | None, str | None] | None:
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "v1"]:
            group_version, rest = "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return None
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in KUBE_KINDS:
            namespace, rest = rest[1], rest[2:]
        if not rest or rest[0] not in KUBE_KINDS or len(rest) > 3:
            return None
        kind = KUBE_KINDS[rest[0]]
        if kind.group_version != group_version or (namespace is not None and not kind.namespaced):
            return None
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        return kind, namespace, name, sub

    def _discovery(self, path: str) -> dict[str, Any] | None:
        if path == "/version":
            return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-romana-test"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        groups = sorted({k.group_version for k in KUBE_KINDS.values() if k.group})
        if path == "/apis":
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": gv.partition("/")[0],
                        "versions": [{"groupVersion": gv, "version": gv.partition("/")[2]}],
                        "preferredVersion": {"groupVersion": gv, "version": gv.partition("/")[2]},
                    }
                    for gv in groups
                ],
            }
        for gv in ["v1", *groups]:
            if path == ("/api/v1" if gv == "v1" else f"/apis/{gv}"):
                return {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": gv,
                    "resources": [
                        {
                            "name": k.plural,
                            "singularName": k.kind.lower(),
                            "namespaced": k.namespaced,
                            "kind": k.kind,
                            "verbs": [
                                "create",
                                "delete",
                                "get",
                                "list",
                                "patch",
                                "update",
                                "watch",
                            ],
                        }
                        for k in KUBE_KINDS.values()
                        if k.group_version == gv
                    ],
                }
        return None


class KubeApiThread:
    """A :class:`FakeKubeApi` served by uvicorn on a loopback port, in a thread of the test."""

    def __init__(
        self, api: FakeKubeApi, port: int, tls_dir: str, also: tuple[str, str] | None = None
    ) -> None:
        """Served over TLS with a certificate made for this run in ``tls_dir`` (kubectl
        sends a bearer token only over TLS, as a client of a real API server must).
        ``also=(netns, ip)``: also listen on ``ip:port`` inside that network namespace, for
        processes there (a socket keeps the namespace it was made in)."""
        import socket
        import subprocess

        import uvicorn

        self.api, self.port = api, port
        self.url = f"https://127.0.0.1:{port}"
        self.ca = f"{tls_dir}/apiserver.crt"
        key = f"{tls_dir}/apiserver.key"
        names = "IP:127.0.0.1" + (f",IP:{also[1]}" if also else "")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-keyout", key,
             "-out", self.ca, "-subj", "/CN=romana-test-apiserver",
             "-addext", f"subjectAltName={names}"],
            check=True, capture_output=True,
        )  # fmt: skip
        self.sockets = [socket.create_server(("127.0.0.1", port))]
        if also is not None:
            self.sockets.append(_socket_in_netns(also[0], (also[1], port)))
        config = uvicorn.Config(
            api.app(),
            log_level="error",
            lifespan="off",
            ssl_certfile=self.ca,
            ssl_keyfile=key,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": self.sockets}, daemon=True
        )

    def start(self) -> KubeApiThread:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the test Kubernetes API server did not start")
            threading.Event().wait(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.server.force_exit = True
        self.thread.join(10)
        for sock in self.sockets:
            sock.close()

    def kubeconfig_at(self, ip: str, token: str | None = None) -> dict[str, Any]:
        """The kubeconfig for a client that reaches the server at ``ip`` (see ``also``)."""
        config = self.kubeconfig(token)
        config["clusters"][0]["cluster"]["server"] = f"https://{ip}:{self.port}"
        return config

    def kubeconfig(self, token: str | None = None) -> dict[str, Any]:
        user: dict[str, Any] = {"token": token} if token else {}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {"server": self.url, "certificate-authority": self.ca},
                }
            ],
            "users": [{"name": "test", "user": user}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            "current-context": "test",
        }


def _socket_in_netns(netns: str, address: tuple[str, int]) -> Any:
    """A listening TCP socket made inside ``netns`` (by a thread that enters it)."""
    import ctypes
    import os
    import socket

    made: list[Any] = []

    def enter_and_bind() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET: this thread only
                raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
        finally:
            os.close(fd)
        made.append(socket.create_server(address))

    worker = threading.Thread(target=enter_and_bind)
    worker.start()
    worker.join()
    if not made:
        raise RuntimeError(f"could not listen on {address} in {netns}")
    return made[0]


def _admit_secret(body: dict[str, Any]) -> str | None:
    """As kube-apiserver admits a Secret: ``data`` values must be base64 (else 422),
    ``stringData`` is merged into ``data`` (encoded) and never stored, ``type`` defaults
    to Opaque. Changes ``body`` in place; returns the refusal, if any."""
    import base64
    import binascii

    data = body.setdefault("data", {}) or {}
    for key, value in data.items():
        try:
            base64.b64decode(str(value), validate=True)
        except binascii.Error:
            return f"data[{key}]: Invalid value: illegal base64 data"
    for key, value in (body.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    body["data"] = data
    body.setdefault("type", "Opaque")
    return None


def _in(obj: dict[str, Any], namespace: str | None) -> bool:
    return namespace is None or obj.get("metadata", {}).get("namespace") == namespace


def _without_type(obj: dict[str, Any]) -> dict[str, Any]:
    """List items, as the real server sends them, carry no kind or apiVersion."""
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def _line(event: str, obj: dict[str, Any]) -> bytes:
    import json

    return json.dumps({"type": event, "object": obj}).encode() + b"\n"


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


def _status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _status(code: int, reason: str, message: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(_status_body(code, reason, message), status_code=code)


def _not_found(kind: KubeKind, name: str) -> Any:
    return _status(404, "NotFound", f'{kind.plural} "{name}" not found')
