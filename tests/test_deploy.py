"""The manifests in deploy/: rendered offline by the installed kubectl (kustomize), and
every object valid against the Kubernetes schemas of a current release, offline
(kubernetes-validate); the properties an operator relies on; and the commands of the
rendered containers run for real where this machine can (romanad's read protection, the
publisher's first BIRD configuration, BIRD's socket reached as the publisher's user)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from romana import __version__
from romana.topology import read_file, validate

ROOT = Path(__file__).resolve().parent.parent
KUBECTL = shutil.which("kubectl")
pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed"),
]
RENDERINGS = ["deploy", "deploy/overlays/pvc", "deploy/overlays/etcd", "deploy/overlays/bird"]
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass"}
IMAGE = f"ghcr.io/romana-python/romana:{__version__}"
TOKEN_SECRET = "romana-api-token"


def render(where: str | Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(ROOT / where)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def by_kind(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    assert len(found) == 1, (kind, name, [o["metadata"]["name"] for o in objects])
    return found[0]


def pod_spec(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return by_kind(objects, kind, name)["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def pod_templates(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def named(spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in containers(spec) if c["name"] == name]
    return found


# -- schemas, namespaces, images -------------------------------------------------------------
@pytest.mark.parametrize("where", [*RENDERINGS, "deploy/uninstall"])
def test_renders_and_validates_against_the_kubernetes_schemas(where: str) -> None:
    version = kubernetes_validate.latest_version()
    objects = render(where)
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
    namespaced = [o for o in objects if o["kind"] not in CLUSTER_SCOPED]
    expected = "romana-uninstall" if where == "deploy/uninstall" else "romana-system"
    assert {o["metadata"].get("namespace") for o in namespaced} == {expected}


@pytest.mark.parametrize("where", [*RENDERINGS, "deploy/uninstall"])
def test_every_romana_container_runs_the_image_of_this_version(where: str) -> None:
    for what, spec in pod_templates(render(where)):
        for container in containers(spec):
            if container["name"] != "etcd":
                assert container["image"] == IMAGE, (what, container["name"])


def test_an_images_overlay_points_every_container_at_another_registry(tmp_path: Path) -> None:
    """What docs/kubernetes.md tells: kubectl has no `kustomize edit`, an overlay does it,
    and it reaches the optional component's containers too."""
    (tmp_path / "kustomization.yaml").write_text(
        f"resources:\n  - {os.path.relpath(ROOT / 'deploy/overlays/bird', tmp_path)}\n"
        "images:\n  - name: ghcr.io/romana-python/romana\n"
        "    newName: registry.example:5000/romana\n"
    )
    images = {
        c["image"]
        for _, spec in pod_templates(render(tmp_path))
        for c in containers(spec)
        if c["name"] != "etcd"
    }
    assert images == {f"registry.example:5000/romana:{__version__}"}


# -- identities and capabilities -------------------------------------------------------------
def runs_as_root(spec: dict[str, Any], container: dict[str, Any]) -> bool:
    """uid 0 said explicitly (the image's own user is 65532, see scripts/build_image.py)."""
    uid = container.get("securityContext", {}).get("runAsUser")
    if uid is None:
        uid = spec.get("securityContext", {}).get("runAsUser")
    return uid == 0


@pytest.mark.parametrize("where", [*RENDERINGS, "deploy/uninstall"])
def test_a_container_given_capabilities_runs_as_root(where: str) -> None:
    """A non-root process has empty permitted and effective sets even when the container
    is privileged or granted capabilities (moby/moby#36587): such a container is broken
    unless it runs as uid 0 (the agent was, running as the image's 65532)."""
    for what, spec in pod_templates(render(where)):
        for container in containers(spec):
            context = container.get("securityContext", {})
            needs = context.get("privileged") or context.get("capabilities", {}).get("add")
            if needs:
                assert runs_as_root(spec, container), (what, container["name"])


def test_the_agent_is_root_and_privileged_and_its_installer_is_not_privileged() -> None:
    spec = pod_spec(render("deploy"), "DaemonSet", "romana-agent")
    assert spec["hostNetwork"] is True and spec["tolerations"] == [{"operator": "Exists"}]
    agent = named(spec, "agent")
    assert agent["securityContext"]["privileged"] is True
    assert agent["securityContext"]["runAsUser"] == 0
    assert "--kubernetes" in agent["args"]
    install = named(spec, "install-cni")
    assert install["args"] == [
        "romana-cni", "install", "--host-root=/host", "--bin-dir=/opt/cni/bin",
        "--conf-dir=/etc/cni/net.d", "--agent-socket=/run/romana/cni.sock",
    ]  # fmt: skip
    context = install["securityContext"]
    assert context["runAsUser"] == 0 and context["privileged"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {
        "drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER"]
    }  # fmt: skip
    paths = {v["name"]: v.get("hostPath", {}).get("path") for v in spec["volumes"]}
    assert paths["cni-bin"] == "/opt/cni/bin" and paths["cni-conf"] == "/etc/cni/net.d"
    mounted = {m["name"] for m in agent["volumeMounts"]}
    assert not mounted & {"cni-bin", "cni-conf"}, "only the installer writes the CNI dirs"


@pytest.mark.parametrize("where", RENDERINGS)
def test_nothing_removes_the_cni_config_when_a_pod_stops(where: str) -> None:
    """A preStop uninstall took every node NotReady at each agent restart or update."""
    for what, spec in pod_templates(render(where)):
        for container in containers(spec):
            assert "lifecycle" not in container, (what, container["name"])
            assert "uninstall" not in container.get("args", []), (what, container["name"])


def test_uninstall_runs_on_every_node_against_the_installed_paths() -> None:
    install = pod_spec(render("deploy"), "DaemonSet", "romana-agent")
    objects = render("deploy/uninstall")
    spec = pod_spec(objects, "DaemonSet", "romana-cni-uninstall")
    assert spec["hostNetwork"] is True, "no conflist, no pod network: host network only"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert "priorityClassName" not in spec, "Romana's classes are deleted before this runs"
    uninstall, cleanup = spec["initContainers"]  # files first: no new pod meanwhile
    assert cleanup["args"] == ["romana-agent", "--cleanup"]
    assert cleanup["securityContext"]["runAsUser"] == 0
    assert cleanup["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert not cleanup["securityContext"]["privileged"] and "volumeMounts" not in cleanup
    assert uninstall["args"] == [
        "romana-cni", "uninstall", "--host-root=/host", "--bin-dir=/opt/cni/bin",
        "--conf-dir=/etc/cni/net.d",
    ]  # fmt: skip
    assert uninstall["securityContext"] == named(install, "install-cni")["securityContext"]
    assert uninstall["volumeMounts"] == named(install, "install-cni")["volumeMounts"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in install["volumes"] if "hostPath" in v}
    assert {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]} == {
        name: host_paths[name] for name in ("cni-bin", "cni-conf")
    }
    assert by_kind(objects, "Namespace", "romana-uninstall")


# -- RBAC and the token ----------------------------------------------------------------------
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
    token = by_kind(objects, "Role", "romana-token")["rules"]
    assert token == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
         "resourceNames": [TOKEN_SECRET]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]  # fmt: skip
    binding = by_kind(objects, "RoleBinding", "romana-token")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "romana-token", "namespace": "romana-system"}
    ]
    assert [o["metadata"]["name"] for o in objects if o["kind"] in ("Role", "RoleBinding")] == [
        "romana-token", "romana-token"
    ]  # fmt: skip
    romanad = pod_spec(objects, "Deployment", "romanad")
    assert romanad["automountServiceAccountToken"] is False, "romanad reads nothing from k8s"


def uses_secret(spec: dict[str, Any], name: str) -> bool:
    text = json.dumps([spec.get("volumes", []), [c.get("env", []) for c in containers(spec)],
                       [c.get("envFrom", []) for c in containers(spec)]])  # fmt: skip
    return f'"{name}"' in text


@pytest.mark.parametrize("where", RENDERINGS)
def test_the_token_job_makes_the_secret_every_other_pod_waits_for(where: str) -> None:
    """Without a manual step: the Job needs neither the Secret nor a pod network, and runs
    on a new cluster's not-ready nodes; everything else mounts the Secret (and waits in
    ContainerCreating until the Job has made it)."""
    objects = render(where)
    job = by_kind(objects, "Job", "romana-token")
    spec = job["spec"]["template"]["spec"]
    assert not uses_secret(spec, TOKEN_SECRET)
    assert spec["hostNetwork"] is True and spec["serviceAccountName"] == "romana-token"
    assert spec["restartPolicy"] == "OnFailure"
    tolerated = {t["key"] for t in spec["tolerations"]}
    assert {"node.kubernetes.io/not-ready", "node-role.kubernetes.io/control-plane"} <= tolerated
    (container,) = spec["containers"]
    assert container["args"] == [
        "romana-token", "--namespace=romana-system", f"--name={TOKEN_SECRET}"
    ]  # fmt: skip
    assert job["spec"]["ttlSecondsAfterFinished"] > 0, "else a new image tag cannot be applied"
    others = [what for what, spec in pod_templates(objects) if not what.startswith("Job/")]
    romana_pods = [w for w in others if "etcd" not in w]
    waiting = [w for w, s in pod_templates(objects) if uses_secret(s, TOKEN_SECRET)]
    assert sorted(waiting) == sorted(romana_pods)


# -- priority classes ------------------------------------------------------------------------
@pytest.mark.parametrize("where", RENDERINGS)
def test_priority_classes_are_romanas_own_and_defined_before_use(where: str) -> None:
    objects = render(where)
    classes = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PriorityClass"}
    assert set(classes) == {"romana-node-critical", "romana-cluster-critical"}
    for cls in classes.values():
        assert cls["value"] <= 1_000_000_000, "the highest a user-defined class may have"
        assert cls.get("globalDefault", False) is False
    first_class = min(i for i, o in enumerate(objects) if o["kind"] == "PriorityClass")
    for index, obj in enumerate(objects):
        if obj["kind"] in ("Deployment", "DaemonSet", "Job"):
            name = obj["spec"]["template"]["spec"]["priorityClassName"]
            assert name in classes, (obj["metadata"]["name"], name)
            assert index > first_class, "applied before the pods that name it"
    agent = pod_spec(objects, "DaemonSet", "romana-agent")
    assert agent["priorityClassName"] == "romana-node-critical"


# -- romanad: storage, listening address, read protection -----------------------------------
def test_romanad_keeps_its_store_on_a_control_plane_nodes_disk_by_default() -> None:
    objects = render("deploy")
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    spec = pod_spec(objects, "Deployment", "romanad")
    assert spec["nodeSelector"] == {"node-role.kubernetes.io/control-plane": ""}
    assert {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    data = {v["name"]: v for v in spec["volumes"]}["data"]
    assert data["hostPath"] == {"path": "/var/lib/romana", "type": "DirectoryOrCreate"}
    romanad = named(spec, "romanad")
    uid, gid = spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]
    mount = {m["name"]: m["mountPath"] for m in romanad["volumeMounts"]}["data"]
    assert f"--data-dir={mount}" in romanad["args"]
    owner = named(spec, "data-owner")
    assert owner["args"] == ["chown", f"{uid}:{gid}", mount], "hostPath ignores fsGroup"
    assert owner["securityContext"]["runAsUser"] == 0
    assert owner["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert by_kind(objects, "Deployment", "romanad")["spec"]["strategy"]["type"] == "Recreate"


def test_the_pvc_overlay_puts_the_store_on_a_claim_anywhere() -> None:
    objects = render("deploy/overlays/pvc")
    claim = by_kind(objects, "PersistentVolumeClaim", "romanad-data")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    spec = pod_spec(objects, "Deployment", "romanad")
    data = {v["name"]: v for v in spec["volumes"]}["data"]
    assert data == {"name": "data", "persistentVolumeClaim": {"claimName": "romanad-data"}}
    assert "nodeSelector" not in spec
    assert by_kind(objects, "Deployment", "romanad")["spec"]["replicas"] == 1


def test_etcd_overlay_runs_three_replicas_on_etcd() -> None:
    objects = render("deploy/overlays/etcd")
    romanad = by_kind(objects, "Deployment", "romanad")["spec"]
    assert romanad["replicas"] == 3 and romanad["strategy"]["type"] == "RollingUpdate"
    spec = romanad["template"]["spec"]
    args = named(spec, "romanad")["args"]
    assert any(a.startswith("--store=etcd://") for a in args)
    assert "nodeSelector" not in spec, "three replicas need three nodes"
    assert {v["name"]: v for v in spec["volumes"]}["data"] == {"name": "data", "emptyDir": {}}
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert by_kind(objects, "StatefulSet", "romana-etcd")["spec"]["replicas"] == 3


@pytest.mark.parametrize("where", RENDERINGS)
def test_romanad_listens_on_the_nodes_address_and_wants_the_token_for_reads(where: str) -> None:
    spec = pod_spec(render(where), "Deployment", "romanad")
    romanad = named(spec, "romanad")
    args = romanad["args"]
    listens = [a.removeprefix("--listen=") for a in args if a.startswith("--listen=")]
    assert listens == ["$(POD_IP):9600", "127.0.0.1:9600"]
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in (
        romanad["env"]
    )
    assert spec["hostNetwork"] is True, "status.podIP is the node's address only then"
    assert "--auth-reads" in args and "--token-file=/etc/romana/token/token" in args
    for probe in (romanad["readinessProbe"], romanad["livenessProbe"]):
        # no host: kubelet probes the pod IP, i.e. the address romanad listens on
        assert probe["httpGet"] == {"path": "/healthz", "port": 9600}


class Mounted:
    """A rendered container's command run here: its volumes as directories of a test, its
    $(VAR) references from ``env``, ports and addresses as the test says."""

    def __init__(self, tmp: Path, container: dict[str, Any], contents: dict[str, dict[str, str]]):
        self.dirs: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            where = tmp / mount["name"]
            where.mkdir(parents=True, exist_ok=True)
            for file, text in contents.get(mount["name"], {}).items():
                (where / file).write_text(text)
            self.dirs[mount["mountPath"]] = where

    def args(self, args: list[str], env: dict[str, str]) -> list[str]:
        out = []
        for arg in args:
            arg = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)
            for mount_path, local in sorted(self.dirs.items(), key=lambda i: -len(i[0])):
                arg = arg.replace(mount_path, str(local))
            out.append(arg)
        return out


def start_rendered_romanad(
    tmp: Path, spec: dict[str, Any], token: str, port: int, drop: str = ""
) -> tuple[subprocess.Popen[bytes], Path]:
    romanad = named(spec, "romanad")
    topology = (ROOT / "deploy/base/topology.json").read_text()
    mounted = Mounted(tmp, romanad, {"topology": {"topology.json": topology},
                                     "token": {"token": token + "\n"}})  # fmt: skip
    rendered = [a.replace(":9600", f":{port}") for a in romanad["args"] if a != drop]
    args = mounted.args(rendered, {"POD_IP": "127.0.0.2"})  # the "node address"
    log = tmp / "romanad.log"
    command = [str(Path(sys.executable).parent / args[0]), *args[1:]]
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT), log


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"romanad did not become healthy: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.daemons
def test_romanad_as_rendered_refuses_reads_without_the_token(tmp_path: Path) -> None:
    """The rendered command line, run: a pod that reaches the node's address cannot read the
    state without the token; probes and metrics need none; loopback serves too."""
    from .daemon import free_port

    spec = pod_spec(render("deploy"), "Deployment", "romanad")
    token, port = "deploy-test-token", free_port()
    proc, log = start_rendered_romanad(tmp_path, spec, token, port)
    node, loopback = f"http://127.0.0.2:{port}", f"http://127.0.0.1:{port}"
    bearer = {"authorization": f"Bearer {token}"}
    try:
        wait_healthy(proc, node, log)
        assert httpx.get(f"{loopback}/healthz").status_code == 200
        refused = httpx.get(f"{node}/hosts")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        wrong = httpx.get(f"{node}/hosts", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        for path in ("/topology", "/policy/state", "/watch?since=0&timeout=1", "/openapi.json"):
            assert httpx.get(f"{node}{path}").status_code == 401, path
        assert (
            httpx.post(f"{node}/hosts", json={"name": "n1", "ip": "192.168.0.1"}).status_code == 401
        )
        served = httpx.get(f"{node}/hosts", headers=bearer)
        assert served.status_code == 200, served.text
        assert httpx.get(f"{node}/topology", headers=bearer).json()["networks"]
        assert httpx.get(f"{node}/metrics").status_code == 200, "Prometheus scrapes without one"
    finally:
        stop(proc)


@pytest.mark.daemons
def test_without_auth_reads_reads_stay_open_and_the_flag_needs_a_token(tmp_path: Path) -> None:
    """What the flag changes (the test above would pass on an open romanad otherwise)."""
    from .daemon import free_port

    spec = pod_spec(render("deploy"), "Deployment", "romanad")
    port = free_port()
    proc, log = start_rendered_romanad(tmp_path / "open", spec, "t", port, drop="--auth-reads")
    try:
        wait_healthy(proc, f"http://127.0.0.2:{port}", log)
        assert httpx.get(f"http://127.0.0.2:{port}/hosts").status_code == 200
    finally:
        stop(proc)
    romanad = Path(sys.executable).parent / "romanad"
    done = subprocess.run([str(romanad), "--auth-reads", "--data-dir", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0 and "--auth-reads needs --token-file" in done.stderr


# -- the BIRD overlay ------------------------------------------------------------------------
def test_the_bird_overlay_runs_bird_and_the_publisher_on_announcing_nodes() -> None:
    objects = render("deploy/overlays/bird")
    spec = pod_spec(objects, "DaemonSet", "romana-publisher")
    assert spec["nodeSelector"] == {"romana.io/announce": "true"}
    assert spec["hostNetwork"] is True
    bird, publisher, first = (
        named(spec, "bird"),
        named(spec, "publisher"),
        named(spec, "first-config"),
    )
    assert bird["securityContext"]["runAsUser"] == 0
    assert bird["securityContext"]["capabilities"] == {
        "drop": ["ALL"], "add": ["NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW"]
    }  # fmt: skip
    assert "privileged" not in bird["securityContext"]
    options = dict(a.split("=", 1) for a in publisher["args"] if a.startswith("--"))
    assert bird["args"] == ["bird", "-f", "-c", options["--output"], "-s", options["--bird-socket"]]
    assert "--once" in first["args"] and not any(
        a.startswith("--bird-socket") for a in first["args"]
    )
    assert [a for a in first["args"] if a != "--once"] == [
        a for a in publisher["args"] if not a.startswith(("--bird-socket", "--metrics-listen"))
    ]
    shared = {"bird-run": "/run/bird"}
    for container in (bird, publisher, first):
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts.items() >= shared.items(), container["name"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["bird-run"]
    template = by_kind(objects, "ConfigMap", "romana-bird-template")
    assert volumes["template"]["configMap"]["name"] == template["metadata"]["name"]
    assert Path(options["--template"]).name in template["data"]
    for context in (publisher["securityContext"], first["securityContext"]):
        assert context["runAsUser"] == 65532 and context["capabilities"] == {"drop": ["ALL"]}
    # the base alone has no publisher
    assert not [o for o in render("deploy") if o["metadata"]["name"] == "romana-publisher"]


needs_bird = pytest.mark.skipif(
    shutil.which("bird") is None or os.geteuid() != 0, reason="needs bird2 and root"
)


@pytest.mark.root
@pytest.mark.daemons
@pytest.mark.bird
@needs_bird
def test_the_first_config_container_renders_a_config_bird_accepts(tmp_path: Path) -> None:
    """The init container's command as rendered, against a real romanad holding the node
    with the labels the template reads: the file BIRD is started with."""
    from .daemon import running

    objects = render("deploy/overlays/bird")
    spec = pod_spec(objects, "DaemonSet", "romana-publisher")
    first = named(spec, "first-config")
    template = by_kind(objects, "ConfigMap", "romana-bird-template")["data"]
    mounted = Mounted(tmp_path / "pod", first, {"template": template,
                                                "token": {"token": "t\n"}})  # fmt: skip
    with running(tmp_path / "romanad", "--topology", "kubeadm") as romanad:
        with romanad.client() as http:
            answer = http.post("/hosts", json={
                "name": "node-1", "ip": "192.168.1.11",
                "tags": {"romana.io/bgp-neighbor": "192.168.1.1",
                         "romana.io/bgp-neighbor-as": "65101"}})  # fmt: skip
            assert answer.status_code == 200, answer.text
            assert http.post("/address", json={"name": "p1", "host": "node-1"}).status_code == 200
        host, port = romanad.url.removeprefix("http://").split(":")
        args = mounted.args(first["args"], {"NODE_NAME": "node-1", "ROMANAD_SERVICE_HOST": host,
                                            "ROMANAD_SERVICE_PORT": port})  # fmt: skip
        done = subprocess.run([str(Path(sys.executable).parent / args[0]), *args[1:]],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
    output = Path(next(a.split("=", 1)[1] for a in args if a.startswith("--output=")))
    text = output.read_text()
    assert "neighbor 192.168.1.1 as 65101;" in text and "local 192.168.1.11 as 64512;" in text
    assert re.search(r"route 10\.\S+ blackhole;", text), text
    assert subprocess.run(["bird", "-p", "-c", str(output)], capture_output=True).returncode == 0


@pytest.mark.root
@pytest.mark.daemons
@pytest.mark.bird
@needs_bird
def test_the_publishers_user_reaches_birds_socket() -> None:
    """BIRD makes its control socket root:root 0660: the publisher's uid 65532 gets in
    through its group 0 (runAsGroup), and would not with the image's group 65532."""
    objects = render("deploy/overlays/bird")
    spec = pod_spec(objects, "DaemonSet", "romana-publisher")
    context = named(spec, "publisher")["securityContext"]
    uid, gid = context["runAsUser"], context["runAsGroup"]
    # pytest's own directories are root's 0700: an emptyDir-like directory outside them
    run = Path(tempfile.mkdtemp(prefix="romana-bird-run-", dir="/tmp"))
    run.chmod(0o777)  # as an emptyDir
    (run / "bird.conf").write_text("router id 10.0.0.1;\nprotocol device {}\n")
    socket = run / "bird.ctl"
    bird = subprocess.Popen(["bird", "-f", "-c", str(run / "bird.conf"), "-s", str(socket)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

        def birdc_as(group: int) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["setpriv", f"--reuid={uid}", f"--regid={group}", "--clear-groups",
                 "birdc", "-s", str(socket), "show", "status"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip

        assert "Daemon is up and running" in birdc_as(gid).stdout
        assert "Daemon is up and running" not in birdc_as(65532).stdout
    finally:
        bird.terminate()
        bird.wait(10)
        shutil.rmtree(run)


# -- the topology ----------------------------------------------------------------------------
def test_the_topology_configmap_is_a_valid_map() -> None:
    objects = render("deploy")
    config = by_kind(objects, "ConfigMap", "romana-topology")
    document = json.loads(config["data"]["topology.json"])
    assert validate(document) == []
    assert document == read_file("kubeadm"), "the ConfigMap ships the kubeadm preset"
    romanad = pod_spec(objects, "Deployment", "romanad")
    volumes = {v["name"]: v for v in romanad["volumes"]}
    assert volumes["topology"]["configMap"]["name"] == config["metadata"]["name"]


def test_predefined_topologies_in_examples_are_the_presets() -> None:
    from romana.topology.load import presets

    assert presets() == ["kops-aws-us-east-1", "kops-aws-us-west-1", "kubeadm"]
    for name in presets():
        assert validate(read_file(ROOT / "examples" / f"{name}.json")) == []
        assert read_file(ROOT / "examples" / f"{name}.json") == read_file(name)
