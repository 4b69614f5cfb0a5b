"""Undoing a batch that never became durable (a replica lost the race to append it):
the state, the routes and every later decision equal those of an engine that never
planned the batch. Property-tested over random maps and operation sequences."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from romana.errors import RomanaError
from romana.ipam import Engine
from romana.ipam.undo import Journal
from romana.routes import RouteTracker

from .test_ipam_properties import LABELS, OPS, check_invariants, run, topologies

POD_LABELS = st.sampled_from([{}, {"app": "web"}, {"app": "db", "tier": "1"}])
# The pod an address is for; a retry with another uid is the same pod made again.
PODS = st.sampled_from(
    [
        {"namespace": "t1", "name": "web-0", "uid": ""},
        {"namespace": "t1", "name": "web-0", "uid": "4c9f0f8e"},
        {"namespace": "t1", "name": "db-0", "uid": "0b7e8c1a"},
    ]
)
ALLOC_POD = st.tuples(st.just("alloc_pod"), st.integers(0, 40), st.integers(0, 7), PODS, POD_LABELS)
POLICY_OPS = st.one_of(
    st.tuples(st.just("label_pod"), st.integers(0, 40), POD_LABELS),
    st.tuples(st.just("label_tenant"), st.integers(0, 2), POD_LABELS),
    st.tuples(st.just("alloc_labeled"), st.integers(0, 40), st.integers(0, 7), POD_LABELS),
    ALLOC_POD,
)
ANY_OPS = st.one_of(OPS, POLICY_OPS)
# What a batch of pod starts and stops holds, with now and then anything at all.
HOT_OPS = st.one_of(
    st.tuples(
        st.just("alloc"),
        st.integers(0, 40),
        st.integers(0, 5),
        st.integers(0, 2),
        st.integers(0, 1),
    ),
    st.tuples(st.just("alloc_labeled"), st.integers(0, 40), st.integers(0, 5), POD_LABELS),
    ALLOC_POD,
    st.tuples(st.just("release"), st.integers(0, 40)),
    st.tuples(st.just("label_pod"), st.integers(0, 40), POD_LABELS),
    st.tuples(st.just("label_tenant"), st.integers(0, 2), POD_LABELS),
)
BATCH_OPS = st.one_of(HOT_OPS, HOT_OPS, HOT_OPS, ANY_OPS)


def run_any(engine: Engine, doc: dict[str, Any], op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "label_pod":
        engine.label_endpoint(f"n{op[1]}", op[2], [{"name": "http", "port": 80, "protocol": "tcp"}])
    elif kind == "label_tenant":
        engine.label_tenant(f"t{op[1]}", op[2])
    elif kind == "alloc_labeled":
        engine.allocate(f"n{op[1]}", f"h{op[2]}", "t1", labels=op[3])
    elif kind == "alloc_pod":  # labels or none: a retry without labels keeps them
        engine.allocate(f"n{op[1]}", f"h{op[2]}", "t1", labels=op[4] or None, pod=op[3])
    else:
        run(engine, doc, op)


def outcome(engine: Engine, doc: dict[str, Any], op: tuple[Any, ...]) -> object:
    revision = engine.revision
    try:
        run_any(engine, doc, op)
    except RomanaError as exc:
        return type(exc).__name__
    return engine.revision - revision


def tracked(engine: Engine) -> RouteTracker:
    tracker = RouteTracker(lambda: engine.state)
    engine.observers.append(tracker.observe)
    return tracker


def routes(tracker: RouteTracker) -> dict[str, Any]:
    return {name: s.to_json() for name, s in tracker.all_sets().items()}


def prepared(
    engine: Engine, doc: dict[str, Any], labels: list[dict[str, str]], before: list[Any]
) -> dict[str, Any]:
    """``engine`` with the map, six hosts and ``before`` done; its snapshot."""
    engine.apply_topology(doc)
    for op in [("add", i, host_labels) for i, host_labels in enumerate(labels)] + before:
        outcome(engine, doc, op)
    return engine.snapshot()


def planned(engine: Engine, doc: dict[str, Any], batch: list[Any]) -> Journal:
    """``batch`` done with a journal open, as a replica plans before it appends."""
    journal = engine.open_journal()
    for op in batch:
        outcome(engine, doc, op)
    undone = sum(len(entry) for entry in journal.entries)
    event(f"journal of {'0' if not undone else '1-9' if undone < 10 else '10+'} facts")
    return journal


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=topologies(),
    labels=st.lists(LABELS, min_size=6, max_size=6),
    before=st.lists(ANY_OPS, min_size=5, max_size=60),
    batch=st.lists(BATCH_OPS, min_size=1, max_size=25),
    after=st.lists(ANY_OPS, min_size=1, max_size=25),
)
def test_an_undone_batch_leaves_no_trace(
    doc: dict[str, Any],
    labels: list[dict[str, str]],
    before: list[tuple[Any, ...]],
    batch: list[tuple[Any, ...]],
    after: list[tuple[Any, ...]],
) -> None:
    engine = Engine()
    tracker = tracked(engine)
    snapshot = prepared(engine, doc, labels, before)
    tracker.all_sets()  # the tracker holds every device's routes before the batch
    journal = planned(engine, doc, batch)
    if not engine.undo(journal):
        event("not invertible: rebuilt from the store instead")
        return
    assert engine.journal is None
    assert engine.revision == snapshot["revision"]
    assert engine.snapshot() == snapshot
    check_invariants(engine)
    fresh = Engine.from_snapshot(snapshot)
    fresh_tracker = tracked(fresh)
    assert routes(tracker) == routes(fresh_tracker)
    # Every later decision is the one an engine that never saw the batch makes.
    for op in after:
        assert outcome(engine, doc, op) == outcome(fresh, doc, op)
    assert engine.snapshot() == fresh.snapshot()
    assert routes(tracker) == routes(fresh_tracker)


def test_facts_without_an_inverse_make_the_journal_incomplete() -> None:
    engine = Engine()
    engine.apply_topology(
        {
            "networks": [{"name": "main", "cidr": "10.1.0.0/24", "block_mask": 29}],
            "topologies": [{"networks": ["main"], "map": [{"name": "g0", "groups": []}]}],
        }
    )
    engine.add_host("h0", "192.168.0.1")
    journal = engine.open_journal()
    engine.allocate("a", "h0", "t1")
    engine.add_blackout("main", "10.1.0.128/25")  # changes every pool: no inverse
    assert not journal.complete
    assert not engine.undo(journal)
    assert engine.journal is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=topologies(),
    labels=st.lists(LABELS, min_size=6, max_size=6),
    before=st.lists(HOT_OPS, min_size=5, max_size=60),
    batch=st.lists(HOT_OPS, min_size=5, max_size=60),
)
def test_pod_starts_and_stops_always_undo(
    doc: dict[str, Any],
    labels: list[dict[str, str]],
    before: list[tuple[Any, ...]],
    batch: list[tuple[Any, ...]],
) -> None:
    """Without blackouts or topology changes every batch undoes (no rebuild from the store)."""
    engine = Engine()
    snapshot = prepared(engine, doc, labels, before)
    assert engine.undo(planned(engine, doc, batch))
    assert engine.snapshot() == snapshot


def test_what_a_batch_did_to_pods_undoes_to_the_pods_before() -> None:
    """The inverses bring back a released address's pod, the pod a relabel or a retry for
    a pod made again replaced, and take a new pod away."""
    engine = Engine()
    engine.apply_topology(
        {
            "networks": [{"name": "main", "cidr": "10.1.0.0/24", "block_mask": 29}],
            "topologies": [{"networks": ["main"], "map": [{"name": "g0", "groups": []}]}],
        }
    )
    engine.add_host("h0", "192.168.0.1")
    web = {"namespace": "t1", "name": "web-0", "uid": "4c9f0f8e"}
    engine.allocate("web", "h0", "t1", labels={"app": "web"}, pod=web)
    engine.allocate("db", "h0", "t1", pod={"namespace": "t1", "name": "db-0", "uid": ""})
    engine.allocate("bare", "h0", "t1")
    snapshot = engine.snapshot()
    journal = engine.open_journal()
    engine.release("web")
    engine.allocate("web", "h0", "t1", pod={**web, "uid": "0b7e8c1a"})
    engine.label_endpoint("db", {"app": "db"})
    engine.allocate("bare", "h0", "t1", pod={"namespace": "t1", "name": "bare-0"})
    engine.allocate("new", "h0", "t1", pod={"namespace": "t1", "name": "new-0"})
    kinds = [type(f).__name__ for entry in journal.entries for f in entry]
    assert kinds.count("EndpointLabeled") == 5
    assert engine.undo(journal)
    assert engine.snapshot() == snapshot
    assert engine.address("web").to_json()["pod"] == web
