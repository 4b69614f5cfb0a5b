"""Policy facts, the agent's copy of romanad's policy inputs, and the nftables rendering.

- Policy facts round-trip through JSON, snapshots (v3) and replay.
- An agent that loads ``/policy/state`` at any revision and follows the feed from there
  holds exactly what romanad holds (hypothesis, over random operation sequences).
- A set update, applied to the old sets, gives exactly the new ones; the rulesets nft is
  given load (``nft -c``), for policies of every shape.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from romana.ipam import Engine, fact_from_json, fact_to_json
from romana.ipam.facts import Fact
from romana.policy.compile import compile_host
from romana.policy.incremental import update_members
from romana.policy.inputs import PolicyInputs, endpoint_json
from romana.policy.k8s import NetworkPolicy
from romana.policy.model import Endpoint
from romana.policy.native import RomanaPolicy
from romana.policy.nft import render_changes, render_full, render_update

from .conftest import racks_topology

POD = {"name": "http", "port": 8080, "protocol": "tcp"}


def k8s(ns: str, name: str, spec: dict[str, object]) -> tuple[object, dict[str, object]]:
    document = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }
    parsed = NetworkPolicy.model_validate(document)
    return parsed.translate(), parsed.source()


POLICIES = [
    k8s("t0", "deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    k8s(
        "t0",
        "web",
        {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {
                    "from": [
                        {"namespaceSelector": {"matchLabels": {"team": "red"}}},
                        {
                            "podSelector": {
                                "matchExpressions": [
                                    {"key": "app", "operator": "NotIn", "values": ["db"]}
                                ]
                            }
                        },
                        {
                            "ipBlock": {
                                "cidr": "10.0.0.0/8",
                                "except": ["10.1.0.0/24", "10.1.0.0/25"],
                            }
                        },
                    ],
                    "ports": [
                        {"port": "http"},
                        {"port": 53, "protocol": "UDP"},
                        {"port": 9000, "endPort": 9100},
                    ],
                }
            ],
        },
    ),
    k8s(
        "t1",
        "out",
        {
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
            "egress": [
                {
                    "to": [
                        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "db"}}}
                    ],
                    "ports": [{"port": 5432}, {"port": 7777, "protocol": "SCTP"}],
                }
            ],
        },
    ),
]
NATIVE = RomanaPolicy.model_validate(
    {
        "id": "icmp",
        "direction": "ingress",
        "applied_to": [{"tenant_id": "t1", "segment_id": "s"}, {"cidr": "10.1.64.0/18"}],
        "ingress": [
            {
                "peers": [{"peer": "host"}, {"peer": "local"}, {"dest": "a1"}],
                "rules": [
                    {"protocol": "icmp", "icmp_type": 8, "icmp_code": 0},
                    {"protocol": "tcp", "port_ranges": [[20, 22]]},
                ],
            }
        ],
    }
)


def populated() -> tuple[Engine, list[Fact]]:
    facts: list[Fact] = []
    engine = Engine(sink=facts.extend)
    engine.apply_topology(racks_topology())
    engine.add_host("h1", "192.168.0.1", {"rack": "rack-1"})
    engine.add_host("h2", "192.168.0.2", {"rack": "rack-2"})
    engine.label_tenant("t1", {"team": "red"})
    for i in range(8):
        labels = {"app": ("web", "db", "cache")[i % 3]}
        engine.allocate(f"a{i}", f"h{1 + i % 2}", f"t{i % 2}", "s", labels, [POD])
    engine.add_policies([(p, s) for p, s in POLICIES], replace=True)  # type: ignore[misc]
    engine.add_policies([(NATIVE.translate(), NATIVE.source())], replace=False)
    return engine, facts


def test_policy_facts_round_trip_replay_and_snapshot() -> None:
    engine, facts = populated()
    engine.label_endpoint("a0", {"app": "web", "v": "2"})
    engine.release("a1")
    engine.remove_policy("k8s:t0:deny")
    engine.label_tenant("t1", {})
    kinds = {f.kind for f in facts}
    assert {"endpoint_labeled", "tenant_labeled", "policy_added", "policy_removed"} <= kinds
    for fact in facts:
        assert fact_from_json(json.loads(json.dumps(fact_to_json(fact)))) == fact
    replayed = Engine.replay(facts)
    restored = Engine.from_snapshot(json.loads(json.dumps(engine.snapshot())))
    assert engine.snapshot()["version"] == 4
    for other in (replayed, restored):
        assert other.state.book == engine.state.book
        assert other.policy_inputs().to_json() == engine.policy_inputs().to_json()
    assert "a1" not in engine.state.book.endpoints  # released: its metadata went with it
    assert engine.tenant("t1")["labels"] == {}


def test_a_snapshot_without_topology_keeps_policies() -> None:
    engine = Engine()
    engine.label_tenant("t0", {"team": "blue"})
    engine.add_policies([POLICIES[0]], replace=True)  # type: ignore[list-item]
    restored = Engine.from_snapshot(engine.snapshot())
    assert restored.state.book == engine.state.book


OPS = st.lists(
    st.tuples(
        st.sampled_from(["allocate", "release", "relabel", "tenant", "policy", "unpolicy", "host"]),
        st.integers(0, 9),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, cut=st.integers(0, 40))
def test_an_agent_following_the_feed_holds_what_romanad_holds(
    ops: list[tuple[str, int]], cut: int
) -> None:
    engine, facts = populated()
    agent: PolicyInputs | None = None
    seen = len(facts)
    for step, (op, n) in enumerate(ops):
        if step == cut:  # the agent starts here: a full state, then the feed
            agent = PolicyInputs.from_json(json.loads(json.dumps(engine.policy_inputs().to_json())))
            seen = len(facts)
        name = f"a{n}"
        try:
            if op == "allocate":
                engine.allocate(
                    name,
                    f"h{1 + n % 2}",
                    f"t{n % 3}",
                    "s" if n % 2 else "",
                    {"app": "web"} if n % 2 else None,
                )
            elif op == "release":
                engine.release(name)
            elif op == "relabel":
                engine.label_endpoint(name, {"app": ("db", "web")[n % 2]}, [POD] if n % 3 else [])
            elif op == "tenant":
                engine.label_tenant(f"t{n % 3}", {"team": "red"} if n % 2 else {})
            elif op == "policy":
                engine.add_policies([POLICIES[n % 3]], replace=True)  # type: ignore[list-item]
            elif op == "unpolicy":
                engine.remove_policy(POLICIES[n % 3][0].key)  # type: ignore[attr-defined]
            elif op == "host":
                engine.remove_host("h2") if n % 2 else engine.add_host(
                    "h2", "192.168.0.2", {"rack": "rack-2"}
                )
        except Exception as exc:  # refusals (not found, conflicts) change nothing
            assert type(exc).__module__ == "romana.errors", exc
    if agent is None:
        agent = PolicyInputs.from_json(engine.policy_inputs().to_json())
        seen = len(facts)
    agent.follow(json.loads(json.dumps([fact_to_json(f) for f in facts[seen:]])))
    truth = engine.policy_inputs()
    assert {n: endpoint_json(e) for n, e in agent.endpoints.items()} == {
        n: endpoint_json(e) for n, e in truth.endpoints.items()
    }
    assert agent.tenants == truth.tenants
    assert agent.hosts == truth.hosts
    assert agent.policies == truth.policies
    for host in ("h1", "h2"):
        assert render_full(compile_host(agent, host)) == render_full(compile_host(truth, host))


def elements(script: str) -> list[tuple[str, str, list[str]]]:
    found = []
    for verb, name, items in re.findall(
        r"^(add|delete) element inet romana (\w+) \{ (.*) \}$", script, re.M
    ):
        found.append((verb, name, [i.strip() for i in items.split(", ")]))
    return found


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["pod", "relabel", "tenant", "gone"]), st.integers(0, 7)),
        min_size=1,
        max_size=12,
    )
)
def test_a_set_update_turns_the_old_sets_into_the_new_ones(ops: list[tuple[str, int]]) -> None:
    engine, _ = populated()
    before = compile_host(engine.policy_inputs(), "h1")
    for op, n in ops:
        name = f"a{n}"
        try:
            if op == "pod":
                engine.allocate(f"new{n}", "h1", "t0", "s", {"app": "web"})
            elif op == "relabel":
                engine.label_endpoint(name, {"app": ("web", "db", "cache")[n % 3]})
            elif op == "tenant":
                engine.label_tenant(f"t{n % 2}", {"team": "red"} if n % 2 else {})
            else:
                engine.release(name)
        except Exception as exc:
            assert type(exc).__module__ == "romana.errors", exc
    after = compile_host(engine.policy_inputs(), "h1")
    script = render_update(before, after)
    if script is None:
        assert before.shape() != after.shape()
        return
    sets = {name: set(s.elements) for name, s in before.sets.items()}
    for verb, name, items in elements(script):
        if verb == "delete":
            keys = set(items)
            sets[name] = {e for e in sets[name] if before.sets[name].key(e) not in keys}
        else:
            assert not set(items) & sets[name], "adding an element that is there"
            sets[name] |= set(items)
    assert sets == {name: set(s.elements) for name, s in after.sets.items()}


def nft_accepts(script: str) -> str:
    done = subprocess.run(["nft", "-c", "-f", "-"], input=script, text=True, capture_output=True)
    return done.stderr if done.returncode else ""


NEEDLES = {
    # h1 holds t0's endpoints (the deny and web policies), h2 t1's (egress, the native one)
    "h1": (
        "ip daddr . meta l4proto . th dport @n_tcp_http accept",
        "10.1.0.0 . tcp . 8080",
        "10.0.0.0/16,\n      10.1.1.0-10.255.255.255",  # 10.0.0.0/8 except 10.1.0.0/24
        "tcp . 9000-9100,\n      udp . 53",
        "flags interval",
    ),
    "h2": ("icmp type 8 icmp code 0", "sctp . 7777", "ip saddr @hosts", "th dport 20-22"),
}


@pytest.mark.root
@pytest.mark.parametrize("host", ["h1", "h2"])
def test_nft_accepts_every_shape_of_rule(host: str) -> None:
    engine, _ = populated()
    text = render_full(compile_host(engine.policy_inputs(), host))
    for needle in NEEDLES[host]:
        assert needle in text, needle
    assert nft_accepts(text) == ""
    # A table with nothing isolated still loads (and accepts everything).
    assert nft_accepts(render_full(compile_host(PolicyInputs(), host))) == ""


def same_ruleset(a: object, b: object) -> bool:
    fields = (
        "chains",
        "sets",
        "isolated",
        "policies",
        "ips",
        "peer_sets",
        "named_sets",
        "oversized",
        "uses",
    )
    return all(getattr(a, f) == getattr(b, f) for f in fields)


CHURN = st.lists(
    st.tuples(st.sampled_from(["pod", "release", "relabel", "tenant"]), st.integers(0, 11)),
    min_size=1,
    max_size=8,
)


@settings(max_examples=80, deadline=None)
@given(ops=CHURN, host=st.sampled_from(["h1", "h2"]))
def test_an_incremental_update_equals_a_full_compile(ops: list[tuple[str, int]], host: str) -> None:
    engine, facts = populated()
    inputs = PolicyInputs.from_json(engine.policy_inputs().to_json())
    before = compile_host(inputs, host)
    seen = len(facts)
    for op, n in ops:
        try:
            if op == "pod":
                engine.allocate(
                    f"new{n}",
                    f"h{1 + n % 2}",
                    f"t{n % 2}",
                    "s",
                    {"app": ("web", "db", "cache", "x")[n % 4]},
                    [POD] if n % 3 else None,
                )
            elif op == "release":
                engine.release(f"a{n % 8}" if n < 8 else f"new{n}")
            elif op == "relabel":
                engine.label_endpoint(
                    f"a{n % 8}", {"app": ("web", "db", "cache", "x")[n % 4]}, [] if n % 2 else [POD]
                )
            else:
                engine.label_tenant(f"t{n % 2}", {"team": "red"} if n % 2 else {})
        except Exception as exc:
            assert type(exc).__module__ == "romana.errors", exc
    changed = inputs.follow(json.loads(json.dumps([fact_to_json(f) for f in facts[seen:]])))
    full = compile_host(inputs, host)
    updated = update_members(before, inputs, host, changed)
    if updated is not None:
        assert same_ruleset(updated, full)
    else:  # only when the chains really differ
        assert before.shape()[0] != full.shape()[0]


def test_a_new_pod_of_an_existing_kind_is_an_incremental_update() -> None:
    engine, facts = populated()
    inputs = PolicyInputs.from_json(engine.policy_inputs().to_json())
    before = compile_host(inputs, "h1")
    seen = len(facts)
    engine.allocate("late", "h1", "t0", "s", {"app": "web"}, [POD])
    changed = inputs.follow([fact_to_json(f) for f in facts[seen:]])
    assert changed.endpoints == {"late"} and not changed.structural
    updated = update_members(before, inputs, "h1", changed)
    assert updated is not None and same_ruleset(updated, compile_host(inputs, "h1"))
    assert render_update(before, updated) is not None  # elements only


@pytest.mark.parametrize(
    ("host", "change"),
    [
        ("h1", lambda e: (e.release("a0"), e.release("a6"))),  # "web" loses its last targets
        ("h2", lambda e: e.allocate("first", "h2", "t0", "s")),  # "deny" gets a first one here
    ],
)
def test_when_chains_change_the_update_says_compile_in_full(host: str, change: object) -> None:
    engine, facts = populated()
    inputs = PolicyInputs.from_json(engine.policy_inputs().to_json())
    before = compile_host(inputs, host)
    seen = len(facts)
    change(engine)  # type: ignore[operator]
    changed = inputs.follow([fact_to_json(f) for f in facts[seen:]])
    assert update_members(before, inputs, host, changed) is None
    assert before.shape()[0] != compile_host(inputs, host).shape()[0]


def listing(netns: str) -> dict[str, object]:
    """The table as nft lists it, handles left out and sets' elements sorted."""
    shown = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-j", "list", "table", "inet", "romana"],
        capture_output=True,
        text=True,
        check=True,
    )
    out: dict[str, object] = {}
    for item in json.loads(shown.stdout)["nftables"]:
        for kind in ("set", "map", "chain", "rule"):
            if kind not in item:
                continue
            entry = {k: v for k, v in item[kind].items() if k != "handle"}
            if kind == "rule":
                rules = out.setdefault(f"rules:{entry['chain']}", [])
                assert isinstance(rules, list)
                rules.append(entry["expr"])
            else:
                if "elem" in entry:
                    entry["elem"] = sorted(json.dumps(e, sort_keys=True) for e in entry["elem"])
                out[f"{kind}:{entry['name']}"] = entry
    return out


def load(netns: str, script: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script, text=True, check=True
    )


@pytest.fixture(scope="module")
def two_netns() -> object:
    names = [f"rt{os.getpid() % 100000}nft{i}" for i in range(2)]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False)


POLICY_CHURN = st.lists(
    st.tuples(st.sampled_from(["add", "remove", "pod", "release", "relabel"]), st.integers(0, 5)),
    min_size=1,
    max_size=6,
)


@pytest.mark.root
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=POLICY_CHURN)
def test_a_chain_by_chain_load_equals_a_whole_load(
    two_netns: list[str], ops: list[tuple[str, int]]
) -> None:
    engine, _ = populated()
    old = compile_host(engine.policy_inputs(), "h1")
    for op, n in ops:
        try:
            if op == "add":
                extra = k8s(
                    "t0",
                    f"extra{n}",
                    {
                        "podSelector": {"matchLabels": {"app": ("web", "db")[n % 2]}},
                        "ingress": [{"ports": [{"port": 1000 + n}]}],
                    },
                )
                engine.add_policies([extra], replace=True)  # type: ignore[list-item]
            elif op == "remove":
                engine.remove_policy(("k8s:t0:deny", "k8s:t0:web", f"k8s:t0:extra{n}")[n % 3])
            elif op == "pod":
                engine.allocate(
                    f"p{n}", "h1", "t0", "s", {"app": ("web", "db", "other")[n % 3]}, [POD]
                )
            elif op == "release":
                engine.release(f"a{2 * (n % 4)}")
            else:
                engine.label_endpoint(f"a{2 * (n % 4)}", {"app": ("web", "db", "other")[n % 3]})
        except Exception as exc:
            assert type(exc).__module__ == "romana.errors", exc
    new = compile_host(engine.policy_inputs(), "h1")
    changes = render_changes(old, new)
    assert changes is not None
    a, b = two_netns
    load(a, render_full(old))
    if changes:
        load(a, changes)
    load(b, render_full(new))
    assert listing(a) == listing(b)


def test_a_stale_holder_of_a_reused_ip_is_displaced_in_both_paths() -> None:
    engine, facts = populated()
    inputs = PolicyInputs.from_json(engine.policy_inputs().to_json())
    # A pod admitted on h1 whose release we never saw, on the IP romanad hands out next.
    seen = len(facts)
    probe = engine.allocate("probe", "h1", "t0", "s")
    engine.release("probe")
    stale = Endpoint("stale", probe.ip, "h1", "t0", "s", {"app": "web"})
    assert inputs.put_endpoint(stale) == set()
    before = compile_host(inputs, "h1")
    engine.allocate("fresh", "h1", "t0", "s", {"app": "db"})
    changed = inputs.follow([fact_to_json(f) for f in facts[seen:]])
    assert "stale" not in inputs.endpoints and inputs.ip_owners[probe.ip] == "fresh"
    assert {"stale", "fresh"} <= changed.endpoints
    full = compile_host(inputs, "h1")
    assert full.isolated["fresh"] == ("k8s:t0:deny",)  # fresh's policies, not stale's too
    updated = update_members(before, inputs, "h1", changed)  # existing chains suffice
    assert updated is not None and same_ruleset(updated, full)


# -- Kubernetes NetworkPolicies: accepted as the API server accepts them --------------------
def k8s_policy(spec: dict[str, Any]) -> NetworkPolicy:
    return NetworkPolicy.model_validate(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "t0"},
            "spec": spec,
        }
    )


def test_a_policy_of_1001_peers_and_ports_is_translated_as_written() -> None:
    """The API server sets no count limit on rules, peers, ports or except."""
    peers = [{"ipBlock": {"cidr": f"172.16.{i // 250}.{i % 250}/32"}} for i in range(1001)]
    ports = [{"port": 1 + i} for i in range(1001)]
    spec = {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": peers, "ports": ports}],
    }
    [rule] = k8s_policy(spec).translate().ingress or ()
    assert rule.peers is not None and rule.ports is not None
    assert len(rule.peers) == 1001 and len(rule.ports) == 1001
    assert rule.peers[1000].to_json() == {"cidr": "172.16.4.0/32", "except": []}


def test_cidrs_with_leading_zeros_are_read_as_go_read_them() -> None:
    """Go before 1.17 read ``010.0.0.0/8`` as decimal 10.0.0.0/8, and the API server keeps
    CIDRs stored then valid."""
    block = {"cidr": "010.000.0.0/08", "except": ["010.1.0.0/16", "10.2.0.1/016"]}
    [rule] = k8s_policy({"ingress": [{"from": [{"ipBlock": block}]}]}).translate().ingress or ()
    assert [p.to_json() for p in rule.peers or ()] == [
        {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.2.0.0/16"]}
    ]
    for bad in ("10.0.0.0/255.0.0.0", "10.0.0.1", "256.0.0.0/8", "1.2.3/8", "10.0.0.0/33"):
        with pytest.raises(ValueError, match="is not a CIDR"):
            k8s_policy({"ingress": [{"from": [{"ipBlock": {"cidr": bad}}]}]})
    outside = {"cidr": "010.0.0.0/8", "except": ["011.0.0.0/16"]}
    with pytest.raises(ValueError, match="strictly inside"):
        k8s_policy({"ingress": [{"from": [{"ipBlock": outside}]}]})


def test_selector_values_older_api_servers_stored_are_accepted_and_match_nothing() -> None:
    odd = ["-not-a-label-value", "has spaces", "x" * 100, "caf\u00e9"]
    peer = {"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": odd}]}}
    spec = {"podSelector": {"matchLabels": {"app": odd[0]}}, "ingress": [{"from": [peer]}]}
    policy = k8s_policy(spec).translate()
    assert not policy.applied_to[0].labels.matches({"app": "web"})
    [rule] = policy.ingress or ()
    [selected] = rule.peers or ()
    assert selected.to_json()["labels"] == [["tier", "In", sorted(odd)]]
    # Keys are still checked (the API server always checked them), and values are text.
    with pytest.raises(ValueError, match="label key"):
        k8s_policy({"podSelector": {"matchLabels": {"bad key!": "x"}}})
    with pytest.raises(ValueError, match="UTF-8"):
        k8s_policy({"podSelector": {"matchLabels": {"app": "\ud800"}}})


def test_the_fail_closed_stand_in_isolates_what_the_original_selects_and_allows_nothing() -> None:
    original = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "t0", "annotations": {"team": "a"}},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "egress": [{"to": [{"ipBlock": {"cidr": "not a cidr"}}]}],
        },
    }
    stand_in = NetworkPolicy.isolating(original, "cannot be translated: the cidr")
    policy = stand_in.translate()
    assert policy.key == "k8s:t0:p" and policy.ingress == () and policy.egress == ()
    [target] = policy.applied_to
    assert target.tenant == "t0" and target.labels.matches({"app": "web"})
    assert not target.labels.matches({"app": "db"})
    source = stand_in.source()
    assert source["metadata"]["annotations"] == {
        "romana.io/not-enforced": "cannot be translated: the cidr"
    }
    assert NetworkPolicy.model_validate(source).source() == source  # stored as sent
    # Nothing readable: both directions, every pod of the namespace.
    garbage = {"metadata": {"name": "p", "namespace": "t0"}, "spec": "garbage"}
    policy = NetworkPolicy.isolating(garbage, "unreadable").translate()
    assert policy.ingress == () and policy.egress == ()
    assert policy.applied_to[0].labels.requirements == ()
