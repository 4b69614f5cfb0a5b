"""What romanad should hold for the cluster's objects: pure functions of the objects.

- Node -> host: name, InternalIP, the node's labels (zone and region labels, old and new
  spellings, are just labels: the topology's ``assignment`` picks which to match), plus
  :data:`MANAGED` so the listener removes only the hosts it added.
- Namespace -> tenant labels.
- Pod -> the labels and named ports of the endpoint holding the pod's IP (pods on the
  host network and finished pods hold no address of ours).
- NetworkPolicy -> the document romanad's Kubernetes policy API takes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from romana import names
from romana.policy.k8s import NetworkPolicy

log = logging.getLogger("romana.kube")
MANAGED = ("romana.io/managed-by", "romana-listener")


@dataclass(frozen=True, slots=True)
class HostSpec:
    name: str
    ip: str
    labels: dict[str, str]


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    pod: str  # namespace/name
    namespace: str
    ip: str
    labels: dict[str, str]
    ports: list[dict[str, Any]]


def host(node: Any) -> HostSpec | None:
    """None for a node romanad cannot take yet (no InternalIP reported)."""
    ips = [a.address for a in (node.status.addresses or []) if a.type == "InternalIP"]
    ipv4 = [ip for ip in ips if ":" not in ip]
    if not ipv4:
        return None
    labels = dict(node.metadata.labels or {})
    labels[MANAGED[0]] = MANAGED[1]
    return HostSpec(node.metadata.name, ipv4[0], labels)


def tenant_labels(namespace: Any) -> dict[str, str]:
    return dict(namespace.metadata.labels or {})


def named_ports(pod: Any) -> list[dict[str, Any]]:
    """Named container ports in romanad's form (sorted, one per name and protocol)."""
    found: dict[tuple[str, str], int] = {}
    containers = list(pod.spec.containers or []) + list(pod.spec.initContainers or [])
    for container in containers:
        for port in container.ports or []:
            if port.name and names.PORT_NAME.problem(port.name) is None:
                found[(port.name, (port.protocol or "TCP").lower())] = port.containerPort
    return [{"name": n, "port": p, "protocol": pr} for (n, pr), p in sorted(found.items())]


def endpoint(pod: Any) -> EndpointSpec | None:
    """None while the pod has no address of ours (not started, host network, finished)."""
    status, spec = pod.status, pod.spec
    if status is None or spec is None or spec.hostNetwork:
        return None
    if status.phase in ("Succeeded", "Failed") or not status.podIP or ":" in status.podIP:
        return None
    meta = pod.metadata
    return EndpointSpec(
        f"{meta.namespace}/{meta.name}",
        meta.namespace,
        status.podIP,
        dict(meta.labels or {}),
        named_ports(pod),
    )


def network_policy(policy: Any) -> dict[str, Any] | None:
    """romanad's canonical form of the NetworkPolicy, or None (logged) if it cannot be
    enforced (romanad would refuse it the same way)."""
    document = policy.to_dict()
    try:
        return NetworkPolicy.model_validate(document).source()
    except ValidationError as exc:
        log.error(
            "NetworkPolicy cannot be translated; it is not enforced",
            extra={"policy": f"{policy.metadata.namespace}/{policy.metadata.name}",
                   "error": str(exc.errors()[0].get("msg"))},
        )  # fmt: skip
        return None
