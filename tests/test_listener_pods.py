"""Pods' labels go to the addresses the pods hold, never to another pod's.

A real romanad (the kubeadm preset) and a real romana-listener process. The listener's
full resync is left at its default (60 s): what is checked here must hold between
resyncs, not only after one repairs it."""

from __future__ import annotations

from typing import Any

import pytest

from romana.api.client import RomanaClient

from .kube import KubeApiServer, Listener, listener_fixtures, namespace, node, pod
from .wait import wait_until

pytestmark = pytest.mark.daemons

NODE = "node-0"
TERMINATING = {"deletionTimestamp": "2026-12-07T00:00:00Z", "deletionGracePeriodSeconds": 30}


def node_and_namespace(cluster: KubeApiServer, romanad: RomanaClient) -> None:
    cluster.create(node(NODE, "192.168.91.10"))
    cluster.create(namespace("shop"))
    wait_until(lambda: romanad.hosts()["hosts"], what="the node's host")


cluster, romanad, listener = listener_fixtures("kubeadm", "--resync", "60", then=node_and_namespace)


def allocate(romanad: RomanaClient, name: str, **fields: Any) -> dict[str, Any]:
    body = {"name": name, "host": NODE, "tenant": "shop", **fields}
    return romanad._call("POST", "/address", json=body)  # type: ignore[no-any-return]


def labels(romanad: RomanaClient, address: str) -> dict[str, str]:
    return dict(romanad.address(address).get("labels", {}))


def settle(listener: Listener, change: Any) -> None:
    """Make ``change`` to pods, then wait until the listener has seen it and finished a
    pass after it (events are counted; ``converged`` is cleared on each)."""
    before = listener.state()["watches"]["Pod"]["events"]
    change()

    def done() -> bool:
        state = listener.state()
        return bool(state["watches"]["Pod"]["events"] > before and state["sync"]["converged"])

    wait_until(done, what="the listener to process the change")


def test_a_terminating_pods_labels_stay_off_the_new_pod_holding_its_ip(
    cluster: KubeApiServer, romanad: RomanaClient, listener: Listener
) -> None:
    """The attack's sequence (an IP reused at once, then one more status update of the
    terminating pod), with addresses that name no pod (matched by IP)."""
    ip = allocate(romanad, "net:a:eth0", labels={"app": "client"})["ip"]
    settle(listener, lambda: cluster.create(pod("shop", "a", NODE, ip, app="client")))
    # Pod a is deleted: it turns terminating, its sandbox goes (CNI DEL), the IP is free.
    settle(listener, lambda: cluster.patch("pods", "a", {"metadata": TERMINATING}, "shop"))
    romanad.release("net:a:eth0")
    # Pod b gets the same IP at once, with its own labels.
    assert allocate(romanad, "net:b:eth0", labels={"app": "evil"})["ip"] == ip
    settle(listener, lambda: cluster.create(pod("shop", "b", NODE, ip, app="evil")))
    # One more status update of the terminating pod, still reporting the IP.
    ready = {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    settle(listener, lambda: cluster.patch("pods", "a", ready, "shop"))
    assert labels(romanad, "net:b:eth0") == {"app": "evil"}
    # Pod b's own changes still reach its address; pod a's end changes nothing.
    relabel = {"metadata": {"labels": {"app": "evil", "tier": "b"}}}
    settle(listener, lambda: cluster.patch("pods", "b", relabel, "shop"))
    assert labels(romanad, "net:b:eth0") == {"app": "evil", "tier": "b"}
    settle(listener, lambda: cluster.delete("pods", "a", "shop"))
    assert labels(romanad, "net:b:eth0") == {"app": "evil", "tier": "b"}


def test_an_address_naming_its_pod_is_labelled_for_that_pod_only(
    cluster: KubeApiServer, romanad: RomanaClient, listener: Listener
) -> None:
    """Needs romanad's ``pod`` field on addresses (the CNI plugin's K8S_POD_* args)."""
    uid = cluster.create(pod("shop", "a", NODE, None, app="web"))["metadata"]["uid"]
    owner = {"namespace": "shop", "name": "a", "uid": uid}
    first = allocate(romanad, "net:a:eth0", pod=owner)
    assert romanad.address("net:a:eth0").get("pod") == owner, "romanad keeps the pod"
    allocate(romanad, "net:a:eth1", pod=owner)  # a second network: the same pod
    allocate(romanad, "net:a-old:eth0", pod={**owner, "uid": "an-earlier-pod-a"})
    allocate(romanad, "net:a-any:eth0", pod={**owner, "uid": ""})  # the CNI had no uid
    # Labelled by the pod they name, before kubelet reports any IP.
    settle(
        listener, lambda: cluster.patch("pods", "a", {"metadata": {"labels": {"v": "1"}}}, "shop")
    )
    for name in ("net:a:eth0", "net:a:eth1", "net:a-any:eth0"):
        assert labels(romanad, name) == {"app": "web", "v": "1"}, name
    assert labels(romanad, "net:a-old:eth0") == {}, "another pod of the same name"
    # A live pod whose (stale) status reports a's IP does not get a's address.
    stale = pod("shop", "b", NODE, first["ip"], app="evil")
    settle(listener, lambda: cluster.create(stale))
    assert labels(romanad, "net:a:eth0") == {"app": "web", "v": "1"}
