"""The etcd store against a real etcd process: ordered, atomic, conflict-checked appends,
reads from any revision, chunked snapshots, compaction of the log and of etcd's history,
endpoint failover, writes whose answer was lost, and romanad running on it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from romana.api.service import IpamService
from romana.errors import Compacted, OutcomeUnknown, RevisionConflict, StoreError
from romana.ipam import Engine, Fact, fact_to_json
from romana.store.base import SharedStore
from romana.store.etcd import EtcdStore, parse_url
from romana.store.etcd_client import EtcdClient
from romana.store.sqlite import SqliteStore
from romana.topology import read_file

from .conftest import EXAMPLES
from .daemon import Daemon, free_port
from .etcd import EtcdMember, etcd_cluster
from .wait import wait_until_async

pytestmark = [pytest.mark.daemons, pytest.mark.etcd]


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdMember]:
    with etcd_cluster(1) as members:
        yield members[0]


@pytest.fixture
def store(etcd: EtcdMember) -> Iterator[EtcdStore]:
    s = EtcdStore(EtcdClient([etcd.url]), f"/test-{uuid.uuid4().hex}")
    yield s
    s.close()


def fact(n: int) -> dict[str, Any]:
    return {"kind": "test", "n": n}


def test_appends_are_ordered_atomic_and_conflict_checked(store: EtcdStore) -> None:
    assert store.head() == 0 and store.load() == (None, [])
    assert store.append([fact(1), fact(2), fact(3)], 0) == 3
    assert store.append([fact(4)], 3) == 4
    with pytest.raises(RevisionConflict):
        store.append([fact(99)], 3)  # someone else appended first
    assert store.head() == 4
    assert store.read_since(0) == [(n, fact(n)) for n in range(1, 5)]
    assert store.read_since(2) == [(3, fact(3)), (4, fact(4))]  # inside a batch
    assert store.read_since(1, limit=2) == [(2, fact(2)), (3, fact(3))]
    assert store.read_since(4) == []


def test_a_second_store_on_the_prefix_is_the_same_store(store: EtcdStore, etcd: EtcdMember) -> None:
    store.append([fact(1)], 0)
    again = EtcdStore(EtcdClient([etcd.url]), store.prefix.decode())
    try:
        assert again.store_id == store.store_id and again.head() == 1
    finally:
        again.close()
    other = EtcdStore(EtcdClient([etcd.url]), store.prefix.decode() + "-other")
    try:
        assert other.store_id != store.store_id and other.head() == 0
    finally:
        other.close()


def test_chunked_snapshots_and_compaction(store: EtcdStore) -> None:
    for i in range(10):
        store.append([fact(2 * i + 1), fact(2 * i + 2)], 2 * i)
    big = {"revision": 12, "blob": "x" * 1_300_000}  # three pieces of 512 KiB
    store.save_snapshot(12, big)
    snapshot, facts = store.load()
    assert snapshot == big and [n for n, _ in facts] == list(range(13, 21))
    assert store.compact(11) == 10  # batches wholly at or before 11: 1..10
    with pytest.raises(Compacted):
        store.read_since(3)
    assert [n for n, _ in store.read_since(10)] == list(range(11, 21))
    store.save_snapshot(20, {"revision": 20})
    assert store.compact(1_000) == 10  # never past the newest snapshot
    assert store.load() == ({"revision": 20}, [])
    with pytest.raises(StoreError):
        store.save_snapshot(21, {"revision": 21})  # past the head


def test_an_engine_replays_what_it_stored(store: EtcdStore) -> None:
    engine = Engine()

    def sink(facts: list[Fact]) -> None:
        store.append([fact_to_json(f) for f in facts], engine.revision)

    engine.sink = sink
    engine.apply_topology(read_file(EXAMPLES / "datacenter-4-racks.json"))
    for i in range(1, 5):
        engine.add_host(f"h{i}", f"192.168.0.{i}", {"my-location-tag": f"rack-{i}"})
    for i in range(40):
        engine.allocate(f"a{i}", f"h{1 + i % 4}", f"t{i % 3}")
    engine.release("a7")
    snapshot, facts = store.load()
    from romana.ipam import fact_from_json

    replayed = Engine.replay(fact_from_json(f) for _, f in facts)
    assert snapshot is None and replayed.snapshot() == engine.snapshot()


class LosesAnswers(EtcdClient):
    """A real client whose next transaction's answer is lost, after or before it ran."""

    ran: bool | None = None

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]]) -> tuple[bool, int]:
        if self.ran is None:
            return super().txn(compare, success)
        ran, self.ran = self.ran, None
        if ran:
            super().txn(compare, success)
        raise OutcomeUnknown("injected: the answer was lost")


def test_a_write_whose_answer_was_lost_is_checked_not_repeated(etcd: EtcdMember) -> None:
    client = LosesAnswers([etcd.url])
    store = EtcdStore(client, f"/test-{uuid.uuid4().hex}")
    try:
        client.ran = True  # it happened: the store finds its request id and says so
        assert store.append([fact(1)], 0) == 1
        client.ran = False  # it did not: the caller learns the outcome is unknown
        with pytest.raises(OutcomeUnknown):
            store.append([fact(2)], 1)
        assert store.head() == 1  # and a retry at the same revision is safe
        assert store.append([fact(2)], 1) == 2
        assert store.read_since(0) == [(1, fact(1)), (2, fact(2))]
    finally:
        store.close()


def test_calls_fail_over_to_a_live_endpoint(etcd: EtcdMember) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = EtcdClient([dead, etcd.url], deadline=5)
    store = EtcdStore(client, f"/test-{uuid.uuid4().hex}")
    try:
        assert store.append([fact(1)], 0) == 1 and client.failovers >= 1
        assert client.endpoint == etcd.url
    finally:
        store.close()
    nowhere = EtcdClient([dead], deadline=0.5)
    with pytest.raises(StoreError, match="unavailable"):
        nowhere.put(b"/x", b"y")
    nowhere.close()


def test_checkpoint_compacts_etcd_history(
    store: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import romana.store.etcd as module

    monkeypatch.setattr(module, "HISTORY_KEPT", 5)
    for i in range(10):
        store.append([fact(i + 1)], i)
    store.checkpoint()
    old = store.client.revision() - 6
    answer = store.client._http.post(
        store.client.endpoint + "/v3/kv/range",
        json={"key": "AA==", "revision": str(old)},
    )
    assert "compacted" in answer.text  # history before the cut is gone
    assert store.head() == 10  # the data itself is not


def test_store_urls() -> None:
    assert parse_url("etcd://a:2379,b:2379") == ["http://a:2379", "http://b:2379"]
    assert parse_url("etcds://a:2379") == ["https://a:2379"]
    with pytest.raises(ValueError):
        parse_url("sqlite")


def test_romanad_on_etcd_keeps_addresses_across_a_kill(etcd: EtcdMember, tmp_path: Path) -> None:
    port = etcd.client_port
    prefix = f"/romanad-{uuid.uuid4().hex}"
    args = ("--store", f"etcd://127.0.0.1:{port}", "--etcd-prefix", prefix)
    topology = str(EXAMPLES / "datacenter-4-racks.json")
    daemon = Daemon(tmp_path / "data", *args, "--topology", topology).start()
    try:
        with daemon.client() as c:
            c.post(
                "/hosts",
                json={"name": "h1", "ip": "192.168.0.1", "tags": {"my-location-tag": "rack-1"}},
            )
            ips = [
                c.post("/address", json={"name": f"p{i}", "host": "h1"}).json()["ip"]
                for i in range(20)
            ]
            store_id = c.get("/healthz").json()["store_id"]
        daemon.kill()
        daemon.start()
        with daemon.client() as c:
            assert c.get("/healthz").json()["store_id"] == store_id
            assert [c.get(f"/address/p{i}").json()["ip"] for i in range(20)] == ips
            assert c.post("/address", json={"name": "p20", "host": "h1"}).json()["ip"] not in ips
    finally:
        daemon.stop()


def test_watch_head_tells_of_other_writers_appends(store: EtcdStore, etcd: EtcdMember) -> None:
    other = EtcdStore(EtcdClient([etcd.url]), store.prefix.decode())

    async def scenario() -> list[int]:
        seen: list[int] = []

        async def watch() -> None:
            async for head in store.watch_head():
                seen.append(head)
                if head >= 3:
                    return

        watchers = await asyncio.to_thread(etcd_watchers, etcd)
        task = asyncio.create_task(watch())
        await wait_until_async(
            lambda: etcd_watchers(etcd) > watchers, 10, what="the watch to be made"
        )
        for n in range(3):
            await asyncio.to_thread(other.append, [fact(n + 1)], n)
        await asyncio.wait_for(task, 10)
        return seen

    try:
        assert asyncio.run(scenario()) == [1, 2, 3]
    finally:
        other.close()


def test_romanad_tails_a_shared_store_and_not_a_sole_one(store: EtcdStore, tmp_path: Path) -> None:
    """romanad watches the head only of a SharedStore: an etcd store that stopped being one
    would leave replicas deaf to each other's appends; a sole store has nothing to watch."""
    sole = SqliteStore(tmp_path / "data")

    async def scenario() -> None:
        for on, kind, tails in ((store, "etcd", True), (sole, "sqlite", False)):
            service = IpamService(on)
            await service.start()
            try:
                assert ("tail" in service.supervisor.loops) is tails
                assert service.health()[1]["store"]["kind"] == kind
            finally:
                await service.stop()

    assert isinstance(store, SharedStore) and not isinstance(sole, SharedStore)
    asyncio.run(scenario())


def etcd_watchers(member: EtcdMember) -> int:
    """The watchers etcd holds now (its own gauge)."""
    metrics = httpx.get(f"{member.url}/metrics", timeout=5).text
    found = re.search(r"^etcd_debugging_mvcc_watcher_total (\d+)$", metrics, re.M)
    assert found, "etcd reports no watcher gauge"
    return int(found.group(1))


def test_an_etcd_with_auth_is_used_with_its_user_and_refuses_a_wrong_password() -> None:
    with etcd_cluster(1) as (member,):
        admin = ["etcdctl", "--endpoints", member.url]
        env = {**os.environ, "ETCDCTL_API": "3"}
        for command in (["user", "add", "root", "--new-user-password=s3cret"], ["auth", "enable"]):
            subprocess.run([*admin, *command], check=True, capture_output=True, env=env)
        store = EtcdStore(EtcdClient([member.url], auth=("root", "s3cret")), "/auth-test")
        try:
            assert store.append([fact(1), fact(2)], 0) == 2
            assert store.read_since(0) == [(1, fact(1)), (2, fact(2))]
        finally:
            store.close()
        with pytest.raises(StoreError, match="refused the login"):
            EtcdStore(EtcdClient([member.url], auth=("root", "wrong")), "/auth-test")
        with pytest.raises(StoreError):  # no user at all: every call is refused
            EtcdStore(EtcdClient([member.url], deadline=1.0), "/auth-test")
