"""The listener's decisions, one at a time, without processes: which addresses a pod
holds, named ports, the fail-closed stand-in of a NetworkPolicy, which romanad errors
are one object's problem, and how refusals are reported."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from lightkube.resources.core_v1 import Pod
from lightkube.resources.networking_v1 import NetworkPolicy as KubePolicy

from romana.errors import (
    Conflict,
    Exhausted,
    Internal,
    InvalidRequest,
    NotFound,
    RomanaError,
    StoreError,
    TooLarge,
    Unauthorized,
    Unreachable,
    from_wire,
)
from romana.kube import desired
from romana.kube.endpoints import Holdings, claims
from romana.kube.refusals import Refusal, Refusals, Subject, is_transient
from romana.kube.sync import Sync
from romana.policy.k8s import NOT_ENFORCED

from .kube import pod, policy


def kube_pod(name: str, ip: str | None = None, **labels: str) -> Any:
    return Pod.from_dict(pod("shop", name, "node-0", ip, **labels))


def address(
    name: str, ip: str, tenant: str = "shop", pod: str | None = None, uid: str = ""
) -> dict[str, Any]:
    """An address as romanad lists it; ``pod``: the pod (of shop) the CNI allocated it for."""
    found: dict[str, Any] = {"name": name, "ip": ip, "tenant": tenant, "labels": {}}
    if pod is not None:
        found["pod"] = {"namespace": "shop", "name": pod, "uid": uid}
    return found


def spec_of(obj: Any) -> desired.EndpointSpec:
    spec = desired.endpoint(obj)
    assert spec is not None
    return spec


# -- which addresses a pod holds ------------------------------------------------------------
def test_a_terminating_or_finished_pod_is_not_labelled() -> None:
    terminating = pod("shop", "a", "node-0", "10.0.0.1")
    terminating["metadata"]["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    finished = pod("shop", "b", "node-0", "10.0.0.2")
    finished["status"]["phase"] = "Succeeded"
    for obj in (terminating, finished):
        assert desired.endpoint(Pod.from_dict(obj)) is None
        assert desired.live_ip(Pod.from_dict(obj)) is None
    assert desired.live_ip(kube_pod("c", "10.0.0.3")) == "10.0.0.3"


def test_an_address_naming_a_pod_is_that_pods_whatever_the_ips_say() -> None:
    a = kube_pod("a", None, app="web")
    uid = a.metadata.uid = "uid-a"
    held = [
        address("net:a:eth0", "10.0.0.1", pod="a", uid=uid),
        address("net:a:eth1", "10.1.0.1", pod="a"),  # no uid known: still a's
        address("net:a-old:eth0", "10.0.0.2", pod="a", uid="uid-of-an-earlier-a"),
        address("net:b:eth0", "10.0.0.3", pod="b"),
    ]
    holdings = Holdings(held, claims([a]))
    assert [x["name"] for x in holdings.of(spec_of(a))] == ["net:a:eth0", "net:a:eth1"]
    # A pod whose status reports an IP held by an address naming another pod: not its.
    stale = kube_pod("c", "10.0.0.3", app="evil")
    assert Holdings(held, claims([a, stale])).of(spec_of(stale)) == []


def test_an_address_naming_no_pod_is_matched_by_ip_unless_two_live_pods_report_it() -> None:
    held = [address("net:x:eth0", "10.0.0.1"), address("net:y:eth0", "10.0.0.2", tenant="other")]
    one = kube_pod("one", "10.0.0.1")
    assert [x["name"] for x in Holdings(held, claims([one])).of(spec_of(one))] == ["net:x:eth0"]
    # Reused in progress: a second live pod reports the IP; neither is labelled.
    two = kube_pod("two", "10.0.0.1")
    both = Holdings(held, claims([one, two]))
    assert both.of(spec_of(one)) == [] and both.of(spec_of(two)) == []
    # A terminating pod does not count, and another tenant's address is never matched.
    leaving = pod("shop", "two", "node-0", "10.0.0.1")
    leaving["metadata"]["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    assert Holdings(held, claims([one, Pod.from_dict(leaving)])).of(spec_of(one)) != []
    elsewhere = kube_pod("three", "10.0.0.2")
    assert Holdings(held, claims([elsewhere])).of(spec_of(elsewhere)) == []


# -- named ports ----------------------------------------------------------------------------
def test_a_port_name_declared_twice_keeps_the_first_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    obj = pod("shop", "dup", "node-0", "10.0.0.1")
    web = obj["spec"]["containers"][0]
    web["ports"] = [{"name": "http", "containerPort": 80, "protocol": "TCP"}]
    sidecar = {**web, "name": "sidecar"}
    sidecar["ports"] = [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "http", "containerPort": 53, "protocol": "UDP"},  # another protocol: kept
    ]
    init = {**web, "name": "init"}
    init["ports"] = [{"name": "http", "containerPort": 9090}]
    obj["spec"]["containers"] = [web, sidecar]
    obj["spec"]["initContainers"] = [init]
    expected = [
        {"name": "http", "port": 80, "protocol": "tcp"},
        {"name": "http", "port": 53, "protocol": "udp"},
    ]
    with caplog.at_level(logging.WARNING, logger="romana.kube"):
        for _ in range(3):
            assert desired.named_ports(Pod.from_dict(obj)) == expected
    warned = [r for r in caplog.records if "named port twice" in r.getMessage()]
    assert len(warned) == 2  # 8080 and 9090, once each however often the pod is read


# -- NetworkPolicies ------------------------------------------------------------------------
def stand_in(spec: dict[str, Any]) -> desired.PolicySpec:
    return desired.network_policy(KubePolicy.from_dict(policy("shop", "p", spec)))


def test_a_translatable_policy_is_sent_as_written_without_a_marker() -> None:
    document = policy("shop", "p", {"podSelector": {}, "policyTypes": ["Ingress"]})
    document["metadata"]["annotations"] = {NOT_ENFORCED: "set by hand", "team": "a"}
    wanted = desired.network_policy(KubePolicy.from_dict(document))
    assert wanted.not_enforced is None
    assert "annotations" not in wanted.source["metadata"]


@pytest.mark.parametrize(
    ("spec", "pod_selector", "types"),
    [
        (
            {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": 0}]}]},
            {"matchLabels": {"app": "web"}, "matchExpressions": []},
            ["Ingress"],
        ),
        (
            {"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "nonsense"}}]}]},
            {"matchLabels": {}, "matchExpressions": []},
            ["Ingress", "Egress"],
        ),
        (
            {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}]}],
            },
            {"matchLabels": {}, "matchExpressions": []},
            ["Egress"],
        ),
        # Not even the podSelector can be read: every pod of the namespace.
        (
            {
                "podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]},
                "policyTypes": ["Ingress"],
            },
            {"matchLabels": {}, "matchExpressions": []},
            ["Ingress"],
        ),
    ],
)
def test_an_untranslatable_policy_becomes_its_fail_closed_stand_in(
    spec: dict[str, Any], pod_selector: dict[str, Any], types: list[str]
) -> None:
    wanted = stand_in(spec)
    assert wanted.not_enforced is not None and wanted.not_enforced.startswith(
        "cannot be translated"
    )
    assert wanted.source["metadata"] == {
        "name": "p",
        "namespace": "shop",
        "annotations": {NOT_ENFORCED: wanted.not_enforced},
    }
    assert wanted.source["spec"] == {"podSelector": pod_selector, "policyTypes": types}


# -- romanad's errors -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "exc",
    [
        InvalidRequest("host fits no group"),
        TooLarge("request body over 1048576 bytes"),
        Conflict("the IP is another host's"),
        Exhausted("no free block"),
        NotFound("no such address"),
        from_wire(413, b"<html>proxy says too large</html>"),
    ],
)
def test_a_refusal_of_one_object_is_not_transient(exc: RomanaError) -> None:
    assert not is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        Unreachable("cannot reach romanad"),
        StoreError("disk full"),
        Internal("a bug"),
        Unauthorized(),
        from_wire(503, {"error": {"code": "unavailable", "message": "stopping"}}),
        from_wire(502, b"bad gateway"),
    ],
)
def test_romanad_away_or_broken_is_transient(exc: RomanaError) -> None:
    assert is_transient(exc)


def test_a_refusal_is_reported_once_per_message_and_forgotten_once_gone() -> None:
    warned: list[tuple[Subject, str, str]] = []
    refusals = Refusals(lambda *event: warned.append(event))
    subject = Subject("Node", "far-away", uid="u1")
    first = Refusal("RomanaHostRefused", "fits no group", "invalid")
    for _ in range(3):
        refusals.refused(subject, first)
    refusals.refused(subject, Refusal("RomanaHostRefused", "inside a pod network", "invalid"))
    assert [message for _, _, message in warned] == ["fits no group", "inside a pod network"]
    [entry] = refusals.to_json()
    assert entry["kind"] == "Node" and entry["key"] == "far-away"
    assert entry["message"] == "inside a pod network" and entry["fail_closed"] is False
    assert refusals.counts()["Node"] == 1
    refusals.cleared("Node", "far-away")
    assert refusals.to_json() == []
    pod_subject = Subject("Pod", "a", "shop")
    refusals.refused(pod_subject, Refusal("RomanaEndpointRefused", "x", "invalid"))
    refusals.keep_only("Pod", {"shop/b"})
    assert refusals.to_json() == []


class _Romanad:
    """romanad answering add_host per host: a refusal, an outage, or success."""

    def __init__(self, answers: dict[str, RomanaError | None]) -> None:
        self.answers = answers
        self.added: list[str] = []

    def host(self, name: str) -> Any:
        raise NotFound(f"host {name} not found")

    def add_host(self, name: str, ip: str, labels: Any) -> None:
        answer = self.answers[name]
        if answer is not None:
            raise answer
        self.added.append(name)


def test_a_pass_goes_past_refusals_and_stops_at_an_outage_keeping_what_it_had_not_done() -> None:
    from lightkube.resources.core_v1 import Node

    from .kube import node

    answers: dict[str, RomanaError | None] = {
        "a": InvalidRequest("fits no group"),
        "b": None,
        "c": Unreachable("romanad went away"),
        "d": None,
    }
    romanad = _Romanad(answers)
    sync = Sync(romanad, {}, lambda *event: None)  # type: ignore[arg-type]
    sync._caches = {
        "Node": {n: Node.from_dict(node(n, f"192.168.1.{i}")) for i, n in enumerate("abcd")}
    }
    with pytest.raises(Unreachable):
        sync._pass(False, {"Node": set("abcd")})
    assert romanad.added == ["b"]
    assert sync._done == {("Node", "a"), ("Node", "b")}  # c and d stay dirty
    assert [s["key"] for s in sync.refusals.to_json()] == ["a"]


class _RacedRomanad:
    """romanad in which another listener removes the host between its read and our write."""

    def __init__(self) -> None:
        self.added: list[tuple[str, str, Any]] = []

    def host(self, name: str) -> Any:
        return {"name": name, "ip": "192.168.1.0", "labels": {"old": "x"}, "block_count": 0}

    def set_labels(self, name: str, labels: Any) -> None:
        raise NotFound(f"host {name} not found")

    def add_host(self, name: str, ip: str, labels: Any) -> None:
        self.added.append((name, ip, labels))


def test_a_host_removed_by_another_listener_while_relabelled_is_added_not_refused() -> None:
    """Two listeners: one moves a relabelled node (remove + add), the other's relabel
    finds it gone. That is a race, not the node's fault: no refusal, the host is added."""
    from lightkube.resources.core_v1 import Node

    from .kube import node

    romanad = _RacedRomanad()
    events: list[Any] = []
    sync = Sync(romanad, {}, lambda *event: events.append(event))  # type: ignore[arg-type]
    sync._caches = {"Node": {"a": Node.from_dict(node("a", "192.168.1.0"))}}
    sync._pass(False, {"Node": {"a"}})
    assert [name for name, _, _ in romanad.added] == ["a"]
    assert sync.refusals.to_json() == [] and events == []
    assert sync._done == {("Node", "a")}
