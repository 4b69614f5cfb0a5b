"""An independent oracle of Kubernetes networking.k8s.io/v1 NetworkPolicy semantics.

Written directly from the Kubernetes v1 API reference (NetworkPolicySpec, NetworkPolicyPeer,
NetworkPolicyPort, IPBlock, LabelSelector) and the NetworkPolicy concept page, plus the
apiserver's v1 defaulting of ``policyTypes``. It deliberately shares no code with ``romana``
(stdlib only), so that it can compute the expected truth table of end-to-end tests. It aims to
be obviously right, not fast.

Scope: the verdict is for the *initiating* direction of a connection only. Replies to an
allowed connection always pass (NetworkPolicy is connection-oriented), so they need no verdict.
Malformed policies that the apiserver would reject raise ``ValueError`` rather than guessing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

NAME_LABEL = "kubernetes.io/metadata.name"
INGRESS = "Ingress"
EGRESS = "Egress"

Policy = Mapping[str, Any]


@dataclass
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Pod:
    namespace: str
    name: str
    ip: str
    node: str
    labels: dict[str, str] = field(default_factory=dict)
    # Container ports: {"name": "http", "containerPort": 80, "protocol": "TCP"}.
    ports: list[dict[str, Any]] = field(default_factory=list)


Endpoint = Pod | str  # a pod, or a plain IP address (outside the cluster, or a node)


# --- LabelSelector -------------------------------------------------------------------------


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """matchLabels AND every matchExpression; an empty selector matches everything."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    return all(_expression_matches(e, labels) for e in selector.get("matchExpressions") or [])


def _expression_matches(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator, values = expr["key"], expr["operator"], list(expr.get("values") or [])
    if operator in ("In", "NotIn") and not values:
        raise ValueError(f"operator {operator} needs values: {expr}")
    if operator in ("Exists", "DoesNotExist") and values:
        raise ValueError(f"operator {operator} takes no values: {expr}")
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    raise ValueError(f"unknown operator {operator!r}")


def namespace_labels(namespaces: Iterable[Namespace], name: str) -> dict[str, str]:
    """The namespace's labels plus the implied ``kubernetes.io/metadata.name`` label."""
    labels: dict[str, str] = {}
    for ns in namespaces:
        if ns.name == name:
            labels.update(ns.labels)
    labels[NAME_LABEL] = name  # set (and enforced) by the apiserver
    return labels


# --- Policy basics ---------------------------------------------------------------------------


def policy_namespace(policy: Policy) -> str:
    return str(policy.get("metadata", {}).get("namespace") or "default")


def policy_types(policy: Policy) -> set[str]:
    """Effective policyTypes, as the apiserver's v1 defaulting (SetDefaults_NetworkPolicy) sets.

    Given and non-empty: exactly that. Otherwise Ingress, plus Egress when ``egress`` has at
    least one rule -- the apiserver tests ``len(spec.egress) != 0``, so ``egress: []`` without
    policyTypes does *not* make the policy an Egress policy.
    """
    spec = policy.get("spec") or {}
    given = spec.get("policyTypes") or []
    if given:
        if not set(given) <= {INGRESS, EGRESS}:
            raise ValueError(f"bad policyTypes {given}")
        return set(given)
    return {INGRESS, EGRESS} if spec.get("egress") else {INGRESS}


def selects(policy: Policy, pod: Pod) -> bool:
    """spec.podSelector selects pods of the policy's own namespace only ({} = all of them)."""
    selector = (policy.get("spec") or {}).get("podSelector") or {}
    return policy_namespace(policy) == pod.namespace and selector_matches(selector, pod.labels)


# --- Rules ---------------------------------------------------------------------------------------


def endpoint_ip(endpoint: Endpoint) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(endpoint.ip if isinstance(endpoint, Pod) else endpoint)


def _in_ip_block(block: Mapping[str, Any], endpoint: Endpoint) -> bool:
    addr = endpoint_ip(endpoint)  # pod IPs are matched too; v4 never matches a v6 CIDR
    if addr not in ipaddress.ip_network(block["cidr"], strict=False):
        return False
    return not any(addr in ipaddress.ip_network(c, strict=False) for c in block.get("except") or [])


def peer_matches(
    peer: Mapping[str, Any], policy_ns: str, namespaces: Iterable[Namespace], endpoint: Endpoint
) -> bool:
    """One ``from``/``to`` item against the remote end (ingress: the source; egress: the dest)."""
    pod_sel, ns_sel, block = (
        peer.get("podSelector"),
        peer.get("namespaceSelector"),
        peer.get("ipBlock"),
    )
    if block is not None:
        if pod_sel is not None or ns_sel is not None:
            raise ValueError(f"ipBlock cannot be combined with selectors: {peer}")
        return _in_ip_block(block, endpoint)
    if pod_sel is None and ns_sel is None:
        raise ValueError(f"empty peer: {peer}")
    if not isinstance(endpoint, Pod):
        return False  # selectors only ever match pods, never plain IPs
    if ns_sel is None:
        in_namespace = endpoint.namespace == policy_ns
    else:
        in_namespace = selector_matches(ns_sel, namespace_labels(namespaces, endpoint.namespace))
    return in_namespace and selector_matches(pod_sel or {}, endpoint.labels)


def port_matches(entry: Mapping[str, Any], dst: Endpoint, protocol: str, port: int) -> bool:
    """One NetworkPolicyPort; a named port is resolved on ``dst`` by name AND protocol."""
    if (entry.get("protocol") or "TCP") != protocol:
        return False
    want, end = entry.get("port"), entry.get("endPort")
    if end is not None and not isinstance(want, int):
        raise ValueError(f"endPort needs a numeric port: {entry}")
    if want is None:
        return True  # every port of this protocol
    if isinstance(want, str):
        if not isinstance(dst, Pod):
            return False
        return any(
            cp.get("name") == want
            and (cp.get("protocol") or "TCP") == protocol
            and cp["containerPort"] == port
            for cp in dst.ports
        )
    if end is None:
        return bool(port == want)
    if end < want:
        raise ValueError(f"endPort below port: {entry}")
    return bool(want <= port <= end)


def rule_matches(
    rule: Mapping[str, Any],
    peers_key: str,
    policy_ns: str,
    namespaces: Iterable[Namespace],
    remote: Endpoint,
    dst: Endpoint,
    protocol: str,
    port: int,
) -> bool:
    """A rule: (no peers or any peer matches) AND (no ports or any port matches)."""
    peers = rule.get(peers_key) or []
    if peers and not any(peer_matches(p, policy_ns, namespaces, remote) for p in peers):
        return False
    ports = rule.get("ports") or []
    return not ports or any(port_matches(e, dst, protocol, port) for e in ports)


# --- Verdicts ------------------------------------------------------------------------------------


def allowed_ingress(
    namespaces: Sequence[Namespace],
    policies: Sequence[Policy],
    src: Endpoint,
    dst: Pod,
    protocol: str,
    port: int,
    nodes: Mapping[str, str] | None = None,
) -> bool:
    """May ``dst`` receive this connection? (Its node may always reach it.)"""
    node_ip = (nodes or {}).get(dst.node)
    if node_ip is not None and endpoint_ip(src) == ipaddress.ip_address(node_ip):
        return True
    return _direction_allows(INGRESS, namespaces, policies, dst, src, dst, protocol, port)


def allowed_egress(
    namespaces: Sequence[Namespace],
    policies: Sequence[Policy],
    src: Pod,
    dst: Endpoint,
    protocol: str,
    port: int,
) -> bool:
    """May ``src`` open this connection to ``dst`` (a pod or a plain IP)?"""
    return _direction_allows(EGRESS, namespaces, policies, src, dst, dst, protocol, port)


def _direction_allows(
    direction: str,
    namespaces: Sequence[Namespace],
    policies: Sequence[Policy],
    selected: Pod,
    remote: Endpoint,
    dst: Endpoint,
    protocol: str,
    port: int,
) -> bool:
    """Whether the policies selecting ``selected`` for ``direction`` let ``remote`` (the
    source for Ingress, the destination for Egress) through; not isolated: yes."""
    governing = [p for p in policies if selects(p, selected) and direction in policy_types(p)]
    if not governing:
        return True
    rules, peers = ("ingress", "from") if direction == INGRESS else ("egress", "to")
    return any(
        rule_matches(rule, peers, policy_namespace(p), namespaces, remote, dst, protocol, port)
        for p in governing
        for rule in p["spec"].get(rules) or []
    )


def allowed(
    namespaces: Sequence[Namespace],
    pods: Sequence[Pod],
    policies: Sequence[Policy],
    src: Endpoint,
    dst: Pod,
    protocol: str,
    port: int,
    nodes: Mapping[str, str] | None = None,
) -> bool:
    """Egress of ``src`` (skipped for a plain IP) AND ingress of ``dst`` both allow it.

    ``pods`` is only used to check that the pods asked about belong to the scenario.
    """
    for pod in (src, dst):
        if isinstance(pod, Pod) and pod not in pods:
            raise ValueError(f"pod {pod.namespace}/{pod.name} is not in the scenario")
    if protocol not in ("TCP", "UDP", "SCTP"):
        raise ValueError(f"bad protocol {protocol!r}")
    if isinstance(src, Pod) and src.ip == dst.ip:
        # "Pods cannot currently block localhost access" (NetworkPolicy concepts, what you
        # can't do): a pod reaching its own IP never leaves it.
        return True
    if isinstance(src, Pod) and not allowed_egress(namespaces, policies, src, dst, protocol, port):
        return False
    return allowed_ingress(namespaces, policies, src, dst, protocol, port, nodes)


def truth_table(
    namespaces: Sequence[Namespace],
    pods: Sequence[Pod],
    policies: Sequence[Policy],
    protocol: str,
    port: int,
    nodes: Mapping[str, str] | None = None,
    sources: Iterable[Endpoint] | None = None,
) -> dict[tuple[str, str], bool]:
    """Verdict for every (source, destination pod); pods are keyed "namespace/name", IPs as is."""

    def key(e: Endpoint) -> str:
        return f"{e.namespace}/{e.name}" if isinstance(e, Pod) else e

    srcs = list(pods if sources is None else sources)
    return {
        (key(s), key(d)): allowed(namespaces, pods, policies, s, d, protocol, port, nodes)
        for s in srcs
        for d in pods
    }
