"""A test cluster: the project's Kubernetes API server (``tests/fakes/kube.py``),
objects built from the real-shaped ones in ``tests/data/kube/``, romana-listener
processes stopped by PID, and the check that romanad holds what the API server holds."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import ValidationError

from romana.api.client import RomanaClient
from romana.policy.k8s import NOT_ENFORCED, NetworkPolicy

from .daemon import Daemon, free_port
from .fakes.kube import FakeKubeApi, KubeApiThread
from .wait import wait_until

DATA = Path(__file__).parent / "data" / "kube"
LISTENER = Path(sys.executable).parent / "romana-listener"
PLURALS = {
    "Node": "nodes",
    "Namespace": "namespaces",
    "Pod": "pods",
    "NetworkPolicy": "networkpolicies",
}
MANAGED = {"romana.io/managed-by": "romana-listener"}
PATHS = {
    "nodes": "/api/v1/nodes",
    "namespaces": "/api/v1/namespaces",
    "pods": "/api/v1/namespaces/{ns}/pods",
    "networkpolicies": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
}


def template(name: str) -> dict[str, Any]:
    return json.loads((DATA / f"{name}.json").read_text())  # type: ignore[no-any-return]


def node(name: str, ip: str, zone: str | None = None, **labels: str) -> dict[str, Any]:
    obj = template("node")
    meta = obj["metadata"]
    meta["name"] = name
    meta["labels"]["kubernetes.io/hostname"] = name
    for key in list(meta["labels"]):
        if key.endswith(("/zone", "/region")):
            del meta["labels"][key]
    if zone is not None:
        region = zone[:-1]
        meta["labels"].update(
            {
                "topology.kubernetes.io/zone": zone,
                "topology.kubernetes.io/region": region,
                "failure-domain.beta.kubernetes.io/zone": zone,
                "failure-domain.beta.kubernetes.io/region": region,
            }
        )
    meta["labels"].update(labels)
    obj["status"]["addresses"] = [
        {"address": ip, "type": "InternalIP"},
        {"address": name, "type": "Hostname"},
    ]
    return obj


def namespace(name: str, **labels: str) -> dict[str, Any]:
    obj = template("namespace")
    obj["metadata"] = {"name": name, "labels": {"kubernetes.io/metadata.name": name, **labels}}
    return obj


def pod(ns: str, name: str, node_name: str, ip: str | None = None, **labels: str) -> dict[str, Any]:
    obj = template("pod")
    meta = obj["metadata"]
    meta.update({"name": name, "namespace": ns, "labels": dict(labels)})
    meta.pop("generateName", None)
    meta.pop("ownerReferences", None)
    obj["spec"]["nodeName"] = node_name
    if ip is not None:
        obj["status"].update({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]})
    return obj


def policy(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    obj = template("networkpolicy")
    obj["metadata"] = {"name": name, "namespace": ns}
    obj["spec"] = spec
    return obj


class KubeApiServer:
    """The fake API server (``FakeKubeApi``) on a loopback port (TLS, a bearer token) and a
    client for it: the cluster as the listener and kubectl see it."""

    TOKEN = "test-token-for-the-listener"

    def __init__(
        self, tmp: Path, bookmark_interval: float = 0.5, also: tuple[str, str] | None = None
    ) -> None:
        self.tmp = tmp
        self.api = FakeKubeApi(token=self.TOKEN, bookmark_interval=bookmark_interval)
        self.server = KubeApiThread(self.api, free_port(), str(tmp), also).start()
        self.kubeconfig = tmp / "kubeconfig.yaml"
        self.kubeconfig.write_text(yaml.safe_dump(self.server.kubeconfig(self.TOKEN)))
        self.http = httpx.Client(
            base_url=self.server.url,
            verify=ssl.create_default_context(cafile=self.server.ca),
            headers={"authorization": f"Bearer {self.TOKEN}"},
            timeout=10,
        )

    def close(self) -> None:
        self.http.close()
        self.server.stop()

    def _path(self, plural: str, ns: str = "") -> str:
        return PATHS[plural].format(ns=ns)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        plural = PLURALS[obj["kind"]]
        ns = obj["metadata"].get("namespace", "")
        answer = self.http.post(self._path(plural, ns), json=obj)
        assert answer.status_code == 201, answer.text
        return answer.json()  # type: ignore[no-any-return]

    def patch(self, plural: str, name: str, change: dict[str, Any], ns: str = "") -> None:
        path = f"{self._path(plural, ns)}/{name}"
        headers = {"content-type": "application/merge-patch+json"}
        answer = self.http.patch(path, content=json.dumps(change), headers=headers)
        assert answer.status_code == 200, answer.text

    def delete(self, plural: str, name: str, ns: str = "") -> None:
        answer = self.http.delete(f"{self._path(plural, ns)}/{name}")
        assert answer.status_code == 200, answer.text

    def control(self, what: str, **params: Any) -> dict[str, Any]:
        return self.http.post(f"/_test/{what}", params=params).json()  # type: ignore[no-any-return]

    def raw(self, plural: str, event: dict[str, Any]) -> int:
        """Write ``event`` as it is into every open watch of ``plural``; how many."""
        answer = self.http.post("/_test/raw", params={"plural": plural}, content=json.dumps(event))
        return int(answer.json()["raw"])

    def items(self, plural: str) -> list[dict[str, Any]]:
        return [o for (p, _, _), o in sorted(self.api.objects.items()) if p == plural]

    def events(self) -> list[dict[str, Any]]:
        return self.items("events")


class Listener:
    """A romana-listener process; ``stop()`` by PID (SIGKILL after 10 s)."""

    def __init__(
        self, cluster: KubeApiServer, romanad_url: str, *extra: str, name: str = "listener"
    ):
        self.health = cluster.tmp / f"{name}.sock"
        self.log = cluster.tmp / f"{name}.log"
        self.args = [
            str(LISTENER),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--romanad",
            romanad_url,
            "--health-listen",
            f"unix:{self.health}",
            "--resync",
            "2",
            "--node-grace",
            "1",
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Listener:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(self.args, stdout=out, stderr=out)
        return self

    def state(self) -> dict[str, Any]:
        transport = httpx.HTTPTransport(uds=str(self.health))
        with httpx.Client(transport=transport, base_url="http://listener", timeout=5) as c:
            return c.get("/healthz").json()  # type: ignore[no-any-return]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code, self.proc = self.proc.returncode, None
        return code


def listener_fixtures(
    topology: str = "kops-aws-us-west-1",
    *extra: str,
    then: Callable[[KubeApiServer, RomanaClient], object] | None = None,
) -> tuple[Any, Any, Any]:
    """The pytest fixtures ``cluster``, ``romanad`` (a real one, on the ``topology`` preset)
    and ``listener`` (romana-listener with ``extra`` arguments; ``then(cluster, romanad)``
    runs once it has started), each stopped by PID. Bind them at module level in a test
    module: ``cluster, romanad, listener = listener_fixtures()``."""

    @pytest.fixture
    def cluster(tmp_path: Path) -> Iterator[KubeApiServer]:
        c = KubeApiServer(tmp_path)
        yield c
        c.close()

    @pytest.fixture
    def romanad(tmp_path: Path) -> Iterator[RomanaClient]:
        daemon = Daemon(tmp_path / "romanad", "--topology", topology).start()
        client = RomanaClient(daemon.url)
        yield client
        client.close()
        daemon.stop()

    @pytest.fixture
    def listener(cluster: KubeApiServer, romanad: RomanaClient) -> Iterator[Listener]:
        running = Listener(cluster, romanad.url, *extra).start()
        if then is not None:
            then(cluster, romanad)
        yield running
        assert running.stop() == 0, running.log.read_text()[-3000:]

    return cluster, romanad, listener


def mismatches(romanad: RomanaClient, cluster: KubeApiServer) -> list[str]:
    """What romanad holds that the API server does not say (empty: in step)."""
    out: list[str] = []
    nodes = {n["metadata"]["name"]: n for n in cluster.items("nodes")}
    hosts = {h["name"]: h for h in romanad.hosts()["hosts"]}
    for name, obj in nodes.items():
        ip = next(a["address"] for a in obj["status"]["addresses"] if a["type"] == "InternalIP")
        want = {**obj["metadata"]["labels"], **MANAGED}
        got = hosts.get(name)
        if got is None or got["ip"] != ip or got["labels"] != want:
            out.append(f"host {name}: {got and (got['ip'], got['labels'])} != {(ip, want)}")
    out += [f"host {n} has no node" for n in hosts.keys() - nodes.keys()]
    spaces = {
        n["metadata"]["name"]: n["metadata"].get("labels", {}) for n in cluster.items("namespaces")
    }
    tenants = {t["name"]: t["labels"] for t in romanad.tenants()}
    for name in spaces.keys() | tenants.keys():
        if spaces.get(name, {}) != tenants.get(name, {}):
            out.append(f"tenant {name}: {tenants.get(name)} != {spaces.get(name)}")
    addresses = {a["ip"]: a for a in romanad.addresses()["addresses"]}
    for obj in cluster.items("pods"):
        meta = obj["metadata"]
        ip = obj["status"].get("podIP")
        if ip is None or ip not in addresses or meta.get("deletionTimestamp"):
            continue  # a terminating pod's IP may be a new pod's already
        address: dict[str, Any] = dict(addresses[ip])
        named = address.get("pod")
        if named and (named["namespace"], named["name"]) != (meta["namespace"], meta["name"]):
            continue
        if address.get("labels") != meta.get("labels", {}):
            out.append(f"pod {meta['name']}: labels {address.get('labels')}")
    held = {policy_name(p): p for p in romanad.network_policies()}
    objects = {policy_name(p): p for p in cluster.items("networkpolicies")}
    if held.keys() != objects.keys():
        out.append(f"policies {sorted(held)} != {sorted(objects)}")
    for name, obj in objects.items():
        stored = held.get(name)
        try:
            wanted = NetworkPolicy.model_validate(obj).source()
        except ValidationError:  # romanad holds its fail-closed stand-in instead
            if stored is not None and NOT_ENFORCED not in stored["metadata"].get("annotations", {}):
                out.append(f"policy {name}: {stored} is not a fail-closed stand-in")
            continue
        if stored is not None and stored != wanted:
            out.append(f"policy {name}: {stored} != {wanted}")
    return out


def policy_name(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]


def in_step(romanad: RomanaClient, cluster: KubeApiServer, timeout: float = 20.0) -> None:
    """Returns once romanad holds what the API server holds; fails saying what differs."""
    problems: list[str] = []

    def agree() -> bool:
        problems[:] = mismatches(romanad, cluster)
        return not problems

    try:
        wait_until(agree, timeout, what="romanad in step with the API server", interval=0.1)
    except AssertionError:
        raise AssertionError(
            "romanad is not in step with the API server: " + "; ".join(problems)
        ) from None
