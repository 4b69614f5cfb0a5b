"""Romana's own policies, enforced the same way: each case is a Romana policy sent to
romanad, and a hand-written NetworkPolicy meaning the same, given only to the oracle. The
cluster is ``policy_lab``'s plus two pods of tenant z with segments (``front`` on h2,
``back`` on h1)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .policy_lab import HOSTS, PolicyCluster, np, policy_cluster

pytestmark = [pytest.mark.root, pytest.mark.daemons]

SEGMENT = "romana.io/segment"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyCluster]:
    with policy_cluster(tmp_path_factory.mktemp("native")) as c:
        c.add_pod("z", "front", "h2", {"pod": "front", SEGMENT: "front"})
        c.add_pod("z", "back", "h1", {"pod": "back", SEGMENT: "back"})
        yield c


def native(
    pid: str, direction: str, applied_to: list[Any], peers: list[Any], rules: list[Any]
) -> dict[str, Any]:
    return {
        "id": pid,
        "direction": direction,
        "applied_to": applied_to,
        "ingress": [{"peers": peers, "rules": rules}],
    }


def ip_blocks(ips: list[str]) -> list[dict[str, Any]]:
    return [{"ipBlock": {"cidr": f"{ip}/32"}} for ip in ips]


Case = Callable[[PolicyCluster], tuple[list[dict[str, Any]], list[dict[str, Any]]]]


def tenant_and_segment(c: PolicyCluster) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sent = native(
        "back-in",
        "ingress",
        [{"tenant_id": "z", "segment_id": "back"}],
        [{"tenant_id": "z", "segment_id": "front"}],
        [{"protocol": "tcp", "ports": [80]}],
    )
    meant = np(
        "z",
        "back-in",
        {
            "podSelector": {"matchLabels": {SEGMENT: "back"}},
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {SEGMENT: "front"}}}],
                    "ports": [{"port": 80, "protocol": "TCP"}],
                }
            ],
        },
    )
    return [sent], [meant]


def cidr_peer(c: PolicyCluster) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    xa = c.pods["x/a"].pod.ip
    sent = native(
        "y-udp", "ingress", [{"tenant_id": "y"}], [{"cidr": f"{xa}/32"}], [{"protocol": "udp"}]
    )
    meant = np(
        "y", "y-udp", {"ingress": [{"from": ip_blocks([xa]), "ports": [{"protocol": "UDP"}]}]}
    )
    return [sent], [meant]


def any_peer(c: PolicyCluster) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sent = native(
        "x-81",
        "ingress",
        [{"tenant_id": "x"}],
        [{"peer": "any"}],
        [{"protocol": "TCP", "ports": [81]}],
    )
    meant = np("x", "x-81", {"ingress": [{"ports": [{"port": 81, "protocol": "TCP"}]}]})
    return [sent], [meant]


def host_peer(c: PolicyCluster) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sent = native(
        "x-hosts", "ingress", [{"tenant_id": "x"}], [{"peer": "host"}], [{"protocol": "any"}]
    )
    meant = np("x", "x-hosts", {"ingress": [{"from": ip_blocks(sorted(HOSTS.values()))}]})
    return [sent], [meant]


def local_peer(c: PolicyCluster) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sent = native(
        "y-local", "ingress", [{"tenant_id": "y"}], [{"peer": "local"}], [{"protocol": "tcp"}]
    )
    meant = []
    for host in HOSTS:
        here = [p.pod for p in c.pods.values() if p.pod.node == host]
        targets = sorted(p.name for p in here if p.namespace == "y")
        meant.append(
            np(
                "y",
                f"local-{host}",
                {
                    "podSelector": {
                        "matchExpressions": [{"key": "pod", "operator": "In", "values": targets}]
                    },
                    "ingress": [
                        {"from": ip_blocks([p.ip for p in here]), "ports": [{"protocol": "TCP"}]}
                    ],
                },
            )
        )
    return [sent], meant


def dest_peer(c: PolicyCluster) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    za = c.pods["z/a"]
    sent = native(
        "x-from-za",
        "ingress",
        [{"tenant_id": "x"}],
        [{"dest": za.name}],
        [{"protocol": "tcp", "port_ranges": [[80, 81]]}],
    )
    meant = np(
        "x",
        "x-from-za",
        {
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "z"}
                            },
                            "podSelector": {"matchLabels": {"pod": "a"}},
                        }
                    ],
                    "ports": [{"port": 80, "endPort": 81, "protocol": "TCP"}],
                }
            ]
        },
    )
    return [sent], [meant]


def egress_to_tenant(c: PolicyCluster) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sent = native(
        "y-out", "egress", [{"tenant_id": "y"}], [{"tenant_id": "z"}], [{"protocol": "any"}]
    )
    meant = np(
        "y",
        "y-out",
        {
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [
                        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}
                    ]
                }
            ],
        },
    )
    return [sent], [meant]


def legacy_wrapper(c: PolicyCluster) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sent = {
        "securitypolicies": [
            {
                "name": "front-80",
                "direction": "Ingress",
                "applied_to": [{"tenant": "z", "segment": "front"}],
                "peers": [{"tenant": "x"}],
                "rules": [{"protocol": "TCP", "ports": [80]}, {"protocol": "UDP", "ports": [81]}],
            }
        ]
    }
    meant = np(
        "z",
        "front-80",
        {
            "podSelector": {"matchLabels": {SEGMENT: "front"}},
            "ingress": [
                {
                    "from": [
                        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}
                    ],
                    "ports": [{"port": 80, "protocol": "TCP"}, {"port": 81, "protocol": "UDP"}],
                }
            ],
        },
    )
    return [sent], [meant]


CASES: dict[str, Case] = {
    "tenant and segment": tenant_and_segment,
    "cidr peer, udp": cidr_peer,
    "any peer, one port": any_peer,
    "host peer": host_peer,
    "local peer": local_peer,
    "dest peer, port range": dest_peer,
    "egress to a tenant": egress_to_tenant,
    "securitypolicies wrapper": legacy_wrapper,
}


@pytest.mark.parametrize("case", list(CASES))
def test_native_policy(cluster: PolicyCluster, case: str) -> None:
    c = cluster
    c.clear_policies()
    sent, meant = CASES[case](c)
    try:
        for document in sent:
            c.client.add_policy(document)
        c.converged()
        c.assert_matches(meant)
    finally:
        c.clear_policies()
