"""The compiler's arithmetic, in memory: address blocks as intervals, ports as merged
ranges, rules that do not multiply with peers x ports, and the size budget (fail closed).
(The truth tables against real packets are in tests/test_policy_e2e.py.)"""

from __future__ import annotations

import ipaddress
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from romana.policy.compile import Budget, block_intervals, compile_host
from romana.policy.incremental import update_members
from romana.policy.inputs import Changed, PolicyInputs
from romana.policy.model import Block, Endpoint

from .test_policy_units import k8s

NETS = st.builds(
    lambda address, prefix: ipaddress.IPv4Network((address, prefix), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(4, 32),
)


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    outer = draw(NETS)
    inner = draw(
        st.lists(
            st.builds(
                lambda offset, extra: ipaddress.IPv4Network(
                    (
                        int(outer.network_address) + offset % outer.num_addresses,
                        min(32, outer.prefixlen + extra),
                    ),
                    strict=False,
                ),
                st.integers(0, 2**32 - 1),
                st.integers(1, 8),
            ),
            max_size=4,
        )
    )
    return Block(str(outer), tuple(str(n) for n in inner))


@settings(max_examples=300, deadline=None)
@given(
    chosen=st.lists(blocks(), min_size=1, max_size=5),
    probes=st.lists(st.integers(0, 2**32 - 1), max_size=40),
)
def test_block_intervals_hold_exactly_the_addresses_of_the_blocks(
    chosen: list[Block], probes: list[int]
) -> None:
    intervals = block_intervals(chosen)
    # Sorted, disjoint and never touching (nft refuses overlaps; we merge neighbours).
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(intervals))
    edges = [p for lo, hi in intervals for p in (lo - 1, lo, hi, hi + 1)]
    for address in [*probes, *(e for e in edges if 0 <= e < 2**32)]:
        ip = ipaddress.IPv4Address(address)
        inside = any(
            ip in ipaddress.IPv4Network(b.cidr)
            and not any(ip in ipaddress.IPv4Network(e) for e in b.excluded)
            for b in chosen
        )
        assert inside == any(lo <= address <= hi for lo, hi in intervals), ip


def cluster(policies: list[tuple[object, dict[str, object]]]) -> PolicyInputs:
    inputs = PolicyInputs()
    inputs.hosts = {"h1": "192.168.0.1"}
    for i in range(20):
        inputs.put_endpoint(
            Endpoint(f"p{i}", f"10.1.0.{i}", "h1", "t", "", {"app": ("web", "db")[i % 2]})
        )
    for policy, _ in policies:
        inputs.policies[policy.key] = policy  # type: ignore[attr-defined]
    return inputs


def wide(n: int, name: str = "wide") -> tuple[object, dict[str, object]]:
    return k8s(
        "t",
        name,
        {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [
                {
                    "from": [
                        {"ipBlock": {"cidr": f"172.{16 + i // 125}.{2 * (i % 125)}.0/24"}}
                        for i in range(n)
                    ]
                    + [{"podSelector": {"matchLabels": {"app": "web"}}}],
                    "ports": [{"port": 1 + 2 * i} for i in range(n)]
                    + [{"port": 5000, "endPort": 5010, "protocol": "UDP"}, {"port": "http"}],
                }
            ],
        },
    )


def test_peers_times_ports_is_a_constant_number_of_rules() -> None:
    sizes = {}
    for n in (1, 10, 1000):
        ruleset = compile_host(cluster([wide(n)]), "h1")
        chain = ruleset.chains[f"{ruleset.policies['k8s:t:wide']}_in"]
        sizes[n] = (len(chain), ruleset.elements)
    # blocks and selectors (2 peer matches) x ports and named ports (2 port matches)
    assert sizes[10][0] == sizes[1000][0] == 4
    # the elements grow with n (one per block, one per port), not with n * n
    assert sizes[1000][1] - sizes[10][1] == 2 * (1000 - 10)


def test_ports_merge_and_a_protocol_alone_is_every_port() -> None:
    policy = k8s(
        "t",
        "ports",
        {
            "podSelector": {},
            "ingress": [
                {
                    "ports": [
                        {"port": 80, "endPort": 90},
                        {"port": 85, "endPort": 100},
                        {"port": 101},
                        {"port": 53, "protocol": "UDP"},
                        {"protocol": "SCTP"},
                    ]
                }
            ],
        },
    )
    ruleset = compile_host(cluster([policy]), "h1")
    (ports,) = [s for name, s in ruleset.sets.items() if name.startswith("t_")]
    assert ports.flags == "interval"
    assert ports.elements == {"tcp . 80-101", "udp . 53", "sctp . 0-65535"}


def test_a_policy_past_its_budget_allows_nothing_and_the_others_load() -> None:
    budget = Budget(policy=500, table=100_000)
    inputs = cluster([wide(1000), wide(10, "small")])
    ruleset = compile_host(inputs, "h1", budget=budget)
    assert list(ruleset.oversized) == ["k8s:t:wide"]
    assert "500" in ruleset.oversized["k8s:t:wide"]
    wide_prefix, small_prefix = (ruleset.policies[k] for k in ("k8s:t:wide", "k8s:t:small"))
    assert ruleset.chains[f"{wide_prefix}_in"] == ()  # isolated, nothing allowed
    assert len(ruleset.chains[f"{small_prefix}_in"]) == 4
    assert set(ruleset.isolated["p1"]) == {"k8s:t:small", "k8s:t:wide"}  # still isolated
    # The table's budget: the second policy no longer fits once the first one does.
    tight = compile_host(inputs, "h1", budget=Budget(policy=100_000, table=1_500))
    assert list(tight.oversized) == ["k8s:t:wide"]  # small is compiled first, and fits
    assert "--policy-max-table" in tight.oversized["k8s:t:wide"]


def test_pods_that_grow_a_policy_past_its_budget_need_a_full_compile() -> None:
    inputs = cluster([wide(10)])
    budget = Budget(policy=40, table=100_000)
    before = compile_host(inputs, "h1", budget=budget)
    assert not before.oversized
    for i in range(20, 40):  # web pods: members of the policy's selector set
        inputs.put_endpoint(Endpoint(f"p{i}", f"10.1.0.{i}", "h2", "t", "", {"app": "web"}))
    changed = Changed(endpoints={f"p{i}" for i in range(20, 40)})
    assert update_members(before, inputs, "h1", changed) is None
    assert list(compile_host(inputs, "h1", budget=budget).oversized) == ["k8s:t:wide"]
