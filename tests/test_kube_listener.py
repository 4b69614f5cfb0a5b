"""romana-listener against the project's API server and a real romanad: after every
scenario, romanad's hosts, tenants, endpoints and policies equal what the API server
holds (``tests.kube.mismatches``)."""

from __future__ import annotations

from typing import Any

import pytest

from romana.api.client import RomanaClient
from romana.policy.inputs import PolicyInputs

from .kube import (
    KubeApiServer,
    Listener,
    in_step,
    listener_fixtures,
    namespace,
    node,
    pod,
    policy,
)
from .wait import wait_until

pytestmark = pytest.mark.daemons

ZONES = {"us-west-1a": "10.112.0.0/13", "us-west-1b": "10.120.0.0/13"}


cluster, romanad, listener = listener_fixtures()


def zone_of(romanad: RomanaClient, host: str) -> str:
    group = romanad.host(host)["groups"]["romana-network"]["group"]
    return str(group.split("/")[0])


def test_nodes_join_their_zone_groups(
    cluster: KubeApiServer, romanad: RomanaClient, listener: Listener
) -> None:
    for i in range(6):
        zone = "us-west-1a" if i % 2 == 0 else "us-west-1b"
        cluster.create(node(f"worker-{i}", f"192.168.10.{11 + i}", zone))
    in_step(romanad, cluster)
    for i in range(6):
        assert zone_of(romanad, f"worker-{i}") == ("us-west-1a" if i % 2 == 0 else "us-west-1b")
    groups = {romanad.host(f"worker-{i}")["groups"]["romana-network"]["group"] for i in range(6)}
    assert len(groups) == 6, "round-robin spreads hosts over a zone's sub-groups"


def admitted(romanad: RomanaClient, key: str) -> list[str]:
    """The IPs the first ingress rule of policy ``key`` lets in, as agents compute it."""
    state = romanad._call("GET", "/policy/state")
    inputs = PolicyInputs.from_json(state)
    rule = inputs.policies[key].ingress
    assert rule
    peers = rule[0].peers or ()
    index = inputs.index()
    return sorted(ip for peer in peers for ip in index.peer_ips(peer))  # type: ignore[arg-type]


def by_ip(romanad: RomanaClient, ip: str) -> dict[str, Any]:
    return next(dict(a) for a in romanad.addresses()["addresses"] if a["ip"] == ip)


def running_pod(
    cluster: KubeApiServer, romanad: RomanaClient, ns: str, name: str, host: str, **labels: str
) -> str:
    """A pod as kubelet and the CNI leave it: an address in romanad, the IP in its status."""
    ip = romanad.allocate(f"cni:{ns}-{name}:eth0", host, tenant=ns)["ip"]
    cluster.create(pod(ns, name, host, ip, **labels))
    return ip


def test_node_relabel_moves_only_an_empty_host(
    cluster: KubeApiServer, romanad: RomanaClient, listener: Listener
) -> None:
    cluster.create(node("empty", "192.168.10.21", "us-west-1a"))
    cluster.create(node("busy", "192.168.10.22", "us-west-1a"))
    cluster.create(namespace("shop"))
    in_step(romanad, cluster)
    ip = running_pod(cluster, romanad, "shop", "web-1", "busy", app="web")
    in_step(romanad, cluster)
    # A label no group asks for: updated in place, even on a busy host.
    cluster.patch("nodes", "busy", {"metadata": {"labels": {"team": "payments"}}})
    in_step(romanad, cluster)
    assert zone_of(romanad, "busy") == "us-west-1a"
    # A new zone: the empty host moves there; the busy one stays, with a Warning event.
    zone_b = {"topology.kubernetes.io/zone": "us-west-1b"}
    cluster.patch("nodes", "empty", {"metadata": {"labels": zone_b}})
    cluster.patch("nodes", "busy", {"metadata": {"labels": zone_b}})
    wait_until(lambda: zone_of(romanad, "empty") == "us-west-1b", what="the empty host moved")
    warned = wait_until(
        lambda: [e for e in cluster.events() if e["involvedObject"]["name"] == "busy"],
        what="a Warning event on the busy node",
    )
    assert warned[0]["type"] == "Warning" and warned[0]["reason"] == "RomanaHostNotMoved"
    assert "holds addresses" in warned[0]["message"]
    assert zone_of(romanad, "busy") == "us-west-1a"
    assert romanad.address("cni:shop-web-1:eth0")["ip"] == ip, "its pod keeps its address"
    assert "busy" in listener.state()["sync"]["not_moved"]
    assert "RomanaHostNotMoved" in listener.log.read_text()
    # Once its pod is gone, a resync moves it.
    romanad.release(ip)
    cluster.delete("pods", "web-1", "shop")
    in_step(romanad, cluster)
    assert zone_of(romanad, "busy") == "us-west-1b"
    assert len([e for e in cluster.events() if e["involvedObject"]["name"] == "busy"]) == 1


def test_node_delete_removes_the_host_after_the_grace_period(
    cluster: KubeApiServer, romanad: RomanaClient, listener: Listener
) -> None:
    cluster.create(node("worker-1", "192.168.10.11", "us-west-1a"))
    cluster.create(namespace("shop"))
    in_step(romanad, cluster)
    ip = running_pod(cluster, romanad, "shop", "web-1", "worker-1", app="web")
    assert romanad.host("worker-1")["block_count"] == 1
    cluster.delete("nodes", "worker-1")
    cluster.delete("pods", "web-1", "shop")
    in_step(romanad, cluster)
    assert romanad.addresses()["addresses"] == [], f"{ip} was freed with its host"
    assert romanad.blocks()["blocks"] == []
    # A host added by hand (not by the listener) is left alone.
    romanad.add_host("bare-metal-1", "192.168.20.1", {"topology.kubernetes.io/zone": "us-west-1a"})
    cluster.create(node("worker-2", "192.168.10.12", "us-west-1b"))
    wait_until(lambda: listener.state()["sync"]["full_syncs"] >= 3, what="two more resyncs")
    assert {h["name"] for h in romanad.hosts()["hosts"]} == {"bare-metal-1", "worker-2"}


def test_node_back_within_the_grace_period_keeps_its_host(
    cluster: KubeApiServer, romanad: RomanaClient
) -> None:
    running = Listener(cluster, romanad.url, "--node-grace", "30").start()
    try:
        cluster.create(node("worker-1", "192.168.10.11", "us-west-1a"))
        cluster.create(namespace("shop"))
        in_step(romanad, cluster)
        ip = running_pod(cluster, romanad, "shop", "web-1", "worker-1")
        cluster.delete("nodes", "worker-1")
        wait_until(lambda: running.state()["sync"]["pending_removals"] == ["worker-1"])
        cluster.create(node("worker-1", "192.168.10.11", "us-west-1a"))
        wait_until(lambda: running.state()["sync"]["pending_removals"] == [])
        in_step(romanad, cluster)
        assert by_ip(romanad, ip)["host"] == "worker-1"
    finally:
        assert running.stop() == 0


def test_namespace_relabel_changes_policy_selection(
    cluster: KubeApiServer, romanad: RomanaClient, listener: Listener
) -> None:
    cluster.create(node("worker-1", "192.168.10.11", "us-west-1a"))
    for ns in ("shop", "store", "tools"):
        cluster.create(namespace(ns))
    in_step(romanad, cluster)
    running_pod(cluster, romanad, "shop", "web", "worker-1", app="web")
    client = running_pod(cluster, romanad, "store", "client", "worker-1", app="client")
    tool = running_pod(cluster, romanad, "tools", "probe", "worker-1", app="probe")
    spec = {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "frontend"}}}]}],
        "policyTypes": ["Ingress"],
    }
    cluster.create(policy("shop", "from-frontend", spec))
    in_step(romanad, cluster)
    assert admitted(romanad, "k8s:shop:from-frontend") == []
    cluster.patch("namespaces", "store", {"metadata": {"labels": {"team": "frontend"}}})
    in_step(romanad, cluster)
    assert admitted(romanad, "k8s:shop:from-frontend") == [client]
    cluster.patch("namespaces", "tools", {"metadata": {"labels": {"team": "frontend"}}})
    cluster.patch("namespaces", "store", {"metadata": {"labels": {"team": None}}})
    in_step(romanad, cluster)
    assert admitted(romanad, "k8s:shop:from-frontend") == [tool]
    # The policy itself changes and goes.
    spec["ingress"] = [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]
    cluster.patch("networkpolicies", "from-frontend", {"spec": spec}, "shop")
    in_step(romanad, cluster)
    assert admitted(romanad, "k8s:shop:from-frontend") == []  # client is in another namespace
    cluster.delete("networkpolicies", "from-frontend", "shop")
    in_step(romanad, cluster)
    assert romanad.network_policies() == []


def test_pod_relabel_and_named_ports(
    cluster: KubeApiServer, romanad: RomanaClient, listener: Listener
) -> None:
    cluster.create(node("worker-1", "192.168.10.11", "us-west-1a"))
    cluster.create(namespace("shop"))
    in_step(romanad, cluster)
    ip = running_pod(cluster, romanad, "shop", "web", "worker-1", app="web", tier="a")
    in_step(romanad, cluster)
    held = by_ip(romanad, ip)
    assert held["labels"] == {"app": "web", "tier": "a"}
    assert held["ports"] == [{"name": "http", "port": 80, "protocol": "tcp"}]
    cluster.patch("pods", "web", {"metadata": {"labels": {"tier": "b", "canary": "yes"}}}, "shop")
    in_step(romanad, cluster)
    assert by_ip(romanad, ip)["labels"] == {"app": "web", "tier": "b", "canary": "yes"}


def test_watch_cut_mid_stream_resumes_without_a_list(
    cluster: KubeApiServer, romanad: RomanaClient, listener: Listener
) -> None:
    cluster.create(node("worker-1", "192.168.10.11", "us-west-1a"))
    cluster.create(namespace("shop"))
    in_step(romanad, cluster)
    wait_until(lambda: cluster.control("stats")["watchers"] == 4, what="four watches open")
    assert cluster.control("cut")["cut"] == 4
    cluster.create(node("worker-2", "192.168.10.12", "us-west-1b"))
    cluster.patch("namespaces", "shop", {"metadata": {"labels": {"team": "shop"}}})
    in_step(romanad, cluster)
    watches = listener.state()["watches"]
    assert all(w["broken_watches"] >= 1 for w in watches.values()), watches
    assert all(w["lists"] == 1 for w in watches.values()), "resumed from its resourceVersion"
    wait_until(
        lambda: all(w["bookmarks"] > 0 for w in listener.state()["watches"].values()),
        what="bookmarks on every watch",
    )


def test_expired_history_relists_and_removes_what_vanished(
    cluster: KubeApiServer, romanad: RomanaClient, listener: Listener
) -> None:
    cluster.create(node("worker-1", "192.168.10.11", "us-west-1a"))
    cluster.create(node("worker-2", "192.168.10.12", "us-west-1b"))
    for ns in ("shop", "old"):
        cluster.create(namespace(ns, team=ns))
    cluster.create(policy("old", "deny-all", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    in_step(romanad, cluster)
    wait_until(lambda: cluster.control("stats")["watchers"] == 4, what="four watches open")
    # The listener is cut off while objects go, and the history of it is compacted away.
    cluster.control("refuse", n=1000)
    cluster.control("cut")
    cluster.delete("nodes", "worker-2")
    cluster.delete("networkpolicies", "deny-all", "old")
    cluster.delete("namespaces", "old")
    cluster.patch("namespaces", "shop", {"metadata": {"labels": {"team": "checkout"}}})
    cluster.control("compact")
    cluster.control("refuse", n=0)
    in_step(romanad, cluster, timeout=40)
    watches = listener.state()["watches"]
    assert all(w["expired"] >= 1 and w["lists"] >= 2 for w in watches.values()), watches


def test_listener_restart_converges(
    cluster: KubeApiServer, romanad: RomanaClient, listener: Listener
) -> None:
    cluster.create(node("worker-1", "192.168.10.11", "us-west-1a"))
    cluster.create(node("worker-2", "192.168.10.12", "us-west-1b"))
    cluster.create(namespace("shop"))
    cluster.create(policy("shop", "deny-all", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    in_step(romanad, cluster)
    ip = running_pod(cluster, romanad, "shop", "web", "worker-1", app="web")
    in_step(romanad, cluster)
    assert listener.stop() == 0
    cluster.delete("nodes", "worker-2")
    cluster.delete("networkpolicies", "deny-all", "shop")
    cluster.patch("namespaces", "shop", {"metadata": {"labels": {"team": "shop"}}})
    cluster.patch("pods", "web", {"metadata": {"labels": {"app": "web2"}}}, "shop")
    cluster.create(node("worker-3", "192.168.10.13", "us-west-1a"))
    listener.start()
    in_step(romanad, cluster)
    assert by_ip(romanad, ip)["labels"] == {"app": "web2"}


def test_two_listeners_at_once(cluster: KubeApiServer, romanad: RomanaClient) -> None:
    first = Listener(cluster, romanad.url, name="first").start()
    second = Listener(cluster, romanad.url, name="second").start()
    try:
        for i in range(8):
            cluster.create(node(f"w-{i}", f"192.168.10.{30 + i}", f"us-west-1{'ab'[i % 2]}"))
        for ns in ("a", "b", "c"):
            cluster.create(namespace(ns, team=ns))
        in_step(romanad, cluster)
        ips = [running_pod(cluster, romanad, "a", f"p{i}", f"w-{i}", n=str(i)) for i in range(4)]
        for i in range(4):
            cluster.patch("pods", f"p{i}", {"metadata": {"labels": {"n": f"x{i}"}}}, "a")
        cluster.patch(
            "nodes", "w-7", {"metadata": {"labels": {"topology.kubernetes.io/zone": "us-west-1a"}}}
        )
        cluster.delete("nodes", "w-6")
        cluster.delete("namespaces", "c")
        cluster.create(policy("b", "p", {"podSelector": {}, "policyTypes": ["Ingress"]}))
        in_step(romanad, cluster)
        assert [by_ip(romanad, ip)["labels"] for ip in ips] == [{"n": f"x{i}"} for i in range(4)]
        assert zone_of(romanad, "w-7") == "us-west-1a"
        for running in (first, second):
            wait_until(lambda r=running: r.state()["sync"]["converged"], what="converged")  # type: ignore[misc]
            assert '"level": "error"' not in running.log.read_text()
    finally:
        assert first.stop() == 0 and second.stop() == 0
