"""Facts serialise losslessly; replay and snapshots rebuild the exact state."""

from __future__ import annotations

import json

import pytest

from romana.ipam import Engine, fact_from_json, fact_to_json
from romana.ipam.facts import Fact

from .conftest import racks_topology


def busy_engine() -> tuple[Engine, list[Fact]]:
    facts: list[Fact] = []
    engine = Engine(sink=facts.extend)
    engine.apply_topology(racks_topology())
    engine.add_host("h1", "192.168.0.1", {"rack": "rack-1"})
    engine.add_host("h2", "192.168.0.2", {"rack": "rack-2"})
    engine.update_labels("h2", {"rack": "rack-2", "gpu": "yes"})
    for i in range(12):
        engine.allocate(f"a{i}", "h1" if i % 3 else "h2", f"t{i % 2}", "s")
    engine.allocate_ip("fixed", "h1", "10.1.1.1", "t0", "s")
    engine.release("a4")
    engine.add_blackout("net", "10.1.2.0/24")
    engine.add_host("h3", "192.168.0.3", {"rack": "rack-1"})
    engine.allocate("b", "h3", "t0")
    engine.remove_host("h3")
    return engine, facts


def test_every_fact_kind_round_trips_through_json() -> None:
    _, facts = busy_engine()
    kinds = {f.kind for f in facts}
    assert kinds == {
        "topology_applied",
        "host_added",
        "host_labels_updated",
        "host_removed",
        "block_assigned",
        "block_freed",
        "area_reserved",
        "area_released",
        "address_allocated",
        "address_released",
        "blackout_added",
    }
    for fact in facts:
        wire = json.loads(json.dumps(fact_to_json(fact)))
        assert fact_from_json(wire) == fact
    assert fact_to_json(facts[-1]) == {"kind": "host_removed", "name": "h3"}
    assigned = next(f for f in facts if f.kind == "block_assigned")
    assert fact_to_json(assigned) == {
        "kind": "block_assigned",
        "network": "net",
        "cidr": "10.1.64.0/29",
        "host": "h2",
        "tenant": "t0",
        "segment": "s",
    }
    area = next(f for f in facts if f.kind == "area_reserved")
    assert fact_to_json(area) == {
        "kind": "area_reserved",
        "network": "net",
        "cidr": "10.1.64.0/18",
        "host": "h2",
    }
    # The fact before areas existed keeps its exact wire form (old logs read the same).
    assert "areas" not in fact_to_json(facts[0])


def test_unknown_fact_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fact kind 'nope'"):
        fact_from_json({"kind": "nope"})


def test_replay_rebuilds_identical_state_and_revision() -> None:
    engine, facts = busy_engine()
    replayed = Engine.replay(facts)
    assert replayed.snapshot() == engine.snapshot()
    assert replayed.revision == engine.revision == len(facts)
    assert replayed.allocate("next", "h1", "t1", "s") == engine.allocate("next", "h1", "t1", "s")


def test_snapshot_is_versioned_json_and_restores_exactly() -> None:
    engine, _ = busy_engine()
    snap = json.loads(json.dumps(engine.snapshot()))
    assert (snap["format"], snap["version"], snap["revision"]) == (
        "romana-ipam-snapshot",
        4,
        engine.revision,
    )
    # h1 gave up half its area to h3, which left: the half stays free for either to use.
    assert snap["areas"] == [
        {"network": "net", "host": "h1", "cidr": "10.1.0.0/19"},
        {"network": "net", "host": "h2", "cidr": "10.1.64.0/18"},
    ]
    restored = Engine.from_snapshot(snap)
    assert restored.snapshot() == snap
    assert restored.revision == engine.revision
    assert [a.to_json() for a in restored.addresses()] == [a.to_json() for a in engine.addresses()]
    assert restored.host("h2").labels == {"rack": "rack-2", "gpu": "yes"}
    assert restored.blackouts("net") == ["10.1.2.0/24"]


def test_version_1_snapshots_from_before_areas_still_load() -> None:
    """A data directory written before host areas: its state is valid, just without areas;
    new blocks then go to areas carved from the free room, old blocks keep their routes."""
    engine, _ = busy_engine()
    snap = json.loads(json.dumps(engine.snapshot()))
    old = {**{k: v for k, v in snap.items() if k != "areas"}, "version": 1}
    restored = Engine.from_snapshot(old)
    assert [a.to_json() for a in restored.addresses()] == [a.to_json() for a in engine.addresses()]
    assert restored.host("h1").groups["net"]["areas"] == []
    fresh = restored.allocate("new", "h1", "t9", "s")
    assert fresh.block not in {b.cidr for b in engine.blocks()}
    assert restored.host("h1").groups["net"]["areas"] != []


POD = {"namespace": "shop", "name": "web-1", "uid": "4c9f0f8e-6f4b"}


def test_an_endpoint_fact_carries_its_pod_and_old_ones_read_the_same() -> None:
    facts: list[Fact] = []
    engine = Engine(sink=facts.extend)
    engine.apply_topology(racks_topology())
    engine.add_host("h1", "192.168.0.1", {"rack": "rack-1"})
    engine.allocate("web", "h1", "shop", labels={"app": "web"}, pod=POD)
    engine.allocate("bare", "h1", "shop", pod={"namespace": "shop", "name": "bare"})
    engine.allocate("old", "h1", "shop", labels={"app": "db"})
    labeled = [f for f in facts if f.kind == "endpoint_labeled"]
    wires = [json.loads(json.dumps(fact_to_json(f))) for f in labeled]
    assert [fact_from_json(w) for w in wires] == labeled
    assert wires[0] == {
        "kind": "endpoint_labeled",
        "name": "web",
        "labels": {"app": "web"},
        "ports": [],
        "pod": POD,
    }
    assert wires[1]["pod"] == {"namespace": "shop", "name": "bare", "uid": ""}
    # Without a pod, the fact keeps the wire form it had before pods were recorded.
    assert wires[2] == {
        "kind": "endpoint_labeled",
        "name": "old",
        "labels": {"app": "db"},
        "ports": [],
    }
    assert Engine.replay(facts).snapshot() == engine.snapshot()


def test_snapshots_keep_pods_and_version_3_ones_load_without() -> None:
    engine, _ = busy_engine()
    engine.allocate("web", "h1", "shop", labels={"app": "web"}, pod=POD)
    engine.allocate("bare", "h1", "shop", pod={"namespace": "shop", "name": "bare"})
    snap = json.loads(json.dumps(engine.snapshot()))
    rows = {row[0]: row for row in snap["policy"]["endpoints"]}
    assert rows["web"] == ["web", {"app": "web"}, [], POD]
    assert rows["bare"] == ["bare", {}, [], {"namespace": "shop", "name": "bare", "uid": ""}]
    restored = Engine.from_snapshot(snap)
    assert restored.snapshot() == snap
    assert restored.address("web").to_json()["pod"] == POD
    assert "labels" not in restored.address("bare").to_json()
    # Version 3: endpoint rows of three, no pods; such a snapshot loads as it was.
    labeled, _ = busy_engine()
    labeled.allocate("lab", "h1", "t0", labels={"app": "x"})
    old = json.loads(json.dumps(labeled.snapshot()))
    assert old["policy"]["endpoints"] == [["lab", {"app": "x"}, []]]
    old["version"] = 3
    old_engine = Engine.from_snapshot(old)
    assert old_engine.snapshot() == {**old, "version": 4}
    assert all("pod" not in a.to_json() for a in old_engine.addresses())


def test_snapshot_version_and_format_are_checked() -> None:
    engine, _ = busy_engine()
    snap = engine.snapshot()
    with pytest.raises(ValueError, match="version 99 is not supported"):
        Engine.from_snapshot({**snap, "version": 99})
    with pytest.raises(ValueError, match="not a Romana IPAM snapshot"):
        Engine.from_snapshot({"revision": 1})


def test_snapshot_of_empty_engine() -> None:
    engine = Engine()
    assert Engine.from_snapshot(engine.snapshot()).snapshot() == engine.snapshot()


def test_sink_failure_leaves_state_unchanged() -> None:
    """The sink (the store) runs before facts apply: a failed write changes nothing."""

    def broken(_: list[Fact]) -> None:
        raise OSError("disk full")

    engine = Engine()
    engine.apply_topology(racks_topology())
    engine.add_host("h1", "192.168.0.1", {"rack": "rack-1"})
    before = engine.snapshot()
    engine.sink = broken
    with pytest.raises(OSError):
        engine.allocate("a", "h1", "t")
    assert engine.snapshot() == before
