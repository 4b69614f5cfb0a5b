"""The Kubernetes client: lightkube, configured from a kubeconfig or in-cluster.

Why lightkube (docs/kubernetes.md): typed models, a small package, list pages that carry
their resourceVersion. Its watch has two gaps for a reconciler, closed here: it has no
``allowWatchBookmarks`` parameter, and on 410 Gone it silently restarts from "now", which
loses every deletion made while the watch was away. :func:`watch` asks for bookmarks and
lets every error (410 included) reach the caller, which re-lists and reconciles.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig

from romana.errors import InvalidRequest

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
WATCH_SECONDS = 290  # the server ends each watch after this; the client opens the next


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


async def watch(
    client: AsyncClient, resource: Any, namespace: str | None, resource_version: str
) -> AsyncIterator[tuple[str, Any]]:
    """(event type, object) from ``resource_version`` on, BOOKMARKs included; raises on
    any error (an ERROR event is an ApiError, 410 for a version too old)."""
    generic = client._client  # the request builder; AsyncClient.watch hides the parameter
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
    async for event in generic.watch(request):  # on_error defaults to raising
        yield event
