"""A store that was damaged, emptied or replaced is never taken for a new one, and what
romanad answers is durable: real romanad processes on real data directories."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from romana.api.client import RomanaClient

from .conftest import racks_topology
from .daemon import ROMANAD, Daemon, free_port, running
from .wait import wait_until

pytestmark = pytest.mark.daemons

ROMANA = str(Path(sys.executable).parent / "romana")


def populate(data: Path, count: int = 20, *extra: str, snapshot: bool = False) -> int:
    """A store with hosts and ``count`` addresses; returns its revision."""
    with running(data, *extra) as daemon, RomanaClient(daemon.url) as client:
        client.apply_topology(racks_topology(2))
        client.add_host("h1", "192.168.0.1", {"rack": "rack-1"})
        for i in range(count):
            client.allocate(f"a{i}", "h1", f"t{i % 3}")
        if snapshot:  # the maintenance loop writes it within a second or so
            wait_until(lambda: snapshots(data) > 0, 10, what="a snapshot", interval=0.05)
        return int(client.health()["revision"])


def snapshots(data: Path) -> int:
    with sqlite3.connect(f"file:{data / 'romana.db'}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM snapshots").fetchone()[0])


def start(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """romanad on ``data``, expected to refuse to start: its exit and one-line message."""
    return subprocess.run(
        [str(ROMANAD), "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data), *extra],
        capture_output=True,
        text=True,
        timeout=30,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode not in (0, None), result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("romanad: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def facts_db(data: Path) -> sqlite3.Connection:
    return sqlite3.connect(data / "romana.db")


DAMAGES = {
    "not JSON": 'UPDATE facts SET fact = \'{"kind": "block_ass\' WHERE revision = {r}',
    "unknown kind": "UPDATE facts SET fact = json_set(fact, '$.kind', 'nope') WHERE revision = {r}",
    "missing field": "UPDATE facts SET fact = json_remove(fact, '$.cidr') WHERE revision = {r}",
    "impossible state": "UPDATE facts SET fact = json_set(fact, '$.host', 'ghost') "
    "WHERE revision = {r}",
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_fact_stops_start_up_with_one_clear_line(tmp_path: Path, damage: str) -> None:
    data = tmp_path / "data"
    populate(data)
    with facts_db(data) as conn:
        revision = conn.execute(
            "SELECT min(revision) FROM facts WHERE json_extract(fact, '$.kind') = 'block_assigned'"
        ).fetchone()[0]
        conn.execute(DAMAGES[damage].replace("{r}", str(revision)))
    line = one_line(start(data))
    assert f"fact {revision}" in line and "romana store check" in line
    # The offline check names the same damage and exits 1.
    check = subprocess.run([ROMANA, "store", "check", str(data)], capture_output=True, text=True)
    assert check.returncode == 1 and f"fact {revision}" in check.stdout
    assert "Traceback" not in check.stderr


def test_a_snapshot_of_an_unknown_version_is_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    populate(data, 10, "--snapshot-every", "5", snapshot=True)
    with facts_db(data) as conn:
        (revision,) = conn.execute("SELECT max(revision) FROM snapshots").fetchone()
        conn.execute("UPDATE snapshots SET data = json_set(data, '$.version', 99)")
    line = one_line(start(data))
    assert f"snapshot at revision {revision} is damaged" in line and "version 99" in line


def test_check_passes_on_a_healthy_store_even_while_romanad_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    revision = populate(data)
    with running(data):
        out = subprocess.run(
            [ROMANA, "store", "check", str(data), "--json"], capture_output=True, text=True
        )
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["ok"], out
    assert (report["head"], report["hosts"], report["addresses"]) == (revision, 1, 20)


def emptied(data: Path) -> None:
    (data / "romana.db").write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        (data / f"romana.db{suffix}").unlink(missing_ok=True)


def dropped(data: Path) -> None:
    with facts_db(data) as conn:
        conn.execute("DROP TABLE facts")


def replaced(data: Path) -> None:
    other = data.parent / "other"
    populate(other, 3)
    for name in ("romana.db", "romana.db-wal", "romana.db-shm"):
        (data / name).unlink(missing_ok=True)
        if (other / name).exists():
            (data / name).write_bytes((other / name).read_bytes())


@pytest.mark.parametrize(
    ("loss", "says"),
    [
        (emptied, "holds nothing"),
        (dropped, "fact(s) were lost"),
        (replaced, "another database was put in place"),
    ],
)
def test_a_store_that_lost_its_data_is_refused_not_restarted_empty(
    tmp_path: Path, loss, says: str
) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    populate(data)
    loss(data)
    line = one_line(start(data))
    assert says in line and "--accept-data-loss" in line
    # Told explicitly, romanad takes the database as it is (and says so).
    with running(data, "--accept-data-loss") as daemon:
        assert "--accept-data-loss" in daemon.log.read_text()


def test_a_write_ahead_log_lost_after_kill_9_is_detected(tmp_path: Path) -> None:
    """The store marker is rewritten every second, the log checkpointed rarely (here:
    never): losing the log after a crash leaves the database behind the marker."""
    data = tmp_path / "data"
    daemon = Daemon(data, "--checkpoint-every", "3600").start()
    try:
        with RomanaClient(daemon.url) as client:
            client.apply_topology(racks_topology(2))
            client.add_host("h1", "192.168.0.1", {"rack": "rack-1"})
            for i in range(30):
                client.allocate(f"a{i}", "h1")
            head = client.health()["revision"]
        wait_until(
            lambda: json.loads((data / "store.json").read_text())["head"] == head,
            10,
            what="the marker to record the head",
            interval=0.05,
        )
    finally:
        daemon.stop(signal.SIGKILL)
    (data / "romana.db-wal").unlink()
    line = one_line(start(data))
    assert f"recorded revision {head} as durable" in line


def test_backup_while_serving_and_restore(tmp_path: Path) -> None:
    data, copy = tmp_path / "data", tmp_path / "backup"
    with running(data) as daemon, RomanaClient(daemon.url) as client:
        client.apply_topology(racks_topology(2))
        client.add_host("h1", "192.168.0.1", {"rack": "rack-1"})
        for i in range(10):
            client.allocate(f"a{i}", "h1")
        backup = subprocess.run(
            [ROMANA, "store", "backup", str(data), str(copy)], capture_output=True, text=True
        )
        assert backup.returncode == 0, backup.stderr
        saved = {a["name"]: a["ip"] for a in client.addresses()["addresses"]}
        client.allocate("after-backup", "h1")
        refused = subprocess.run(
            [ROMANA, "store", "restore", str(copy), str(data)], capture_output=True, text=True
        )
        assert refused.returncode == 1 and "stop romanad" in refused.stderr
    restore = subprocess.run(
        [ROMANA, "store", "restore", str(copy), str(data)], capture_output=True, text=True
    )
    assert restore.returncode == 0, restore.stderr
    assert list(tmp_path.glob("data.replaced-*"))  # the newer store is kept aside
    with running(data) as daemon, RomanaClient(daemon.url) as client:
        assert {a["name"]: a["ip"] for a in client.addresses()["addresses"]} == saved


SHOWN_BEFORE_KILL = 50


def test_nothing_a_read_showed_is_lost_by_a_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "data"
    daemon = Daemon(data).start()
    seen: set[str] = set()
    stop = threading.Event()
    try:
        with RomanaClient(daemon.url) as client:
            client.apply_topology(racks_topology(2))
            client.add_host("h1", "192.168.0.1", {"rack": "rack-1"})

        def writer(n: int) -> None:
            with httpx.Client(base_url=daemon.url, timeout=5) as http:
                i = 0
                while not stop.is_set():
                    try:
                        http.post("/address", json={"name": f"w{n}-{i}", "host": "h1"})
                    except httpx.TransportError:
                        return
                    i += 1

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        with httpx.Client(base_url=daemon.url, timeout=5) as http:

            def a_read_shows_enough() -> bool:
                nonlocal seen
                seen = {a["name"] for a in http.get("/addresses").json()["addresses"]}
                return len(seen) >= SHOWN_BEFORE_KILL

            # Killed right after a read, while the writers go on; by count, not by time.
            wait_until(a_read_shows_enough, 60, what=f"a read showing {SHOWN_BEFORE_KILL}")
            os.kill(daemon.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        daemon.stop(signal.SIGKILL)
    with running(data) as again, RomanaClient(again.url) as client:
        after = {a["name"] for a in client.addresses()["addresses"]}
    assert seen <= after, f"{len(seen - after)} addresses a read showed were lost"


def test_a_clean_stop_answers_watchers_and_logs_no_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    daemon = Daemon(data).start()
    answers: list[httpx.Response] = []
    with httpx.Client(base_url=daemon.url, timeout=30) as http:
        head = http.get("/healthz").json()["revision"]
        watcher = threading.Thread(
            target=lambda: answers.append(http.get("/watch", params={"since": head, "timeout": 25}))
        )
        watcher.start()
        wait_until(
            lambda: "\nromana_watches_open 1.0\n" in httpx.get(f"{daemon.url}/metrics").text,
            what="the long poll to be waiting",
        )
        assert daemon.stop() == 0
        watcher.join()
    # 503, not the empty 200 its timeout would have given: the stop answered it.
    assert answers[0].status_code == 503
    assert answers[0].json()["error"]["code"] == "unavailable"
    levels = {
        json.loads(line).get("level")
        for line in daemon.log.read_text().splitlines()
        if line.startswith("{")
    }
    assert not levels & {"error", "critical"}, daemon.log.read_text()


def test_a_bad_listen_address_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(ROMANAD), "--listen", "127.0.0.1:99999", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    line = one_line(result)
    assert "127.0.0.1:99999" in line and "port 0-65535" in line
