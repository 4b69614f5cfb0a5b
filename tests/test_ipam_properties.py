"""Property tests: IPAM invariants hold for random maps and random operation sequences."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from romana.errors import RomanaError
from romana.ipam import Engine, fact_from_json, fact_to_json
from romana.ipam.facts import Fact
from romana.topology.carving import child_prefix_bits

LABELS = st.sampled_from(
    [
        {},
        {"zone": "a"},
        {"zone": "b"},
        {"zone": "a", "rack": "1"},
        {"zone": "b", "rack": "2"},
        {"rack": "1"},
    ]
)


@st.composite
def group_lists(draw: st.DrawFn, depth: int) -> list[dict[str, Any]]:
    groups = []
    for i in range(draw(st.integers(1, 4))):
        group: dict[str, Any] = {"name": f"g{i}"}
        assignment = draw(
            st.sampled_from([None, {"zone": "a"}, {"zone": "b"}, {"rack": "1"}, {"rack": "2"}])
        )
        if assignment:
            group["assignment"] = assignment
        if depth > 0 and draw(st.booleans()):
            group["groups"] = draw(group_lists(depth - 1))
        else:
            group["groups"] = []
        groups.append(group)
    return groups


def deepest_leaf_bits(groups: list[dict[str, Any]]) -> int:
    bits = child_prefix_bits(len(groups))
    return bits + max((deepest_leaf_bits(g["groups"]) for g in groups if g["groups"]), default=0)


@st.composite
def topologies(draw: st.DrawFn) -> dict[str, Any]:
    groups = draw(group_lists(2))
    prefix = draw(st.integers(20, 24))
    bits = deepest_leaf_bits(groups)
    block_mask = min(32, max(prefix + 1, prefix + bits) + draw(st.integers(0, 3)))
    networks = [{"name": "main", "cidr": f"10.1.0.0/{prefix}", "block_mask": block_mask}]
    names = ["main"]
    if draw(st.booleans()):  # a second network, restricted to tenant t0
        networks.append(
            {
                "name": "sys",
                "cidr": "10.2.0.0/22",
                "tenants": ["t0"],
                "block_mask": min(32, max(23, 22 + bits) + draw(st.integers(0, 2))),
            }
        )
        names.append("sys")
    return {"networks": networks, "topologies": [{"networks": names, "map": groups}]}


ALLOC = st.tuples(
    st.just("alloc"), st.integers(0, 40), st.integers(0, 7), st.integers(0, 2), st.integers(0, 1)
)
OPS = st.one_of(
    ALLOC,
    ALLOC,
    ALLOC,
    ALLOC,
    ALLOC,
    ALLOC,
    ALLOC,
    ALLOC,
    st.tuples(st.just("add"), st.integers(0, 7), LABELS),
    st.tuples(st.just("remove"), st.integers(0, 7)),
    st.tuples(st.just("labels"), st.integers(0, 7), LABELS),
    st.tuples(st.just("alloc_ip"), st.integers(0, 40), st.integers(0, 7), st.integers(0, 1023)),
    st.tuples(st.just("release"), st.integers(0, 40)),
    st.tuples(st.just("release"), st.integers(0, 40)),
    st.tuples(st.just("release_ip"), st.integers(0, 1023)),
    st.tuples(st.just("blackout"), st.integers(0, 1023), st.integers(26, 32)),
    st.tuples(st.just("unblackout"), st.integers(0, 5)),
    st.tuples(st.just("reapply")),
)


def run(engine: Engine, doc: dict[str, Any], op: tuple[Any, ...]) -> None:
    kind = op[0]
    main_base = (10 << 24) | (1 << 16)
    if kind == "add":
        engine.add_host(f"h{op[1]}", f"192.168.0.{op[1] + 1}", op[2])
    elif kind == "remove":
        engine.remove_host(f"h{op[1]}")
    elif kind == "labels":
        engine.update_labels(f"h{op[1]}", op[2])
    elif kind == "alloc":
        engine.allocate(f"n{op[1]}", f"h{op[2]}", f"t{op[3]}", f"s{op[4]}")
    elif kind == "alloc_ip":
        ip = main_base + op[3]
        engine.allocate_ip(f"n{op[1]}", f"h{op[2]}", f"10.1.{ip >> 8 & 255}.{ip & 255}", "t1")
    elif kind == "release":
        engine.release(f"n{op[1]}")
    elif kind == "release_ip":
        engine.release(f"10.1.{op[1] >> 8}.{op[1] & 255}")
    elif kind == "blackout":
        ip = main_base + (op[1] & ~((1 << (32 - op[2])) - 1))
        engine.add_blackout("main", f"10.1.{ip >> 8 & 255}.{ip & 255}/{op[2]}")
    elif kind == "unblackout":
        cidrs = engine.blackouts("main")
        if cidrs:
            engine.remove_blackout("main", cidrs[op[1] % len(cidrs)])
    elif kind == "reapply":
        engine.apply_topology(doc)


def check_invariants(engine: Engine) -> None:
    st_ = engine.state
    assert len(st_.ips) == len(st_.addresses)
    per_block: dict[int, int] = {}
    for name, address in st_.addresses.items():
        block = address.block
        assert address.name == name
        assert st_.ips[address.ip] is address  # no address handed out twice
        assert block.base <= address.ip < block.base + block.tree.block_size
        assert st_.blocks[block.base] is block
        assert block.used >> (address.ip - block.base) & 1
        assert not st_.blackouts[block.tree.name].contains(address.ip)
        per_block[block.base] = per_block.get(block.base, 0) + 1
    for base, block in st_.blocks.items():
        tree, leaf = block.tree, block.leaf
        host = st_.hosts[block.host]
        assert host.blocks[base] is block
        assert host.placements[tree.name] is leaf  # block inside its host's leaf group
        assert leaf.contains(base) and leaf.contains(base + tree.block_size - 1)
        assert base % tree.block_size == 0
        assert leaf.blocks[block.index] is block
        assert block.allocated == per_block.get(base, 0) == bin(block.used).count("1") > 0
        assert block.black == st_.blackouts[tree.name].mask(base, tree.block_size)
        key = (block.host, block.tenant, block.segment, tree.name)
        assert (block in st_.nonfull.get(key, [])) == (not block.is_full)
    for tree in st_.trees.values():
        blackouts = st_.blackouts[tree.name]
        placed = 0
        for leaf in tree.leaves.values():
            pool = set(leaf.pool)
            assert not pool & set(leaf.blocks)  # emptied blocks are back in the pool...
            for index in range(leaf.block_count):
                base = leaf.base + index * tree.block_size
                covered = blackouts.covers(base, base + tree.block_size)
                # ...and every block is exactly one of: assigned, free, wholly blacked out.
                assert (index in pool) + (index in leaf.blocks) + covered == 1
            placed += len(leaf.hosts)
            for name in leaf.hosts:
                assert st_.hosts[name].placements[tree.name] is leaf
        assert tree.root.host_count == placed
    for owned in st_.nonfull.values():
        assert owned == sorted(owned, key=lambda b: b.base) and owned
    check_areas(engine)


def check_areas(engine: Engine) -> None:
    """Areas: aligned, laminar, never equal, placed hosts only, counts exact, and no area
    wholly covered by another single host's stray blocks (their route would equal it)."""
    for tree in engine.state.trees.values():
        for leaf in tree.leaves.values():
            areas = list(leaf.areas)
            for area in areas:
                assert area.size & (area.size - 1) == 0 and area.start % area.size == 0
                assert area.start >= 0 and area.end <= leaf.block_count
                assert area.host in leaf.hosts
                mine = [
                    b for b in leaf.blocks.values() if b.host == area.host and area.holds(b.index)
                ]
                assert area.count == len(mine)
                # Another host's stray blocks (outside its own areas) never cover an area
                # whole: collapsed, they would form a route equal to the area's.
                inside = [leaf.blocks.get(i) for i in range(area.start, area.end)]
                owners = {b.host for b in inside if b is not None}
                if len(owners) == 1 and all(b is not None for b in inside):
                    (owner,) = owners
                    stray = all(
                        leaf.areas.innermost(b.index).host != owner for b in inside if b is not None
                    )
                    if owner != area.host and stray:
                        raise AssertionError(f"{area} wholly covered by strays of {owner}")
            for a, b in itertools.combinations(areas, 2):
                disjoint = a.end <= b.start or b.end <= a.start
                nested = (a.start <= b.start and b.end <= a.end) or (
                    b.start <= a.start and a.end <= b.end
                )
                assert disjoint or nested, f"{a} and {b} overlap"
                assert (a.start, a.size) != (b.start, b.size)
            nested = sum(1 for a in areas if leaf.areas.enclosing(a.start, a.size) is not None)
            assert leaf.areas.loans == nested
            for host, mine_areas in leaf.areas.by_host.items():
                assert sorted(mine_areas, key=lambda a: (-a.size, a.start)) == mine_areas
                assert all(a.host == host for a in mine_areas)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=topologies(),
    labels=st.lists(LABELS, min_size=6, max_size=6),
    ops=st.lists(OPS, min_size=20, max_size=80),
)
def test_random_operations_keep_every_invariant(
    doc: dict[str, Any], labels: list[dict[str, str]], ops: list[tuple[Any, ...]]
) -> None:
    facts: list[Fact] = []
    engine = Engine(sink=facts.extend)
    engine.apply_topology(doc)
    ops = [("add", i, host_labels) for i, host_labels in enumerate(labels)] + ops
    for op in ops:
        revision, before = engine.revision, len(facts)
        try:
            run(engine, doc, op)
            event(f"{op[0]} ok")
        except RomanaError as exc:
            event(f"{op[0]} refused: {type(exc).__name__}")
            assert engine.revision == revision and len(facts) == before  # refusals change nothing
        assert engine.revision == len(facts)
        check_invariants(engine)

    snapshot = engine.snapshot()
    # Replay of the fact log, through JSON as a store would, equals the live state.
    wire = [json.loads(json.dumps(fact_to_json(f))) for f in facts]
    replayed = Engine.replay([fact_from_json(f) for f in wire])
    assert replayed.snapshot() == snapshot
    restored = Engine.from_snapshot(json.loads(json.dumps(snapshot)))
    assert restored.snapshot() == snapshot
    check_invariants(replayed)
    check_invariants(restored)
    # Derived state (pools, owner indexes) matches too: the same next operations agree.
    for i, host in enumerate(engine.state.hosts):
        outcomes = []
        for candidate in (engine, replayed, restored):
            try:
                outcomes.append(candidate.allocate(f"probe{i}", host, "t1").to_json())
            except RomanaError as exc:
                outcomes.append({"error": exc.message})
        assert outcomes[0] == outcomes[1] == outcomes[2]


@settings(max_examples=60, deadline=None)
@given(doc=topologies(), hosts=st.lists(LABELS, min_size=1, max_size=12))
def test_placement_is_deterministic_and_balanced(
    doc: dict[str, Any], hosts: list[dict[str, str]]
) -> None:
    def place() -> list[dict[str, Any]]:
        engine = Engine()
        engine.apply_topology(doc)
        out = []
        for i, labels in enumerate(hosts):
            try:
                out.append(engine.add_host(f"h{i}", f"192.168.1.{i + 1}", labels).groups)
            except RomanaError as exc:
                out.append({"error": exc.message})
        tree = engine.state.trees["main"]
        for node in tree.nodes.values():
            # Balance: with unlabelled hosts only, the children of a group that can take
            # them never differ by more than one host.
            eligible = [c.host_count for c in node.children if tree.eligible(c, {})]
            if all(not h for h in hosts) and len(eligible) > 1:
                assert max(eligible) - min(eligible) <= 1
        return out

    assert place() == place()
