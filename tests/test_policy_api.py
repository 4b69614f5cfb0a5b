"""Policies, tenant labels and endpoint metadata through a real romanad: validation (422
with a JSON path, never a 5xx), conflicts, the changes feed, and survival of a restart."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import EXAMPLES
from .daemon import Daemon, running

pytestmark = pytest.mark.daemons

TOPOLOGY = str(EXAMPLES / "datacenter-4-racks.json")

NATIVE: dict[str, Any] = {
    "id": "web-in",
    "direction": "ingress",
    "description": "http from the shop's frontend",
    "applied_to": [{"tenant_id": "shop", "segment_id": "web"}],
    "ingress": [
        {
            "peers": [{"tenant_id": "shop", "segment_id": "front"}, {"cidr": "10.9.0.0/16"}],
            "rules": [{"protocol": "TCP", "ports": [80, 443], "port_ranges": [[8000, 8080]]}],
        }
    ],
}

K8S: dict[str, Any] = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "db", "namespace": "shop", "uid": "ignored"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [
            {
                "from": [
                    {
                        "namespaceSelector": {"matchLabels": {"team": "shop"}},
                        "podSelector": {
                            "matchExpressions": [
                                {"key": "tier", "operator": "In", "values": ["api", "web"]}
                            ]
                        },
                    }
                ],
                "ports": [{"port": "pg", "protocol": "TCP"}, {"port": 9000, "endPort": 9010}],
            }
        ],
    },
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("policy-api") / "data", "--topology", TOPOLOGY) as d:
        with d.client() as c:
            r = c.post(
                "/hosts",
                json={"name": "h1", "ip": "192.168.0.1", "tags": {"my-location-tag": "rack-1"}},
            )
            assert r.status_code == 200, r.text
        yield d


@pytest.fixture
def client(daemon: Daemon) -> Iterator[httpx.Client]:
    with daemon.client() as c:
        yield c


def invalid(client: httpx.Client, document: Any, path: str, words: str) -> None:
    r = client.post("/policies", json=document)
    assert r.status_code == 422, r.text
    details = r.json()["error"]["details"]
    assert any(d["path"] == path and words in d["message"] for d in details), details


def test_a_native_policy_is_validated_stored_listed_and_removed(client: httpx.Client) -> None:
    r = client.post("/policies", json=NATIVE)
    assert r.status_code == 200, r.text
    (stored,) = r.json()["policies"]
    assert stored["id"] == "web-in" and stored["kind"] == "romana"
    assert stored["source"]["ingress"][0]["rules"][0]["protocol"] == "tcp"  # canonical
    ingress = stored["policy"]["ingress"][0]
    assert ingress["ports"] == [
        {"protocol": "tcp", "port": 80},
        {"protocol": "tcp", "port": 443},
        {"protocol": "tcp", "port": 8000, "end_port": 8080},
    ]
    assert ingress["peers"][1] == {"cidr": "10.9.0.0/16", "except": []}
    # A duplicate id is a conflict, whatever its content.
    assert client.post("/policies", json=NATIVE).status_code == 409
    assert [p["id"] for p in client.get("/policies").json()["policies"]] == ["web-in"]
    assert client.get("/policies/web-in").json()["source"]["description"].startswith("http")
    assert client.delete("/policies/web-in").status_code == 200
    assert client.get("/policies/web-in").status_code == 404
    assert client.delete("/policies/web-in").status_code == 404


def test_the_older_wrapper_is_accepted(client: httpx.Client) -> None:
    legacy = {
        "securitypolicies": [
            {
                "name": "ssh",
                "description": "ssh from anywhere",
                "direction": "Ingress",
                "applied_to": [{"tenant": "demo", "segment": "default"}],
                "peers": [{"peer": "any"}],
                "rules": [{"protocol": "tcp", "ports": [22], "is_stateful": True}],
            },
            {
                "name": "ping",
                "direction": "egress",
                "applied_to": [{"tenant": "demo"}],
                "peers": [{"tenant": "ops"}],
                "rules": [{"protocol": "icmp", "icmp_type": 8, "icmp_code": 0}],
            },
        ]
    }
    r = client.post("/policies", json=legacy)
    assert r.status_code == 200, r.text
    ssh, ping = r.json()["policies"]
    assert ssh["policy"]["ingress"][0]["peers"] == [{"cidr": "0.0.0.0/0", "except": []}]
    assert "ingress" not in ping["policy"] and ping["policy"]["egress"][0]["ports"] == [
        {"protocol": "icmp", "icmp_type": 8, "icmp_code": 0}
    ]
    # All or none: a wrapper with a duplicate adds nothing.
    again = copy.deepcopy(legacy)
    again["securitypolicies"][0]["name"] = "ssh2"
    assert client.post("/policies", json=again).status_code == 409
    assert client.get("/policies/ssh2").status_code == 404
    for key in ("ssh", "ping"):
        assert client.delete(f"/policies/{key}").status_code == 200


def rule(**fields: Any) -> dict[str, Any]:
    document = copy.deepcopy(NATIVE)
    document["ingress"][0]["rules"] = [fields]
    return document


RULES = "body.ingress.0.rules.0"


@pytest.mark.parametrize(
    ("document", "path", "words"),
    [
        (rule(ports=[80]), f"{RULES}.protocol", "Field required"),
        (rule(protocol="gre"), f"{RULES}.protocol", "'tcp', 'udp', 'icmp' or 'any'"),
        (rule(protocol="icmp", ports=[80]), RULES, "only for tcp and udp"),
        (rule(protocol="tcp", ports=[65536]), f"{RULES}.ports.0", "less than or equal to 65535"),
        (rule(protocol="tcp", port_ranges=[[90, 80]]), RULES, "reversed"),
        (rule(protocol="icmp", icmp_type=3, icmp_code=16), RULES, "not defined for icmp_type 3"),
        (rule(protocol="icmp", icmp_code=0), RULES, "icmp_code needs icmp_type"),
        (rule(protocol="tcp", icmp_type=8), RULES, "only for icmp"),
        ({**NATIVE, "direction": "sideways"}, "body.direction", "'ingress' or 'egress'"),
        ({**NATIVE, "id": "a/b"}, "body.id", "invalid policy id"),
        ({**NATIVE, "applied_to": [{"peer": "host"}]}, "body", "not an endpoint"),
        ({**NATIVE, "applied_to": [{}]}, "body.applied_to.0", "exactly one of"),
        (
            {**NATIVE, "applied_to": [{"segment_id": "x", "peer": "any"}]},
            "body.applied_to.0",
            "needs",
        ),
        ({**NATIVE, "colour": "red"}, "body.colour", "Extra inputs"),
    ],
)
def test_malformed_native_policies_are_422_with_a_path(
    client: httpx.Client, document: Any, path: str, words: str
) -> None:
    invalid(client, document, path, words)


def k8s(**spec: Any) -> dict[str, Any]:
    document = copy.deepcopy(K8S)
    document["spec"].update(spec)
    return document


@pytest.mark.parametrize(
    ("document", "path", "words"),
    [
        (k8s(ingress=[{"ports": [{"port": 0}]}]), "body.spec.ingress.0.ports.0", "not in 1-65535"),
        (k8s(ingress=[{"ports": [{"port": "a--b"}]}]), "body.spec.ingress.0.ports.0", "port name"),
        (
            k8s(ingress=[{"ports": [{"port": "http", "endPort": 90}]}]),
            "body.spec.ingress.0.ports.0",
            "endPort needs a numeric port",
        ),
        (
            k8s(ingress=[{"ports": [{"port": 90, "endPort": 80}]}]),
            "body.spec.ingress.0.ports.0",
            "below port",
        ),
        (
            k8s(ingress=[{"ports": [{"protocol": "ICMP"}]}]),
            "body.spec.ingress.0.ports.0.protocol",
            "'TCP', 'UDP' or 'SCTP'",
        ),
        (
            k8s(ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]),
            "body.spec.ingress.0.from.0",
            "cannot be combined",
        ),
        (
            k8s(
                ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}]}]
            ),
            "body.spec.ingress.0.from.0.ipBlock",
            "strictly inside",
        ),
        (
            k8s(podSelector={"matchExpressions": [{"key": "a", "operator": "In"}]}),
            "body.spec.podSelector.matchExpressions.0",
            "non-empty",
        ),
        (
            k8s(podSelector={"matchExpressions": [{"key": "a", "operator": "Near"}]}),
            "body.spec.podSelector.matchExpressions.0.operator",
            "Input should be",
        ),
        (k8s(policyTypes=["Sideways"]), "body.spec.policyTypes.0", "Input should be"),
        (k8s(ingres=[]), "body.spec.ingres", "Extra inputs"),
    ],
)
def test_malformed_network_policies_are_422_with_a_path(
    client: httpx.Client, document: Any, path: str, words: str
) -> None:
    invalid(client, document, path, words)
    r = client.post("/k8s/networkpolicies", json=document)
    assert r.status_code == 422, r.text


def test_network_policies_are_translated_replaced_and_deleted(client: httpx.Client) -> None:
    r = client.post("/k8s/networkpolicies", json=K8S)
    assert r.status_code == 200, r.text
    policy = r.json()["policy"]
    assert r.json()["id"] == "k8s:shop:db"
    assert policy["applied_to"] == [{"labels": [["app", "In", ["db"]]], "tenant": "shop"}]
    assert "egress" not in policy  # policyTypes defaulting: no egress section, no egress
    (allow,) = policy["ingress"]
    assert allow["peers"] == [
        {"labels": [["tier", "In", ["api", "web"]]], "tenants": [["team", "In", ["shop"]]]}
    ]
    assert allow["ports"] == [
        {"protocol": "tcp", "name": "pg"},
        {"protocol": "tcp", "port": 9000, "end_port": 9010},
    ]
    # An update replaces the translation (no MODIFIED event is ignored).
    changed = k8s(ingress=[], egress=[{}])
    r = client.post("/k8s/networkpolicies", json=changed)
    assert r.status_code == 200, r.text
    assert r.json()["policy"]["ingress"] == [] and r.json()["policy"]["egress"] == [{}]
    # `egress: []` without policyTypes does not isolate egress (len(egress) != 0 defaulting).
    r = client.post("/policies", json=k8s(egress=[]))
    assert "egress" not in r.json()["policies"][0]["policy"]
    items = client.get("/k8s/networkpolicies").json()["items"]
    assert [i["metadata"]["name"] for i in items] == ["db"]
    assert client.delete("/k8s/networkpolicies/shop/db").status_code == 200
    assert client.delete("/k8s/networkpolicies/shop/db").status_code == 404


def test_tenant_and_endpoint_labels_follow_the_feed_and_survive_restart(
    daemon: Daemon, client: httpx.Client
) -> None:
    since = client.get("/healthz").json()["revision"]
    r = client.put("/tenants/shop", json={"team": "shop"})
    assert r.status_code == 200, r.text
    assert r.json()["effective_labels"] == {"team": "shop", "kubernetes.io/metadata.name": "shop"}
    assert client.put("/tenants/shop", json={"bad key!": "x"}).status_code == 422
    assert client.put("/tenants/Shop", json={}).status_code == 422
    ports = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    r = client.post(
        "/address",
        json={
            "name": "shop:web-1",
            "host": "h1",
            "tenant": "shop",
            "labels": {"app": "web"},
            "ports": ports,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == {"app": "web"}
    assert r.json()["ports"] == [{"name": "http", "port": 8080, "protocol": "tcp"}]
    r = client.put("/address/shop:web-1/labels", json={"labels": {"app": "web", "v": "2"}})
    assert r.json()["labels"] == {"app": "web", "v": "2"} and r.json()["ports"][0]["port"] == 8080
    assert client.put("/address/nope/labels", json={"labels": {}}).status_code == 404
    assert client.post("/k8s/networkpolicies", json=K8S).status_code == 200

    kinds = [
        c["kind"]
        for c in client.get("/watch", params={"since": since, "timeout": 0}).json()["changes"]
    ]
    assert kinds.count("endpoint_labeled") == 2
    assert "tenant_labeled" in kinds and "policy_added" in kinds

    state = client.get("/policy/state").json()
    (endpoint,) = [e for e in state["endpoints"] if e["name"] == "shop:web-1"]
    assert endpoint["tenant"] == "shop" and endpoint["labels"] == {"app": "web", "v": "2"}

    daemon.kill()  # kill -9: only what was acknowledged durable comes back
    daemon.start()
    with daemon.client() as again:
        assert again.get("/tenants/shop").json()["labels"] == {"team": "shop"}
        assert again.get("/address/shop:web-1").json()["labels"] == {"app": "web", "v": "2"}
        assert again.get("/policies/k8s:shop:db").json()["source"]["metadata"]["name"] == "db"
        assert again.get("/policy/state").json()["endpoints"] == state["endpoints"]
        # Released: the endpoint metadata goes with the address.
        assert again.delete("/address", params={"name": "shop:web-1"}).status_code == 200
        assert "shop:web-1" not in {
            e["name"] for e in again.get("/policy/state").json()["endpoints"]
        }


def test_a_named_port_given_twice_is_refused_by_both_endpoints(client: httpx.Client) -> None:
    """Kubernetes forbids two ports of one name and protocol; romanad kept the last one
    silently. Now a 422 names the field and the duplicate; one name over two protocols
    (DNS on 53/udp and 53/tcp) stays valid."""
    twice = [
        {"name": "http", "containerPort": 80, "protocol": "TCP"},
        {"name": "http", "containerPort": 81},
    ]
    body = {"name": "shop:dup", "host": "h1", "tenant": "shop", "ports": twice}
    r = client.post("/address", json=body)
    assert r.status_code == 422, r.text
    (detail,) = r.json()["error"]["details"]
    assert detail["path"] == "body.ports"
    assert "'http'/tcp" in detail["message"] and "80" in detail["message"]
    assert client.get("/address/shop:dup").status_code == 404  # nothing was allocated
    dns = [{"name": "dns", "port": 53, "protocol": "udp"}, {"name": "dns", "port": 53}]
    r = client.post("/address", json={**body, "ports": dns})
    assert r.status_code == 200, r.text
    assert r.json()["ports"] == [
        {"name": "dns", "port": 53, "protocol": "tcp"},
        {"name": "dns", "port": 53, "protocol": "udp"},
    ]
    r = client.put("/address/shop:dup/labels", json={"ports": list(reversed(twice))})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["path"] == "body.ports"
    assert client.get("/address/shop:dup").json()["ports"][0]["name"] == "dns"  # unchanged
    assert client.delete("/address", params={"name": "shop:dup"}).status_code == 200
