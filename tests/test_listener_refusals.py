"""Fail closed under every fault: an object romanad refuses is that object's problem.

A real romanad (the kops-aws-us-west-1 preset: hosts are placed by zone) and a real
romana-listener process against the project's API server. A refused object is logged
once, gets a Warning Event, is listed in ``/healthz`` and never stops the others; a
NetworkPolicy romanad refuses is replaced by its fail-closed stand-in."""

from __future__ import annotations

import json
from typing import Any

import pytest

from romana.api.client import RomanaClient
from romana.errors import NotFound

from .kube import (
    KubeApiServer,
    Listener,
    in_step,
    listener_fixtures,
    namespace,
    node,
    policy,
)
from .wait import wait_until

pytestmark = pytest.mark.daemons

DENY_ALL = {"podSelector": {}, "policyTypes": ["Ingress"]}


cluster, romanad, listener = listener_fixtures()


def stuck(listener: Listener) -> dict[str, dict[str, Any]]:
    return {f"{s['kind']}/{s['key']}": s for s in listener.state()["stuck"]}


def events_about(cluster: KubeApiServer, kind: str, name: str) -> list[dict[str, Any]]:
    return [
        e
        for e in cluster.events()
        if e["involvedObject"]["kind"] == kind and e["involvedObject"]["name"] == name
    ]


def held_policy(romanad: RomanaClient, key: str) -> dict[str, Any] | None:
    try:
        return romanad.policy(key)
    except NotFound:
        return None


def resyncs(listener: Listener, more: int) -> None:
    """Wait until ``more`` full resyncs have run from now."""
    start = listener.state()["sync"]["full_syncs"]
    wait_until(
        lambda: listener.state()["sync"]["full_syncs"] >= start + more,
        what=f"{more} more full resyncs",
    )


def test_nodes_romanad_refuses_stop_nothing_else_and_are_reported_once(
    cluster: KubeApiServer, romanad: RomanaClient, listener: Listener
) -> None:
    cluster.create(node("worker-1", "192.168.10.11", "us-west-1a"))
    cluster.create(namespace("shop"))
    in_step(romanad, cluster)
    # Two nodes romanad refuses (422): a zone the map lacks, an InternalIP inside the pod
    # network. They sort before everything that follows them.
    cluster.create(node("far-away", "192.168.10.50", "eu-north-1a"))
    cluster.create(node("inside", "10.112.0.5", "us-west-1a"))
    cluster.create(node("worker-2", "192.168.10.12", "us-west-1b"))
    cluster.create(policy("shop", "deny-all", DENY_ALL))
    cluster.patch("namespaces", "shop", {"metadata": {"labels": {"team": "shop"}}})
    wait_until(lambda: held_policy(romanad, "k8s:shop:deny-all"), what="the policy in romanad")
    wait_until(lambda: romanad.tenant("shop")["labels"].get("team") == "shop", what="relabel")
    assert romanad.host("worker-2")["ip"] == "192.168.10.12"

    refused = wait_until(lambda: len(stuck(listener)) == 2 and stuck(listener))
    for name in ("far-away", "inside"):
        entry = refused[f"Node/{name}"]
        assert entry["reason"] == "RomanaHostRefused" and entry["error"] == "invalid", entry
        assert entry["since"].endswith("+00:00") and not entry["fail_closed"]
    assert "fits no group" in refused["Node/far-away"]["message"]
    state = listener.state()
    assert state["ok"] is True and state["status"] == "degraded" and state["sync"]["stuck"] == 2
    # Tried again at every resync, quietly: one Event and one error line per node.
    resyncs(listener, 2)
    for name in ("far-away", "inside"):
        warned = events_about(cluster, "Node", name)
        assert [e["reason"] for e in warned] == ["RomanaHostRefused"], warned
        assert warned[0]["type"] == "Warning" and warned[0]["metadata"]["namespace"] == "default"
    assert listener.log.read_text().count("romanad refused an object") == 2

    # Fixed or gone: the objects leave the list.
    zone_a = {"topology.kubernetes.io/zone": "us-west-1a"}
    cluster.patch("nodes", "far-away", {"metadata": {"labels": zone_a}})
    cluster.delete("nodes", "inside")
    in_step(romanad, cluster)
    wait_until(lambda: listener.state()["stuck"] == [], what="nothing stuck")
    assert listener.state()["status"] == "ok"


def test_a_policy_romanad_refuses_is_enforced_fail_closed(
    cluster: KubeApiServer, romanad: RomanaClient, listener: Listener
) -> None:
    cluster.create(node("worker-1", "192.168.10.11", "us-west-1a"))
    cluster.create(namespace("shop"))
    in_step(romanad, cluster)
    # Valid for the API server (it takes ~1.5 MB), over romanad's 1 MiB body limit: 413.
    labels = {f"k{j}": "v" * 60 for j in range(20)}
    peers = [{"podSelector": {"matchLabels": labels}} for _ in range(800)]
    web = {"matchLabels": {"app": "web"}}
    big = policy("shop", "web-allowlist", {"podSelector": web, "ingress": [{"from": peers}]})
    assert len(json.dumps(big)) > 1 << 20
    uid = cluster.create(big)["metadata"]["uid"]
    cluster.create(policy("shop", "after-it", DENY_ALL))

    held = wait_until(lambda: held_policy(romanad, "k8s:shop:web-allowlist"), what="stand-in")
    source = held["source"]
    marker = source["metadata"]["annotations"]["romana.io/not-enforced"]
    assert marker.startswith("refused by romanad: request body over"), marker
    assert source["spec"] == {
        "podSelector": {"matchLabels": {"app": "web"}, "matchExpressions": []},
        "policyTypes": ["Ingress"],
    }
    # What agents enforce: the pods it selects are isolated for ingress, nothing allowed.
    assert held["policy"]["ingress"] == [] and "egress" not in held["policy"]
    assert held["policy"]["applied_to"] == [{"labels": [["app", "In", ["web"]]], "tenant": "shop"}]
    wait_until(lambda: held_policy(romanad, "k8s:shop:after-it"), what="the next policy")

    warned = wait_until(lambda: events_about(cluster, "NetworkPolicy", "web-allowlist"))
    assert warned[0]["reason"] == "RomanaPolicyNotEnforced" and warned[0]["type"] == "Warning"
    assert warned[0]["metadata"]["namespace"] == "shop"
    assert warned[0]["involvedObject"] == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "name": "web-allowlist",
        "namespace": "shop",
        "uid": uid,
    }
    entry = wait_until(lambda: stuck(listener).get("NetworkPolicy/shop/web-allowlist"))
    assert entry["fail_closed"] is True and entry["error"] == "too_large"
    assert entry["reason"] == "RomanaPolicyNotEnforced"
    assert listener.state()["status"] == "degraded"
    resyncs(listener, 2)
    assert len(events_about(cluster, "NetworkPolicy", "web-allowlist")) == 1

    # Fixed: the real policy replaces the stand-in.
    small = [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]
    cluster.patch("networkpolicies", "web-allowlist", {"spec": {"ingress": small}}, "shop")
    in_step(romanad, cluster)
    held = held_policy(romanad, "k8s:shop:web-allowlist")
    assert held is not None and "annotations" not in held["source"]["metadata"]
    wait_until(lambda: listener.state()["status"] == "ok", what="nothing stuck")
