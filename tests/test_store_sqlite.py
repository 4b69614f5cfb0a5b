"""The SQLite store: durable, atomic, ordered, exclusive, and faithful to the engine."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from romana.errors import Conflict, RomanaError
from romana.ipam import Engine, Fact, fact_from_json, fact_to_json
from romana.store import (
    Compacted,
    RevisionConflict,
    SqliteStore,
    Store,
    StoreError,
    StoreLocked,
)
from romana.topology import read_file

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "datacenter-4-racks.json"


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStore(tmp_path / "data")
    yield s
    s.close()


def fact(n: int) -> dict[str, Any]:
    return {"kind": "test", "n": n}


def durable_engine(store: SqliteStore) -> Engine:
    """An engine whose sink appends each commit to the store, as romanad wires it."""
    engine = Engine()

    def sink(facts: list[Fact]) -> None:
        store.append([fact_to_json(f) for f in facts], engine.revision)

    engine.sink = sink
    return engine


def populate(engine: Engine, hosts: range, pods: int) -> None:
    """Drive the engine through every kind of change, so every fact kind is stored."""
    if engine.topology is None:
        engine.apply_topology(read_file(EXAMPLE))
    for i in hosts:
        engine.add_host(f"host-{i}", f"192.168.0.{i}", {"my-location-tag": f"rack-{i % 4 + 1}"})
    for i in hosts:
        for p in range(pods):
            engine.allocate(f"pod-{i}-{p}", f"host-{i}", tenant=f"t{p % 2}")
    first = f"host-{hosts[0]}"
    engine.release(f"pod-{hosts[0]}-0")
    engine.allocate(f"pod-{hosts[0]}-again", first)
    engine.add_blackout("romana-network", "10.1.255.0/24")
    engine.remove_host(f"host-{hosts[-1]}")


def replayed(store_facts: list[tuple[int, dict[str, Any]]]) -> Engine:
    return Engine.replay([fact_from_json(f) for _, f in store_facts])


# -- the engine round trip ---------------------------------------------------------------
def test_engine_facts_roundtrip_through_a_reopened_store(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "data") as store:
        engine = durable_engine(store)
        populate(engine, range(1, 9), pods=5)
        assert store.head() == engine.revision > 50
        expected = engine.snapshot()
    with SqliteStore(tmp_path / "data") as store:
        snap, facts = store.load()
        assert snap is None
        assert [r for r, _ in facts] == list(range(1, engine.revision + 1))
        assert replayed(facts).snapshot() == expected


def test_snapshot_plus_later_facts_rebuilds_the_same_state(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "data") as store:
        engine = durable_engine(store)
        populate(engine, range(1, 5), pods=3)
        at = engine.revision
        store.save_snapshot(at, engine.snapshot())
        populate(engine, range(5, 9), pods=4)
        expected = engine.snapshot()
    with SqliteStore(tmp_path / "data") as store:
        snap, facts = store.load()
        assert snap is not None and snap["revision"] == at
        assert [r for r, _ in facts] == list(range(at + 1, engine.revision + 1))
        rebuilt = Engine.from_snapshot(snap)
        rebuilt.apply_durable([fact_from_json(f) for _, f in facts])
        assert rebuilt.revision == engine.revision
        assert rebuilt.snapshot() == expected
        # Compacting to the snapshot must not change what load() rebuilds.
        assert store.compact(at) == at
        snap2, facts2 = store.load()
        assert (snap2, facts2) == (snap, facts)


def test_a_failed_append_leaves_the_engine_unchanged(store: SqliteStore) -> None:
    """The sink raising is how the engine keeps memory and disk in step."""
    engine = durable_engine(store)
    populate(engine, range(1, 3), pods=1)
    before = engine.snapshot()
    store.append([fact(0)], store.head())  # someone else moved the head
    with pytest.raises(RevisionConflict):
        engine.allocate("late", "host-1")
    assert engine.snapshot() == before


# -- append ----------------------------------------------------------------------------
def test_append_returns_new_head_and_numbers_facts_contiguously(store: SqliteStore) -> None:
    assert store.head() == 0
    assert store.append([fact(1)], 0) == 1
    assert store.append([fact(2), fact(3), fact(4)], 1) == 4
    assert store.append([], 4) == 4
    assert store.head() == 4
    assert store.read_since(0) == [(i, fact(i)) for i in range(1, 5)]


def test_revision_conflict_leaves_the_log_unchanged(store: SqliteStore) -> None:
    store.append([fact(1), fact(2)], 0)
    for wrong in (0, 1, 3, 99):
        with pytest.raises(RevisionConflict) as info:
            store.append([fact(100), fact(101)], wrong)
        assert (info.value.expected, info.value.actual) == (wrong, 2)
        assert isinstance(info.value, Conflict)
        assert info.value.code == "conflict" and info.value.http_status == 409
    assert store.head() == 2
    assert store.read_since(0) == [(1, fact(1)), (2, fact(2))]
    assert store.append([fact(3)], 2) == 3  # and the store still works


def test_unserialisable_fact_in_a_batch_writes_nothing(store: SqliteStore) -> None:
    store.append([fact(1)], 0)
    with pytest.raises(StoreError, match="JSON"):
        store.append([fact(2), {"bad": object()}, fact(4)], 1)
    with pytest.raises(StoreError):
        store.append([fact(2), {"nan": float("nan")}], 1)
    assert store.head() == 1
    assert store.read_since(0) == [(1, fact(1))]


def test_database_failure_mid_batch_rolls_back_the_whole_batch(
    store: SqliteStore, tmp_path: Path
) -> None:
    """Fail inside the transaction (not before it) to prove the batch is one transaction."""
    store.append([fact(1)], 0)
    raw = sqlite3.connect(tmp_path / "data" / "romana.db")
    raw.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON facts WHEN NEW.fact LIKE '%boom%' "
        "BEGIN SELECT RAISE(ABORT, 'boom'); END"
    )
    raw.commit()
    try:
        batch = [fact(2), fact(3), {"kind": "boom"}, fact(5)]
        with pytest.raises(StoreError, match="boom"):
            store.append(batch, 1)
        assert store.head() == 1
        assert store.read_since(0) == [(1, fact(1))]
    finally:
        raw.execute("DROP TRIGGER boom")
        raw.commit()
        raw.close()
    assert store.append([fact(2), fact(3)], 1) == 3


def test_append_uses_compact_json(store: SqliteStore, tmp_path: Path) -> None:
    store.append([{"kind": "x", "a": [1, 2]}], 0)
    raw = sqlite3.connect(tmp_path / "data" / "romana.db")
    try:
        assert raw.execute("SELECT fact FROM facts").fetchone()[0] == '{"kind":"x","a":[1,2]}'
    finally:
        raw.close()


# -- read_since and compaction ---------------------------------------------------------
def test_read_since_is_ordered_and_limited(store: SqliteStore) -> None:
    for i in range(1, 11):
        store.append([fact(i)], i - 1)
    assert [r for r, _ in store.read_since(0)] == list(range(1, 11))
    assert store.read_since(7) == [(8, fact(8)), (9, fact(9)), (10, fact(10))]
    assert store.read_since(3, limit=2) == [(4, fact(4)), (5, fact(5))]
    assert store.read_since(10) == []
    assert store.read_since(3, limit=0) == []


def test_compact_needs_a_snapshot_and_never_passes_the_newest(store: SqliteStore) -> None:
    store.append([fact(i) for i in range(1, 21)], 0)
    assert store.compact(15) == 0  # no snapshot: nothing may go
    assert [r for r, _ in store.read_since(0)] == list(range(1, 21))
    store.save_snapshot(10, {"revision": 10})
    assert store.compact(15) == 10  # clamped to the snapshot at 10
    assert store.read_since(10) == [(i, fact(i)) for i in range(11, 21)]
    with pytest.raises(Compacted) as info:
        store.read_since(9)
    assert info.value.oldest_available == 11
    assert info.value.code == "resync"
    assert store.load() == ({"revision": 10}, [(i, fact(i)) for i in range(11, 21)])


def test_compact_below_newest_snapshot_keeps_a_tail_for_readers(store: SqliteStore) -> None:
    store.append([fact(i) for i in range(1, 31)], 0)
    store.save_snapshot(5, {"revision": 5})
    store.save_snapshot(25, {"revision": 25})
    assert store.compact(20) == 20
    assert store.read_since(20)[0] == (21, fact(21))
    with pytest.raises(Compacted) as info:
        store.read_since(19)
    assert info.value.oldest_available == 21
    snap, facts = store.load()
    assert snap == {"revision": 25}
    assert [r for r, _ in facts] == list(range(26, 31))


def test_compacting_everything_keeps_the_head(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "data") as store:
        store.append([fact(i) for i in range(1, 6)], 0)
        store.save_snapshot(5, {"revision": 5})
        assert store.compact(5) == 5
        assert store.head() == 5
    with SqliteStore(tmp_path / "data") as store:
        assert store.head() == 5
        assert store.load() == ({"revision": 5}, [])
        assert store.read_since(5) == []
        with pytest.raises(Compacted) as info:
            store.read_since(4)
        assert info.value.oldest_available == 6
        with pytest.raises(RevisionConflict):
            store.append([fact(1)], 0)
        assert store.append([fact(6)], 5) == 6
        assert store.read_since(5) == [(6, fact(6))]


def test_snapshot_must_not_be_ahead_of_the_log_or_mislabelled(store: SqliteStore) -> None:
    store.append([fact(1)], 0)
    with pytest.raises(StoreError, match="head is 1"):
        store.save_snapshot(2, {"revision": 2})
    with pytest.raises(StoreError, match="says revision 0"):
        store.save_snapshot(1, {"revision": 0})
    assert store.load() == (None, [(1, fact(1))])
    store.save_snapshot(1, {"revision": 1})
    store.save_snapshot(0, {"revision": 0})
    assert store.load() == ({"revision": 1}, [])


# -- the database file -----------------------------------------------------------------
def test_layout_and_durability_settings(store: SqliteStore, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert (data / "romana.db").is_file()
    assert (data / "lock").read_text().strip() == str(os.getpid())
    for conn in (store._writer, store._reader):
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_refuses_a_database_from_a_newer_romana(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "data").close()
    raw = sqlite3.connect(tmp_path / "data" / "romana.db")
    raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SqliteStore(tmp_path / "data")
    # The failed open must not keep the lock.
    assert _try_open_in_child(tmp_path / "data").returncode == 2  # StoreError, not locked


def test_closed_store_refuses_calls(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "data")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.append([fact(1)], 0)
    with pytest.raises(StoreError, match="closed"):
        store.load()


def test_errors_are_romana_errors_and_store_satisfies_the_protocol(store: SqliteStore) -> None:
    assert isinstance(store, Store)
    for exc in (StoreError, RevisionConflict, Compacted, StoreLocked):
        assert issubclass(exc, RomanaError)
    assert issubclass(StoreLocked, StoreError)


# -- the data-dir lock -----------------------------------------------------------------
OPEN_SCRIPT = textwrap.dedent("""
    import sys
    from romana.store import SqliteStore, StoreError, StoreLocked
    try:
        SqliteStore(sys.argv[1]).close()
    except StoreLocked as exc:
        print(exc.message)
        sys.exit(3)
    except StoreError as exc:
        print(exc.message)
        sys.exit(2)
""")


def _try_open_in_child(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", OPEN_SCRIPT, str(data)], capture_output=True, text=True, timeout=60
    )


def test_second_process_is_locked_out_until_the_first_closes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = SqliteStore(data)
    try:
        child = _try_open_in_child(data)
        assert child.returncode == 3, child.stderr
        assert str(data) in child.stdout and f"pid {os.getpid()}" in child.stdout
        with pytest.raises(StoreLocked):  # a second open in this process is refused too
            SqliteStore(data)
        store.append([fact(1)], 0)  # the refused opens did not disturb the holder
    finally:
        store.close()
    child = _try_open_in_child(data)
    assert child.returncode == 0, child.stdout + child.stderr
    with SqliteStore(data) as again:
        assert again.read_since(0) == [(1, fact(1))]


def test_lock_names_the_pid_of_the_holding_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from romana.store import SqliteStore; s = SqliteStore(sys.argv[1]); "
            "print('ready', flush=True); sys.stdin.read()",
            str(data),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLocked, match=f"pid {holder.pid}") as info:
            SqliteStore(data)
        assert str(data) in info.value.message
    finally:
        holder.kill()
        holder.wait(timeout=30)
    SqliteStore(data).close()  # the dead holder's lock is gone with it


# -- crash durability ------------------------------------------------------------------
WRITER_SCRIPT = textwrap.dedent("""
    import sys
    from romana.store import SqliteStore
    store = SqliteStore(sys.argv[1])
    head = store.head()
    while True:
        head = store.append([{"kind": "test", "n": head + i} for i in (1, 2, 3)], head)
        print(head, flush=True)
""")


@pytest.mark.parametrize("acks_before_kill", [1, 37, 150])
def test_acknowledged_appends_survive_kill_9(tmp_path: Path, acks_before_kill: int) -> None:
    data = tmp_path / "data"
    acked: list[int] = []
    for _round in range(2):  # the second round also appends after a crash
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, str(data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            for _ in range(acks_before_kill):
                line = child.stdout.readline()
                assert line.endswith("\n"), child.stderr.read() if child.stderr else ""
                acked.append(int(line))
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
            for stream in (child.stdout, child.stderr):
                if stream is not None:
                    stream.close()
        with SqliteStore(data) as store:
            snap, facts = store.load()
            revisions = [r for r, _ in facts]
            assert snap is None
            assert revisions == list(range(1, len(revisions) + 1))  # contiguous from 1
            assert set(acked) <= set(revisions)  # every acknowledged append survived
            assert len(revisions) % 3 == 0  # no partial batch
            assert all(f == {"kind": "test", "n": r} for r, f in facts)
            assert store.head() == len(revisions)


# -- threads and speed -----------------------------------------------------------------
def test_readers_see_consistent_prefixes_while_a_writer_appends(store: SqliteStore) -> None:
    total = 300
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for i in range(0, total, 3):
                store.append([fact(i + 1), fact(i + 2), fact(i + 3)], i)
                if i == 150:
                    store.save_snapshot(i + 3, {"revision": i + 3})
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def read() -> None:
        try:
            while not done.is_set():
                head = store.head()
                facts = store.read_since(0)
                assert len(facts) % 3 == 0 and len(facts) >= head
                assert facts == [(r, fact(r)) for r in range(1, len(facts) + 1)]
                snap, tail = store.load()
                start = 0 if snap is None else snap["revision"]
                assert [r for r, _ in tail] == list(range(start + 1, start + len(tail) + 1))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert store.head() == total


def test_single_appends_and_a_batch_read_back_in_order(store: SqliteStore) -> None:
    """Rates are measured by benchmarks/store_bench.py, not asserted here."""
    n = 300
    for i in range(n):
        assert store.append([fact(i + 1)], i) == i + 1
    assert store.append([fact(n + 1 + i) for i in range(1000)], n) == n + 1000
    assert store.head() == n + 1000
    rows = store.read_since(0, 2000)
    assert [r for r, _ in rows] == list(range(1, n + 1001))
    assert [f["n"] for _, f in rows] == list(range(1, n + 1001))
