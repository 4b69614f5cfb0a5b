"""The agent's pod directory: a pod's labels and named ports, read from the API server
when the CNI plugin adds it (``K8S_POD_NAMESPACE`` / ``K8S_POD_NAME``), so they go with
the allocation and policies select the pod from its first packet. The plugin itself
stays lean: this runs inside romana-agent."""

from __future__ import annotations

from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Pod

from romana.errors import NotFound, RomanaError, Unreachable
from romana.kube.desired import named_ports

PodMetadata = tuple[dict[str, str], tuple[tuple[str, int, str], ...], str]


class KubePods:
    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def lookup(self, namespace: str, name: str) -> PodMetadata:
        """(labels, named ports, uid); NotFound if the API server has no such pod,
        Unreachable if it cannot be asked."""
        try:
            pod = await self.client.get(Pod, name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                raise NotFound(f"pod {namespace}/{name} not found in the API server") from None
            raise RomanaError(f"the API server refused pod {namespace}/{name}: {exc}") from None
        except Exception as exc:  # httpx2 transport errors, TLS, timeouts
            raise Unreachable(f"cannot reach the API server: {type(exc).__name__}: {exc}") from exc
        ports = tuple((p["name"], p["port"], p["protocol"]) for p in named_ports(pod))
        meta = pod.metadata
        labels = meta.labels if meta is not None else None
        uid = meta.uid if meta is not None else None
        return dict(labels or {}), ports, uid or ""

    async def close(self) -> None:
        await self.client.close()
