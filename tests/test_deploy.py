"""The manifests in deploy/: rendered offline by the installed kubectl (kustomize), and
every object valid against the Kubernetes schemas of a current release, offline
(kubernetes-validate); plus the properties an operator relies on."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from romana.topology import read_file, validate

ROOT = Path(__file__).resolve().parent.parent
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


def render(where: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(ROOT / where)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def by_kind(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    assert len(found) == 1, (kind, name, [o["metadata"]["name"] for o in objects])
    return found[0]


@pytest.mark.parametrize("where", ["deploy", "deploy/overlays/etcd"])
def test_renders_and_validates_against_the_kubernetes_schemas(where: str) -> None:
    version = kubernetes_validate.latest_version()
    objects = render(where)
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
    namespaced = [o for o in objects if o["kind"] not in ("Namespace", "ClusterRole",
                                                           "ClusterRoleBinding")]  # fmt: skip
    assert {o["metadata"].get("namespace") for o in namespaced} == {"romana-system"}


def test_rbac_is_least_privilege() -> None:
    objects = render("deploy")
    listener = by_kind(objects, "ClusterRole", "romana-listener")["rules"]
    assert listener == [
        {"apiGroups": [""], "resources": ["nodes", "namespaces", "pods"],
         "verbs": ["list", "watch"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
         "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]  # fmt: skip
    agent = by_kind(objects, "ClusterRole", "romana-agent")["rules"]
    assert agent == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
    romanad = by_kind(objects, "Deployment", "romanad")["spec"]["template"]["spec"]
    assert romanad["automountServiceAccountToken"] is False, "romanad reads nothing from k8s"


def test_agent_daemonset_installs_and_removes_the_cni_plugin() -> None:
    agent = by_kind(render("deploy"), "DaemonSet", "romana-agent")["spec"]["template"]["spec"]
    assert agent["hostNetwork"] is True and agent["tolerations"] == [{"operator": "Exists"}]
    container = agent["containers"][0]
    assert container["securityContext"]["privileged"] is True
    assert "--kubernetes" in container["args"]
    install = agent["initContainers"][0]["args"]
    assert install[:2] == ["romana-cni", "install"] and "--conf-dir=/etc/cni/net.d" in install
    assert container["lifecycle"]["preStop"]["exec"]["command"][:2] == ["romana-cni", "uninstall"]
    paths = {v["name"]: v.get("hostPath", {}).get("path") for v in agent["volumes"]}
    assert paths["cni-bin"] == "/opt/cni/bin" and paths["cni-conf"] == "/etc/cni/net.d"


def test_the_topology_configmap_is_a_valid_map() -> None:
    objects = render("deploy")
    config = by_kind(objects, "ConfigMap", "romana-topology")
    document = json.loads(config["data"]["topology.json"])
    assert validate(document) == []
    assert document == read_file("kubeadm"), "the ConfigMap ships the kubeadm preset"
    romanad = by_kind(objects, "Deployment", "romanad")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in romanad["volumes"]}
    assert volumes["topology"]["configMap"]["name"] == config["metadata"]["name"]


def test_etcd_overlay_runs_three_replicas_on_etcd() -> None:
    objects = render("deploy/overlays/etcd")
    romanad = by_kind(objects, "Deployment", "romanad")["spec"]
    assert romanad["replicas"] == 3 and romanad["strategy"]["type"] == "RollingUpdate"
    args = romanad["template"]["spec"]["containers"][0]["args"]
    assert any(a.startswith("--store=etcd://") for a in args)
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert by_kind(objects, "StatefulSet", "romana-etcd")["spec"]["replicas"] == 3


def test_predefined_topologies_in_examples_are_the_presets() -> None:
    from romana.topology.load import presets

    assert presets() == ["kops-aws-us-east-1", "kops-aws-us-west-1", "kubeadm"]
    for name in presets():
        assert validate(read_file(ROOT / "examples" / f"{name}.json")) == []
        assert read_file(ROOT / "examples" / f"{name}.json") == read_file(name)
