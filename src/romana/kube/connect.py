"""The Kubernetes client: lightkube, configured from a kubeconfig or in-cluster.

Why lightkube (docs/kubernetes.md): typed models, a small package, list pages that carry
their resourceVersion. Its watch has two gaps for a reconciler, closed here: it has no
``allowWatchBookmarks`` parameter, and on 410 Gone it silently restarts from "now", which
loses every deletion made while the watch was away; and it decodes every watched object
as the watched kind. :func:`watch` asks for bookmarks, lets every error (410 included)
reach the caller, which re-lists and reconciles, and tells events of unknown types and
objects of other kinds apart, so the caller can ignore them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import msgspec
from lightkube import ApiError, AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core import decoders

from romana.errors import InvalidRequest

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
WATCH_SECONDS = 290  # the server ends each watch after this; the client opens the next
EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK"})  # and ERROR: raised


def load_config(kubeconfig: Path | None, context: str | None = None) -> KubeConfig:
    """``--kubeconfig``, else ``$KUBECONFIG``, else in-cluster, else ``~/.kube/config``."""
    try:
        if kubeconfig is not None:
            return KubeConfig.from_file(kubeconfig)
        if os.environ.get("KUBECONFIG"):
            return KubeConfig.from_file(os.environ["KUBECONFIG"].split(os.pathsep)[0])
        if Path(SERVICE_ACCOUNT, "token").exists():
            return KubeConfig.from_service_account(SERVICE_ACCOUNT)
        return KubeConfig.from_file(Path("~/.kube/config").expanduser())
    except Exception as exc:  # lightkube raises ConfigError, OSError or YAML errors
        where = kubeconfig or os.environ.get("KUBECONFIG") or "in-cluster / ~/.kube/config"
        raise InvalidRequest(f"cannot load the Kubernetes configuration ({where}): {exc}") from exc


def connect(config: KubeConfig, context: str | None = None) -> AsyncClient:
    return AsyncClient(
        config.get(context),
        field_manager="romana",
        timeout=httpx2.Timeout(10.0),
        trust_env=False,
    )


class OtherKind:
    """In place of an object whose ``kind`` names another kind than the one watched (only a
    broken or hostile API server sends one): never decoded as the watched kind."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind


class _Kind(msgspec.Struct):
    kind: str | None = None


async def watch(
    client: AsyncClient, resource: Any, namespace: str | None, resource_version: str
) -> AsyncIterator[tuple[str, Any]]:
    """(event type, object) from ``resource_version`` on, BOOKMARKs included; raises on
    any error (an ERROR event is an ApiError, 410 for a version too old).

    The object is the watched resource, except: :class:`OtherKind` for an object whose
    ``kind`` is present and another, and None for an event of a type the watch protocol
    does not have (only ADDED, MODIFIED, DELETED, BOOKMARK and ERROR exist): its object
    is not even decoded. lightkube's own watch cannot tell either apart (it decodes every
    object as the watched kind, ``kind`` included), so the stream is read here, line by
    line, with lightkube's request builder and decoders."""
    generic: Any = client._client  # the request builder (AsyncClient.watch hides it)
    request = generic.prepare_request(
        "list",
        res=resource,
        namespace=namespace,
        watch=True,
        params={
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": WATCH_SECONDS,
        },
    )
    request.timeout = generic._watch_timeout  # no read timeout: bookmarks keep it alive
    kind = str(resource.__name__)
    response = await generic.send(generic.build_adapter_request(request), stream=True)
    try:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.strip():
                continue  # not an event (the protocol has none), nothing to decode
            event = decoders.decode_watch_event(line)
            if event.type == "ERROR":
                raise ApiError(status=decoders.decode_status(event.object))
            if event.type not in EVENT_TYPES:
                yield event.type, None
                continue
            given = msgspec.json.decode(event.object, type=_Kind).kind
            if given is not None and given != kind:
                yield event.type, OtherKind(given)
                continue
            yield event.type, decoders.decode_object(event.object, resource)
    finally:
        await response.aclose()
