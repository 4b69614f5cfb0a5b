"""An address tied to its pod (namespace, name, uid), through a real romanad: shown by every
address view, kept by a label update and an identical retry, durable across a kill -9 and
a snapshot, gone with the release, and checked by the name rules (422 naming the field).
The listener matches pods to addresses by it, never by IP (an IP is reused at once)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from romana.api.client import AsyncRomanaClient, RomanaClient
from romana.cli.addresses import app as ip_app
from romana.cni.allocator import Allocator
from romana.cni.lean_client import LeanRomanadClient

from .conftest import EXAMPLES
from .daemon import Daemon, running
from .wait import wait_until

pytestmark = pytest.mark.daemons

TOPOLOGY = str(EXAMPLES / "datacenter-4-racks.json")
WEB = {
    "namespace": "shop",
    "name": "web-7d4b9-x2x4k",
    "uid": "4c9f0f8e-6f4b-4d35-9a43-1d2b0e1c9a77",
}


def host_body(i: int) -> dict[str, Any]:
    rack = f"rack-{(i - 1) // 2 + 1}"
    return {"name": f"h{i}", "ip": f"192.168.0.{i}", "tags": {"my-location-tag": rack}}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    # Snapshots every 10 facts: a restart below starts from one that holds pods.
    args = ("--topology", TOPOLOGY, "--snapshot-every", "10", "--keep-history", "2")
    with running(tmp_path / "data", *args) as d:
        with d.client() as c:
            for i in (1, 2):
                assert c.post("/hosts", json=host_body(i)).status_code == 200
        yield d


def views(c: httpx.Client, name: str) -> list[dict[str, Any]]:
    """The address as GET /address/NAME, GET /addresses and GET /addresses?host= show it."""
    one = c.get(f"/address/{name}").json()
    listed = [a for a in c.get("/addresses").json()["addresses"] if a["name"] == name]
    by_host = [
        a
        for a in c.get("/addresses", params={"host": one["host"]}).json()["addresses"]
        if a["name"] == name
    ]
    return [one, *listed, *by_host]


def test_every_view_shows_the_pod_and_a_restart_keeps_it(daemon: Daemon) -> None:
    body = {"name": "shop:web:eth0", "host": "h1", "tenant": "shop", "pod": WEB}
    with daemon.client() as c:
        answer = c.post("/address", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["pod"] == WEB
        assert "labels" not in answer.json()  # a pod without labels has none to show
        plain = c.post("/address", json={"name": "plain", "host": "h1", "tenant": "shop"})
        assert "pod" not in plain.json()
        assert [v["pod"] for v in views(c, "shop:web:eth0")] == [WEB, WEB, WEB]
        assert all("pod" not in v for v in views(c, "plain"))
        # The uid may be unknown (a runtime that does not pass it): empty, or left out.
        no_uid = {"namespace": "shop", "name": "db-0"}
        r = c.post("/address", json={"name": "shop:db-0", "host": "h2", "pod": no_uid})
        assert r.json()["pod"] == {**no_uid, "uid": ""}
        since = c.get("/healthz").json()["revision"] - 10
        feed = c.get("/watch", params={"since": since, "timeout": 0}).json()["changes"]
        assert {"kind": "endpoint_labeled", "name": "shop:web:eth0", "pod": WEB}.items() <= {
            **next(f for f in feed if f.get("name") == "shop:web:eth0" and "pod" in f)
        }.items()
        for i in range(12):  # enough facts for a snapshot
            c.post("/address", json={"name": f"filler-{i}", "host": "h2"})
        wait_until(
            lambda: '"snapshot written"' in daemon.log.read_text(),
            10,
            what="a snapshot",
            interval=0.05,
        )
        before = c.get("/addresses").json()
    daemon.kill()  # kill -9: what was acknowledged comes back, from the snapshot and log
    daemon.start()
    assert '"from_snapshot": true' in daemon.log.read_text().rsplit("state loaded", 1)[1]
    with daemon.client() as c:
        assert c.get("/addresses").json() == before
        assert [v["pod"] for v in views(c, "shop:web:eth0")] == [WEB, WEB, WEB]


def test_a_label_update_and_a_retry_keep_the_pod_and_a_release_drops_it(
    daemon: Daemon,
) -> None:
    body = {"name": "shop:web:eth0", "host": "h1", "tenant": "shop", "pod": WEB}
    with daemon.client() as c:
        first = c.post("/address", json={**body, "labels": {"app": "web"}}).json()
        head = c.get("/healthz").json()["revision"]
        again = c.post("/address", json={**body, "labels": {"app": "web"}})
        assert again.status_code == 200 and again.json() == first  # idempotent
        assert c.get("/healthz").json()["revision"] == head  # nothing written
        r = c.put("/address/shop:web:eth0/labels", json={"labels": {"app": "web", "v": "2"}})
        assert r.status_code == 200 and r.json()["pod"] == WEB
        r = c.put("/address/shop:web:eth0/labels", json={"labels": {}, "ports": []})
        assert r.json()["pod"] == WEB  # no labels left, the pod stays
        # A retry without the pod keeps it (as without labels); the same name for another
        # pod (a StatefulSet's pod made again: same name, new uid) takes the address over.
        assert c.post("/address", json={**body, "pod": None}).json()["pod"] == WEB
        newer = {**WEB, "uid": "0b7e8c1a-2d3f-4e5a-8b9c-0d1e2f3a4b5c"}
        taken = c.post("/address", json={**body, "pod": newer}).json()
        assert taken["pod"] == newer and taken["ip"] == first["ip"]
        assert c.delete("/address", params={"name": "shop:web:eth0"}).status_code == 200
        assert c.get("/address/shop:web:eth0").status_code == 404
        fresh = c.post("/address", json={"name": "shop:web:eth0", "host": "h1", "tenant": "shop"})
        assert "pod" not in fresh.json()  # nothing of the old pod came back


@pytest.mark.parametrize(
    ("pod", "path", "words"),
    [
        ({**WEB, "namespace": "Shop"}, "body.pod.namespace", "namespace"),
        ({**WEB, "namespace": ""}, "body.pod.namespace", "namespace"),
        ({**WEB, "name": "web/1"}, "body.pod.name", "object name"),
        ({**WEB, "name": "w" * 254}, "body.pod.name", "at most 253"),
        ({**WEB, "uid": "u" * 129}, "body.pod.uid", "at most 128"),
        ({**WEB, "uid": "4c9f 0f8e"}, "body.pod.uid", "pod uid"),
        ({"namespace": "shop", "uid": "1"}, "body.pod.name", "Field required"),
        ({**WEB, "node": "h1"}, "body.pod.node", "Extra inputs"),
        ("shop/web", "body.pod", "valid dictionary"),
    ],
)
def test_an_invalid_pod_is_a_422_naming_the_field(
    daemon: Daemon, pod: object, path: str, words: str
) -> None:
    with daemon.client() as c:
        r = c.post("/address", json={"name": "bad", "host": "h1", "tenant": "shop", "pod": pod})
        assert r.status_code == 422, r.text
        (detail,) = r.json()["error"]["details"]
        assert detail["path"] == path and words in detail["message"], detail
        assert c.get("/address/bad").status_code == 404


def test_every_python_client_passes_the_pod(daemon: Daemon) -> None:
    with RomanaClient(daemon.url) as client:
        assert client.allocate("a", "h1", "shop", pod=WEB)["pod"] == WEB
        assert client.address("a")["pod"] == WEB
        assert client.addresses(host="h1")["addresses"][0]["pod"] == WEB

    async def lean_and_async() -> None:
        pod = {**WEB, "name": "web-2"}
        asynchronous = AsyncRomanaClient(daemon.url)
        try:
            assert (await asynchronous.allocate("b", "h1", "shop", pod=pod))["pod"] == pod
        finally:
            await asynchronous.close()
        lean = LeanRomanadClient(daemon.url)
        try:
            pod = {**WEB, "name": "web-3"}
            assert (await lean.allocate("c", "h1", "shop", pod=pod))["pod"] == pod
        finally:
            await lean.close()
        allocator = Allocator(daemon.url, None)
        try:
            pod = {**WEB, "name": "web-4"}
            answer = await allocator.allocate("d", "h2", "shop", "", pod=pod)
            assert answer["pod"] == pod
        finally:
            await allocator.close()

    asyncio.run(lean_and_async())


def test_the_cli_shows_the_pod(daemon: Daemon) -> None:
    with RomanaClient(daemon.url) as client:
        client.allocate("shop:web:eth0", "h1", "shop", pod=WEB)
        client.allocate("plain", "h1", "shop")
    runner = CliRunner(env={"COLUMNS": "200"})  # a wide terminal: no cell cut short
    listed = runner.invoke(ip_app, ["list", "--url", daemon.url])
    assert listed.exit_code == 0, listed.output
    assert "POD" in listed.output and "shop/web-7d4b9-x2x4k" in listed.output
    shown = runner.invoke(ip_app, ["show", "plain", "--url", daemon.url])
    assert "POD" not in shown.output  # no column for what romanad does not know
    as_json = runner.invoke(ip_app, ["show", "shop:web:eth0", "--json", "--url", daemon.url])
    assert '"uid": "4c9f0f8e-6f4b-4d35-9a43-1d2b0e1c9a77"' in as_json.output
