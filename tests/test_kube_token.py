"""`romana-token` (romana.kube.token) against the project's test API server: it creates
romanad's token Secret once, leaves any existing one alone, never prints the token, and
asks the API server for nothing the Job's Role in deploy/ does not allow."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from romana.kube.token import DEFAULT_NAME, DEFAULT_NAMESPACE, ensure

from .kube import KubeApiServer

ROOT = Path(__file__).resolve().parent.parent
SECRETS = f"/api/v1/namespaces/{DEFAULT_NAMESPACE}/secrets"
KUBECTL = shutil.which("kubectl")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KubeApiServer]:
    made = KubeApiServer(tmp_path)
    try:
        yield made
    finally:
        made.close()


def run_token(cluster: KubeApiServer, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "romana.kube.token", "--kubeconfig", str(cluster.kubeconfig),
         *extra],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def stored_token(cluster: KubeApiServer, name: str = DEFAULT_NAME) -> str:
    secret = cluster.api.objects[("secrets", DEFAULT_NAMESPACE, name)]
    return base64.b64decode(secret["data"]["token"]).decode()


def test_creates_the_secret_with_32_random_bytes_and_never_prints_them(
    cluster: KubeApiServer,
) -> None:
    done = run_token(cluster)
    assert done.returncode == 0, done.stderr
    token = stored_token(cluster)
    assert len(token) == 64 and bytes.fromhex(token), "32 random bytes, hex-encoded"
    assert token not in done.stdout + done.stderr
    assert "created Secret romana-system/romana-api-token" in done.stdout
    secret = cluster.api.objects[("secrets", DEFAULT_NAMESPACE, DEFAULT_NAME)]
    assert secret["type"] == "Opaque"
    assert cluster.api.calls == [
        ("get", "secrets", DEFAULT_NAMESPACE, DEFAULT_NAME),
        ("create", "secrets", DEFAULT_NAMESPACE, None),
    ]
    (cluster.tmp / "other").mkdir()
    other = KubeApiServer(cluster.tmp / "other")
    try:
        assert run_token(other).returncode == 0
        assert stored_token(other) != token, "a new token per cluster, not a constant"
    finally:
        other.close()


def test_a_second_run_leaves_the_first_token_alone(cluster: KubeApiServer) -> None:
    assert run_token(cluster).returncode == 0
    first = stored_token(cluster)
    version = cluster.api.revision
    done = run_token(cluster)
    assert done.returncode == 0, done.stderr
    assert "exists; left as it is" in done.stdout
    assert stored_token(cluster) == first and cluster.api.revision == version


@pytest.mark.kubectl
@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_a_secret_made_by_hand_with_kubectl_is_kept(cluster: KubeApiServer) -> None:
    """The operator's own token (shared with tools outside the cluster) wins."""
    # `kubectl create -f` (`create secret generic` speaks protobuf, which the test server
    # does not; nor OpenAPI, hence no client-side validation): the Secret as an operator
    # writes it, stringData and all.
    manifest = {"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": DEFAULT_NAME, "namespace": DEFAULT_NAMESPACE},
                "stringData": {"token": "operator-chosen"}}  # fmt: skip
    made = subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(cluster.kubeconfig), "create", "--validate=false",
         "-f", "-"],
        input=json.dumps(manifest), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    done = run_token(cluster)
    assert done.returncode == 0, done.stderr
    assert stored_token(cluster) == "operator-chosen"
    assert [c for c in cluster.api.calls if c[0] == "create"] == [
        ("create", "secrets", DEFAULT_NAMESPACE, None)  # kubectl's, not ours
    ]


def test_a_secret_without_a_token_key_is_reported_not_replaced(cluster: KubeApiServer) -> None:
    answer = cluster.http.post(
        SECRETS, json={"metadata": {"name": DEFAULT_NAME}, "stringData": {"other": "x"}}
    )
    assert answer.status_code == 201, answer.text
    done = run_token(cluster)
    assert done.returncode == 1
    assert "has no usable 'token' key" in done.stderr and "delete the Secret" in done.stderr
    secret = cluster.api.objects[("secrets", DEFAULT_NAMESPACE, DEFAULT_NAME)]
    assert set(secret["data"]) == {"other"}


def test_losing_a_create_race_keeps_the_winners_token(
    cluster: KubeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs at once (a Job retried while the first pod still ran): the second one's
    GET says 404, then another run creates the Secret before this one's POST (409)."""
    real_write = cluster.api._write
    winner = base64.b64encode(b"the-winner").decode()

    def another_run_first(verb: str, kind: Any, namespace: Any, *rest: Any) -> Any:
        if verb == "post" and kind.plural == "secrets":
            real_write(verb, kind, namespace, None, None,
                       {"metadata": {"name": DEFAULT_NAME}, "data": {"token": winner}})  # fmt: skip
        return real_write(verb, kind, namespace, *rest)

    monkeypatch.setattr(cluster.api, "_write", another_run_first)
    assert asyncio.run(ensure(cluster.kubeconfig)) == "exists"
    assert stored_token(cluster) == "the-winner"


def test_an_unreachable_api_server_fails_with_a_clear_message(cluster: KubeApiServer) -> None:
    cluster.close()
    done = run_token(cluster)
    assert done.returncode == 1
    assert "cannot reach the Kubernetes API server" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_test_api_server_admits_secrets_as_kube_apiserver_does(cluster: KubeApiServer) -> None:
    """What the tests above rely on: data must be base64, stringData is folded into it."""
    bad = cluster.http.post(SECRETS, json={"metadata": {"name": "bad"}, "data": {"k": "%%%"}})
    assert bad.status_code == 422
    made = cluster.http.post(SECRETS, json={"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    assert made.status_code == 201
    assert made.json()["data"] == {"k": "dg=="} and "stringData" not in made.json()


# -- the Job's RBAC, as deploy/ renders it ---------------------------------------------------
def allows(rules: list[dict[str, Any]], verb: str, resource: str, name: str | None) -> bool:
    for rule in rules:
        if "" not in rule["apiGroups"] or resource not in rule["resources"]:
            continue
        if verb not in rule["verbs"]:
            continue
        names = rule.get("resourceNames")
        if not names or name in names:
            return True
    return False


@pytest.mark.kubectl
@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_every_request_is_allowed_by_the_jobs_role_and_nothing_more(cluster: KubeApiServer) -> None:
    from .test_deploy import by_kind, render

    objects = render("deploy")
    role = by_kind(objects, "Role", "romana-token")
    assert role["metadata"]["namespace"] == DEFAULT_NAMESPACE
    rules = role["rules"]
    assert run_token(cluster).returncode == 0  # creates
    assert run_token(cluster).returncode == 0  # finds it
    for verb, resource, namespace, name in cluster.api.calls:
        assert namespace == DEFAULT_NAMESPACE
        assert allows(rules, verb, resource, name), (verb, resource, name)
    # and nothing beyond: no list/watch/update/delete, no other Secret's content
    for verb in ("list", "watch", "update", "patch", "delete"):
        assert not allows(rules, verb, "secrets", DEFAULT_NAME), verb
    assert not allows(rules, "get", "secrets", "another-secret")
    job = by_kind(objects, "Job", "romana-token")["spec"]["template"]["spec"]
    command = job["containers"][0]["args"]
    assert command[0] == "romana-token"
    assert f"--namespace={DEFAULT_NAMESPACE}" in command and f"--name={DEFAULT_NAME}" in command


def test_the_command_is_installed_as_romana_token() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["romana-token"] == "romana.kube.token:main"
