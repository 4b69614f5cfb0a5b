"""Tests of the NetworkPolicy oracle itself: each checks one documented v1 rule on a tiny case."""

from __future__ import annotations

from typing import Any

import pytest

from .policy_oracle import Namespace, Pod, allowed, policy_types, selector_matches, truth_table

NAMESPACES = [Namespace("prod", {"team": "a"}), Namespace("dev", {"team": "b"})]
NODES = {"node-1": "192.168.0.1", "node-2": "192.168.0.2"}
WEB = Pod(
    "prod", "web", "10.0.0.1", "node-1", {"app": "web"}, [{"name": "http", "containerPort": 80}]
)
ALT = Pod(
    "prod",
    "alt",
    "10.0.0.2",
    "node-2",
    {"app": "web", "tier": "alt"},
    [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
)
DB = Pod(
    "prod",
    "db",
    "10.0.0.3",
    "node-1",
    {"app": "db"},
    [{"name": "dns", "containerPort": 53, "protocol": "UDP"}],
)
DEV = Pod("dev", "client", "10.0.1.1", "node-2", {"app": "web"})
PODS = [WEB, ALT, DB, DEV]
OUTSIDE = "203.0.113.9"


def policy(ns: str, spec: dict[str, Any], name: str = "p") -> dict[str, Any]:
    spec.setdefault("podSelector", {})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def ok(
    pols: list[dict[str, Any]], src: Pod | str, dst: Pod, proto: str = "TCP", port: int = 80
) -> bool:
    return allowed(NAMESPACES, PODS, pols, src, dst, proto, port, NODES)


def on_web(*rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        policy("prod", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": list(rules)})
    ]


def test_no_policy_allows_everything() -> None:
    assert all(truth_table(NAMESPACES, PODS, [], "TCP", 80, NODES).values())
    assert ok([], OUTSIDE, WEB)


def test_default_deny_ingress_isolates_only_ingress() -> None:
    deny = [policy("prod", {"policyTypes": ["Ingress"]})]
    assert not ok(deny, DEV, WEB) and not ok(deny, OUTSIDE, WEB) and not ok(deny, ALT, WEB)
    assert ok(deny, WEB, DEV)  # egress of prod pods is untouched


def test_allow_all_rule_and_empty_or_missing_ingress() -> None:
    assert ok(on_web({}), DEV, WEB, "UDP", 9999) and ok(on_web({}), OUTSIDE, WEB)
    assert not ok(on_web(), DEV, WEB)  # ingress: []
    assert not ok([policy("prod", {})], DEV, WEB)  # ingress missing
    assert ok(on_web(), DEV, DB)  # db is not selected


def test_pod_selector_peer_is_own_namespace_only() -> None:
    pols = on_web({"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]})
    assert ok(pols, ALT, WEB)
    assert not ok(pols, DEV, WEB)  # same labels, other namespace
    assert not ok(pols, DB, WEB)


def test_and_within_a_peer_or_across_peers() -> None:
    ns_a = {"matchLabels": {"team": "b"}}
    web = {"matchLabels": {"app": "web"}}
    both = on_web(
        {"from": [{"namespaceSelector": ns_a, "podSelector": {"matchLabels": {"app": "db"}}}]}
    )
    assert not ok(both, DEV, WEB) and not ok(both, DB, WEB)
    either = on_web(
        {"from": [{"namespaceSelector": ns_a}, {"podSelector": {"matchLabels": {"app": "db"}}}]}
    )
    assert ok(either, DEV, WEB) and ok(either, DB, WEB) and not ok(either, ALT, WEB)
    anded = on_web({"from": [{"namespaceSelector": ns_a, "podSelector": web}]})
    assert ok(anded, DEV, WEB) and not ok(anded, ALT, WEB)


def test_empty_namespace_selector_is_every_pod_but_no_plain_ip() -> None:
    pols = on_web({"from": [{"namespaceSelector": {}}]})
    assert ok(pols, DEV, WEB) and ok(pols, DB, WEB)
    assert not ok(pols, OUTSIDE, WEB)


def test_implied_namespace_name_label() -> None:
    pols = on_web(
        {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dev"}}}]}
    )
    assert ok(pols, DEV, WEB) and not ok(pols, DB, WEB)


@pytest.mark.parametrize(
    ("expr", "hit", "miss"),
    [
        ({"key": "app", "operator": "In", "values": ["web", "x"]}, {"app": "web"}, {}),
        ({"key": "app", "operator": "NotIn", "values": ["web"]}, {}, {"app": "web"}),
        ({"key": "app", "operator": "NotIn", "values": ["web"]}, {"app": "db"}, {"app": "web"}),
        ({"key": "app", "operator": "Exists"}, {"app": ""}, {"tier": "x"}),
        ({"key": "app", "operator": "DoesNotExist"}, {"tier": "x"}, {"app": ""}),
    ],
)
def test_match_expressions(expr: dict[str, Any], hit: dict[str, str], miss: dict[str, str]) -> None:
    assert selector_matches({"matchExpressions": [expr]}, hit)
    assert not selector_matches({"matchExpressions": [expr]}, miss)


def test_selector_requirements_are_anded_and_empty_matches_all() -> None:
    sel = {
        "matchLabels": {"app": "web"},
        "matchExpressions": [{"key": "tier", "operator": "Exists"}],
    }
    assert selector_matches(sel, ALT.labels) and not selector_matches(sel, WEB.labels)
    assert selector_matches({}, {}) and selector_matches({"matchLabels": {}}, {"a": "b"})
    pols = on_web(
        {
            "from": [
                {
                    "podSelector": {
                        "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]
                    }
                }
            ]
        }
    )
    assert ok(pols, DB, WEB) and not ok(pols, ALT, WEB)


def test_ip_block_with_except_matches_plain_and_pod_ips() -> None:
    pols = on_web({"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}}]})
    assert ok(pols, DB, WEB) and ok(pols, "10.0.200.7", WEB)
    assert not ok(pols, DEV, WEB) and not ok(pols, "10.0.1.200", WEB) and not ok(pols, OUTSIDE, WEB)
    assert not ok(on_web({"from": [{"ipBlock": {"cidr": "::/0"}}]}), OUTSIDE, WEB)


def test_named_port_resolves_per_destination_pod_and_protocol() -> None:
    pols = [
        policy(
            "prod", {"ingress": [{"ports": [{"port": "http"}, {"port": "dns", "protocol": "UDP"}]}]}
        )
    ]
    assert ok(pols, DEV, WEB, port=80) and not ok(pols, DEV, WEB, port=8080)
    assert ok(pols, DEV, ALT, port=8080) and not ok(pols, DEV, ALT, port=80)
    assert ok(pols, DEV, DB, "UDP", 53) and not ok(pols, DEV, DB, "TCP", 53)
    tcp_dns = [policy("prod", {"ingress": [{"ports": [{"port": "dns"}]}]})]
    assert not ok(tcp_dns, DEV, DB, "TCP", 53) and not ok(tcp_dns, DEV, DB, "UDP", 53)


def test_named_port_in_egress_resolves_on_destination() -> None:
    pols = [policy("dev", {"policyTypes": ["Egress"], "egress": [{"ports": [{"port": "http"}]}]})]
    assert ok(pols, DEV, WEB, port=80) and ok(pols, DEV, ALT, port=8080)
    assert not ok(pols, DEV, ALT, port=80) and not ok(pols, DEV, DB, port=80)


def test_end_port_range_is_inclusive() -> None:
    pols = on_web({"ports": [{"port": 8000, "endPort": 8080}]})
    assert ok(pols, DEV, WEB, port=8000) and ok(pols, DEV, WEB, port=8080)
    assert not ok(pols, DEV, WEB, port=7999) and not ok(pols, DEV, WEB, port=8081)
    with pytest.raises(ValueError):
        ok(on_web({"ports": [{"port": "http", "endPort": 90}]}), DEV, WEB)


def test_udp_only_allow_does_not_open_tcp() -> None:
    pols = on_web({"ports": [{"protocol": "UDP"}]})
    assert ok(pols, DEV, WEB, "UDP", 80) and not ok(pols, DEV, WEB, "TCP", 80)
    assert not ok(pols, DEV, WEB, "SCTP", 80)


def test_policy_types_defaulting() -> None:
    to_db = [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]
    assert policy_types(policy("prod", {})) == {"Ingress"}
    assert policy_types(policy("prod", {"egress": to_db})) == {"Ingress", "Egress"}
    # The apiserver defaults on len(egress) != 0, so an empty egress list is not an Egress policy.
    assert policy_types(policy("prod", {"egress": []})) == {"Ingress"}
    assert policy_types(policy("prod", {"policyTypes": ["Egress"], "ingress": [{}]})) == {"Egress"}
    assert policy_types(policy("prod", {"policyTypes": [], "egress": to_db})) == {
        "Ingress",
        "Egress",
    }
    # Egress-only rules still make it an Ingress policy too: web then accepts nothing.
    egress = [policy("prod", {"podSelector": {"matchLabels": {"app": "web"}}, "egress": to_db})]
    assert ok(egress, WEB, DB) and not ok(egress, WEB, DEV) and not ok(egress, DEV, WEB)
    assert ok(egress, DB, DEV)  # db is not selected
    deny_out = [policy("prod", {"policyTypes": ["Egress"]})]
    assert not ok(deny_out, WEB, DEV) and ok(deny_out, DEV, WEB)


def test_egress_deny_beats_ingress_allow() -> None:
    pols = [policy("dev", {"policyTypes": ["Egress"]}), *on_web({})]
    assert not ok(pols, DEV, WEB) and ok(pols, ALT, WEB) and ok(pols, OUTSIDE, WEB)


def test_stacked_policies_union() -> None:
    first = on_web({"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]})
    second = policy(
        "prod",
        {"podSelector": {"matchLabels": {"tier": "alt"}}, "ingress": [{"ports": [{"port": 443}]}]},
        "q",
    )
    pols = [*first, second]
    assert ok(pols, DB, ALT) and ok(pols, DEV, ALT, port=443) and not ok(pols, DEV, ALT, port=80)
    assert ok(pols, DB, WEB) and not ok(pols, DEV, WEB, port=443)


def test_policy_of_another_namespace_selects_nothing_here() -> None:
    pols = [policy("dev", {"policyTypes": ["Ingress", "Egress"]})]
    assert ok(pols, WEB, ALT) and ok(pols, OUTSIDE, WEB)
    assert not ok(pols, WEB, DEV) and not ok(pols, DEV, WEB)


def test_traffic_from_own_node_is_always_allowed() -> None:
    deny = [policy("prod", {"policyTypes": ["Ingress"]})]
    assert ok(deny, "192.168.0.1", WEB) and ok(deny, "192.168.0.2", ALT)
    assert not ok(deny, "192.168.0.2", WEB)


def test_a_pod_always_reaches_itself() -> None:
    # "Pods cannot currently block localhost access" (NetworkPolicy concepts page).
    deny_all = policy("prod", {"policyTypes": ["Ingress", "Egress"]})
    assert ok([deny_all], WEB, WEB)
    assert not ok([deny_all], ALT, WEB)
