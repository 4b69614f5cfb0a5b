"""What romanad should hold for the cluster's objects: pure functions of the objects.

- Node -> host: name, InternalIP, the node's labels (zone and region labels, old and new
  spellings, are just labels: the topology's ``assignment`` picks which to match), plus
  :data:`MANAGED` so the listener removes only the hosts it added.
- Namespace -> tenant labels.
- Pod -> the labels and named ports of the endpoints it holds (:mod:`romana.kube.endpoints`
  pairs them). Pods on the host network, finished pods and terminating pods hold no
  address of ours worth labelling: a terminating pod's IP may already be another pod's.
- NetworkPolicy -> the document romanad's Kubernetes policy API takes, or, if it cannot be
  translated, its fail-closed stand-in (:meth:`NetworkPolicy.isolating`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from romana import names
from romana.errors import InvalidRequest
from romana.policy.k8s import NOT_ENFORCED, NetworkPolicy

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
    name: str
    uid: str  # "" when the object has none
    node: str | None
    ip: str | None  # status.podIP when IPv4, else None
    labels: dict[str, str]
    ports: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """The source romanad should hold; ``not_enforced`` says why, when it is the stand-in."""

    source: dict[str, Any]
    not_enforced: str | None = None


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
    """Named container ports in romanad's form: sorted, one per name and protocol.

    Kubernetes refuses a name twice within one container, not across containers; the
    first declared (containers, then init containers, in order) is kept, and romanad,
    which refuses duplicates, never sees the others."""
    found: dict[tuple[str, str], int] = {}
    containers = list(pod.spec.containers or []) + list(pod.spec.initContainers or [])
    for container in containers:
        for port in container.ports or []:
            if not port.name or names.PORT_NAME.problem(port.name) is not None:
                continue
            key = (port.name, (port.protocol or "TCP").lower())
            kept = found.setdefault(key, port.containerPort)
            if kept != port.containerPort:
                meta = pod.metadata
                _duplicate_port(f"{meta.namespace}/{meta.name}", *key, kept, port.containerPort)
    return [{"name": n, "port": p, "protocol": pr} for (n, pr), p in sorted(found.items())]


@lru_cache(maxsize=1024)  # remembers what it said: once per pod and port, bounded
def _duplicate_port(pod: str, name: str, protocol: str, kept: int, ignored: int) -> None:
    log.warning(
        "pod declares a named port twice; the first is used",
        extra={"pod": pod, "port": f"{name}/{protocol}", "kept": kept, "ignored": ignored},
    )


def endpoint(pod: Any) -> EndpointSpec | None:
    """None for a pod whose addresses the listener must not label (see :func:`live`)."""
    if not live(pod):
        return None
    meta, spec = pod.metadata, pod.spec
    return EndpointSpec(
        pod=f"{meta.namespace}/{meta.name}",
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid or "",
        node=spec.nodeName,
        ip=_ipv4_pod_ip(pod),
        labels=dict(meta.labels or {}),
        ports=named_ports(pod),
    )


def live(pod: Any) -> bool:
    """False for a pod on the host network, finished, or terminating: its IP may already
    be a new pod's, and labelling by it would hand the new pod the old one's labels."""
    spec, status = pod.spec, pod.status
    if spec is None or spec.hostNetwork or pod.metadata.deletionTimestamp is not None:
        return False
    return status is None or status.phase not in ("Succeeded", "Failed")


def live_ip(pod: Any) -> str | None:
    """The IPv4 ``status.podIP`` of a live pod."""
    return _ipv4_pod_ip(pod) if live(pod) else None


def _ipv4_pod_ip(pod: Any) -> str | None:
    ip = pod.status.podIP if pod.status is not None else None
    return ip if ip and ":" not in ip else None


def policy_document(policy: Any) -> dict[str, Any]:
    """The NetworkPolicy as a document, without the stand-in's marker: only the listener
    puts that there, so that a stored marker always means "not enforced as written"."""
    document: dict[str, Any] = policy.to_dict()
    annotations = document.get("metadata", {}).get("annotations")
    if isinstance(annotations, dict):
        annotations.pop(NOT_ENFORCED, None)
    return document


def network_policy(policy: Any) -> PolicySpec:
    """romanad's canonical form of the NetworkPolicy, or its fail-closed stand-in if it
    cannot be translated (romanad would refuse it the same way)."""
    document = policy_document(policy)
    try:
        return PolicySpec(NetworkPolicy.model_validate(document).source())
    except ValidationError as exc:
        reason = f"cannot be translated: {first_problem(exc)}"
    return stand_in(document, reason)


def stand_in(document: dict[str, Any], reason: str) -> PolicySpec:
    """The fail-closed stand-in of a policy not enforced as written, for ``reason``;
    InvalidRequest if even that cannot be made (a name or namespace romana refuses)."""
    try:
        return PolicySpec(NetworkPolicy.isolating(document, reason).source(), reason)
    except ValidationError as exc:
        raise InvalidRequest(f"not even its stand-in can be made: {first_problem(exc)}") from None


def first_problem(exc: ValidationError) -> str:
    """A validation failure in one line: the first problem, and how many more."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"
