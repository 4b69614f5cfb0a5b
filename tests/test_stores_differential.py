"""The IPAM's property test through romanad's service on both stores: the same random
operations on SQLite and on a real etcd give the same answers and the same fact log; the
state rebuilt from either store equals the live one; a second replica on the etcd store,
writing half of the operations, ends in the same state."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from romana.api.service import IpamService
from romana.errors import RomanaError
from romana.ipam.replay import rebuild
from romana.store.etcd import EtcdStore
from romana.store.etcd_client import EtcdClient
from romana.store.sqlite import SqliteStore

from .etcd import EtcdMember, etcd_cluster
from .test_ipam_properties import LABELS, OPS, check_invariants, run, topologies

pytestmark = [pytest.mark.daemons, pytest.mark.etcd]


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdMember]:
    with etcd_cluster(1) as members:
        yield members[0]


async def drive(services: list[IpamService], doc: dict[str, Any], ops: list[Any]) -> list[Any]:
    """Each operation through one of ``services`` in turn; the answers, in order."""
    for service in services:
        await service.start()
    answers: list[Any] = []
    for i, op in enumerate(ops):
        service = services[i % len(services)]
        engine = service.engine

        def operation(op: Any = op, engine: Any = engine) -> int:
            before = engine.revision
            run(engine, doc, op)
            return int(engine.revision - before)

        try:
            answers.append(await service.mutate(operation))
        except RomanaError as exc:
            answers.append(type(exc).__name__)
    for service in services:
        async with service.durable_view():
            check_invariants(service.engine)
    return answers


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    doc=topologies(),
    labels=st.lists(LABELS, min_size=6, max_size=6),
    ops=st.lists(OPS, min_size=10, max_size=50),
)
def test_both_stores_agree(
    etcd: EtcdMember, doc: dict[str, Any], labels: list[dict[str, str]], ops: list[Any]
) -> None:
    ops = [("add", i, host_labels) for i, host_labels in enumerate(labels)] + ops
    tmp = Path(tempfile.mkdtemp(prefix="romana-diff-"))
    prefix = f"/diff-{uuid.uuid4().hex[:8]}"
    sqlite = SqliteStore(tmp / "data")
    stores: list[Any] = [sqlite, EtcdStore(EtcdClient([etcd.url]), prefix)]
    replica_store = EtcdStore(EtcdClient([etcd.url]), prefix)
    try:
        on_sqlite = IpamService(sqlite)
        on_sqlite.mutate_before_serving(lambda: on_sqlite.engine.apply_topology(doc))
        on_etcd = IpamService(stores[1])
        on_etcd.mutate_before_serving(lambda: on_etcd.engine.apply_topology(doc))
        replica = IpamService(replica_store)

        async def scenario() -> tuple[list[Any], list[Any]]:
            try:
                return await drive([on_sqlite], doc, ops), await drive([on_etcd, replica], doc, ops)
            finally:
                for service in (on_sqlite, on_etcd, replica):
                    await service.supervisor.stop()

        answers_sqlite, answers_etcd = asyncio.run(scenario())
        assert answers_sqlite == answers_etcd
        live = on_sqlite.engine.snapshot()
        assert on_etcd.engine.snapshot() == live
        assert replica.engine.snapshot() == live
        logs = [store.read_since(0) for store in stores]
        assert logs[0] == logs[1]  # the same facts, numbered alike
        for store in stores:
            assert rebuild(*store.load(), "test").snapshot() == live
    finally:
        for store in (*stores, replica_store):
            store.close()
        shutil.rmtree(tmp, ignore_errors=True)
