"""A broken or hostile API server: watch events of a type the protocol does not have, and
objects of another kind than the one watched, are ignored (counted, logged once) and
never enter the cache; a real romanad and a real romana-listener process."""

from __future__ import annotations

from typing import Any

import pytest

from romana.api.client import RomanaClient

from .kube import (
    KubeApiServer,
    Listener,
    in_step,
    listener_fixtures,
    namespace,
    node,
    pod,
)
from .wait import wait_until

pytestmark = pytest.mark.daemons

cluster, romanad, listener = listener_fixtures()


def current(cluster: KubeApiServer, obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"]["resourceVersion"] = str(cluster.api.revision)
    return obj


def test_unknown_event_types_and_objects_of_other_kinds_are_ignored(
    cluster: KubeApiServer, romanad: RomanaClient, listener: Listener
) -> None:
    cluster.create(node("worker-1", "192.168.10.11", "us-west-1a"))
    cluster.create(namespace("shop"))
    in_step(romanad, cluster)
    wait_until(lambda: cluster.control("stats")["watchers"] == 4, what="four watches open")
    stray_node = current(cluster, node("node-x", "192.168.10.70", "us-west-1a"))
    stray_pod = current(cluster, pod("shop", "p", "worker-1", "10.112.0.9", app="x"))
    for name in ("frob-1", "frob-2"):
        event = {"type": "FROB", "object": current(cluster, namespace(name))}
        assert cluster.raw("namespaces", event) == 1
    assert cluster.raw("namespaces", {"type": "ADDED", "object": stray_node}) == 1
    assert cluster.raw("networkpolicies", {"type": "ADDED", "object": stray_pod}) == 1
    # A change that follows them on the same watch still arrives.
    cluster.patch("namespaces", "shop", {"metadata": {"labels": {"team": "shop"}}})
    in_step(romanad, cluster)
    watches = wait_until(
        lambda: (w := listener.state()["watches"])["NetworkPolicy"].get("ignored") and w,
        what="the stray pod seen on the NetworkPolicy watch",
    )
    assert watches["Namespace"]["objects"] == 1
    assert watches["Namespace"]["ignored"] == {"type FROB": 2, "kind Node": 1}
    assert watches["NetworkPolicy"]["objects"] == 0
    assert watches["NetworkPolicy"]["ignored"] == {"kind Pod": 1}
    assert {t["name"] for t in romanad.tenants()} == {"shop"}
    assert romanad.network_policies() == []
    assert listener.log.read_text().count("watch event ignored") == 3  # once per type/kind
