"""The test API server speaks the real wire format: shown with the installed kubectl and
with lightkube (the listener's client), and its objects are of real shape (they validate
against the Kubernetes schemas of a current release, offline)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import kubernetes_validate
import pytest
from lightkube import ApiError
from lightkube.resources.core_v1 import Namespace, Node, Pod

from romana.kube.connect import OtherKind, connect, load_config, watch

from .kube import DATA, KubeApiServer, namespace, node, pod, policy
from .wait import wait_until

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KubeApiServer]:
    c = KubeApiServer(tmp_path, bookmark_interval=0.2)
    yield c
    c.close()


def kubectl(cluster: KubeApiServer, *args: str, timeout: float = 30) -> str:
    env = {"KUBECONFIG": str(cluster.kubeconfig), "HOME": str(cluster.tmp), "PATH": "/usr/bin:/bin"}
    cache = str(cluster.tmp / "kubectl-cache")
    done = subprocess.run(
        [str(KUBECTL), "--cache-dir", cache, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("name", ["node", "namespace", "pod", "networkpolicy"])
def test_recorded_objects_validate_against_the_kubernetes_schemas(name: str) -> None:
    document = json.loads((DATA / f"{name}.json").read_text())
    kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


def test_built_objects_validate_too() -> None:
    version = kubernetes_validate.latest_version()
    spec = {"podSelector": {}, "policyTypes": ["Ingress"]}
    for obj in (node("w", "10.0.0.1", "z-1a"), namespace("a"), pod("a", "p", "w", "10.2.0.1"),
                policy("a", "p", spec)):  # fmt: skip
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.kubectl
@needs_kubectl
def test_kubectl_get_lists_pages_and_watches(cluster: KubeApiServer) -> None:
    for i in range(5):
        cluster.create(node(f"worker-{i}", f"192.168.10.{11 + i}", "us-west-1a"))
    cluster.create(namespace("shop"))
    cluster.create(pod("shop", "web", "worker-1", "10.112.0.9", app="web"))
    table = kubectl(cluster, "get", "nodes")
    assert table.split()[:2] == ["NAME", "AGE"] and "worker-4" in table
    names = kubectl(cluster, "get", "nodes", "-o", "name", "--chunk-size=2")
    assert names.split() == [f"node/worker-{i}" for i in range(5)]
    assert cluster.api.requests["get"] >= 3  # three pages of two
    listed = json.loads(kubectl(cluster, "get", "pods", "-A", "-o", "json"))
    assert [p["metadata"]["name"] for p in listed["items"]] == ["web"]
    assert listed["items"][0]["status"]["podIP"] == "10.112.0.9"
    one = json.loads(kubectl(cluster, "get", "pod", "web", "-n", "shop", "-o", "json"))
    assert one["metadata"]["labels"] == {"app": "web"}
    # A watch: the objects, then a change made while kubectl follows the stream.
    env = {"KUBECONFIG": str(cluster.kubeconfig), "HOME": str(cluster.tmp), "PATH": "/usr/bin:/bin"}
    follower = subprocess.Popen(
        [str(KUBECTL), "--cache-dir", str(cluster.tmp / "kc"), "get", "nodes", "--watch",
         "-o", "json", "--output-watch-events"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert follower.stdout is not None and follower.stderr is not None
    lines: list[str] = []

    def read(stream: IO[str]) -> None:
        for line in stream:  # as kubectl writes them
            lines.append(line)

    reader = threading.Thread(target=read, args=(follower.stdout,), daemon=True)
    reader.start()
    try:
        wait_until(lambda: cluster.control("stats")["watchers"] >= 1, 20, what="kubectl's watch")
        cluster.delete("nodes", "worker-0")
        wait_until(
            lambda: ("DELETED", "worker-0") in watch_events("".join(lines)),
            20,
            what="the DELETED event in kubectl's output",
        )
    finally:
        follower.terminate()
        follower.wait(10)
        reader.join(10)
    events = watch_events("".join(lines))
    assert ("DELETED", "worker-0") in events, (events, follower.stderr.read())
    assert events.count(("ADDED", "worker-0")) == 1


def watch_events(text: str) -> list[tuple[str, str]]:
    """(type, name) of each whole event in kubectl's ``--output-watch-events`` JSON so far."""
    decoder, events, text = json.JSONDecoder(), [], text.strip()
    while text:
        try:
            event, end = decoder.raw_decode(text)
        except json.JSONDecodeError:  # the next event is still being written
            break
        events.append((event["type"], event["object"]["metadata"]["name"]))
        text = text[end:].strip()
    return events


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_lightkube_lists_in_pages_at_one_version(cluster: KubeApiServer) -> None:
    for i in range(7):
        cluster.create(node(f"worker-{i}", f"192.168.10.{11 + i}"))

    async def listing() -> tuple[list[str], str]:
        client = connect(load_config(cluster.kubeconfig))
        try:
            pages = client.list(Node, chunk_size=3)
            names = [n.metadata.name async for n in pages]
            return names, pages.resourceVersion
        finally:
            await client.close()

    names, version = run(listing())
    assert names == [f"worker-{i}" for i in range(7)]
    assert version == str(cluster.api.revision)


def test_lightkube_watch_gets_events_bookmarks_and_410(cluster: KubeApiServer) -> None:
    cluster.create(namespace("shop"))
    first = cluster.create(pod("shop", "web", "worker-1"))

    async def follow() -> list[tuple[str, str]]:
        client = connect(load_config(cluster.kubeconfig))
        seen: list[tuple[str, str]] = []
        try:
            stream = watch(client, Pod, "*", first["metadata"]["resourceVersion"])
            async for event, obj in stream:
                seen.append((event, obj.metadata.resourceVersion))
                if event == "BOOKMARK" and len(seen) == 1:
                    await asyncio.to_thread(
                        cluster.patch, "pods", "web", {"metadata": {"labels": {"a": "b"}}}, "shop"
                    )
                if event == "MODIFIED":
                    break
            # History compacted past a version: the stream says 410 Gone, the client raises.
            await asyncio.to_thread(cluster.control, "compact")
            await asyncio.to_thread(cluster.create, pod("shop", "db", "worker-1"))
            with pytest.raises(ApiError) as gone:
                async for _ in watch(client, Pod, "*", first["metadata"]["resourceVersion"]):
                    pass
            assert gone.value.status.code == 410
            return seen
        finally:
            await client.close()

    seen = run(follow())
    assert seen[0][0] == "BOOKMARK" and seen[-1][0] == "MODIFIED"
    assert int(seen[-1][1]) > int(first["metadata"]["resourceVersion"])


def test_lightkube_sees_a_cut_stream_as_an_error(cluster: KubeApiServer) -> None:
    cluster.create(node("worker-1", "192.168.10.11"))

    async def follow() -> str:
        client = connect(load_config(cluster.kubeconfig))
        try:
            with pytest.raises(Exception) as cut:
                async for event, _ in watch(client, Node, None, "1"):
                    if event == "ADDED":
                        await asyncio.to_thread(cluster.control, "cut")
            return type(cut.value).__name__
        finally:
            await client.close()

    assert run(follow()) == "RemoteProtocolError"


def test_the_watch_tells_unknown_event_types_and_other_kinds_apart(cluster: KubeApiServer) -> None:
    """What only a broken or hostile server sends, written into the stream as it is."""
    cluster.create(namespace("shop"))
    stray = node("node-x", "192.168.10.70")
    stray["metadata"]["resourceVersion"] = str(cluster.api.revision)
    lines = [
        {"type": "FROB", "object": namespace("frob")},
        {"type": "ADDED", "object": stray},
        {"type": "MODIFIED", "object": {**namespace("shop"), "metadata": stray["metadata"]}},
    ]

    async def follow() -> list[tuple[str, Any]]:
        client = connect(load_config(cluster.kubeconfig))
        seen: list[tuple[str, Any]] = []
        try:
            async for event, obj in watch(client, Namespace, None, str(cluster.api.revision)):
                if event == "BOOKMARK" and not seen:
                    blank = "/_test/raw?plural=namespaces"  # an empty line: skipped
                    await asyncio.to_thread(cluster.http.post, blank)
                    for line in lines:
                        await asyncio.to_thread(cluster.raw, "namespaces", line)
                if event != "BOOKMARK":
                    seen.append((event, obj))
                if len(seen) == len(lines):
                    return seen
            return seen
        finally:
            await client.close()

    (frob, frob_obj), (added, other), (modified, shop) = run(follow())
    assert (frob, frob_obj) == ("FROB", None)  # not even decoded
    assert added == "ADDED" and isinstance(other, OtherKind) and other.kind == "Node"
    assert modified == "MODIFIED" and shop.metadata.name == "node-x"  # of the watched kind


def test_a_wrong_token_is_refused(cluster: KubeApiServer) -> None:
    answer = cluster.http.get("/api/v1/nodes", headers={"authorization": "Bearer nope"})
    assert answer.status_code == 401 and answer.json()["reason"] == "Unauthorized"
