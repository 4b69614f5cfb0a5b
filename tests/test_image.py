"""The image built here (``make image``), each component run from it by podman with exactly
the settings of the rendered manifests (``kubectl kustomize deploy/`` through
tests/podspec.py: user, security context, mounts, args, environment), on nodes that are
network namespaces made here:

    node-a 192.168.77.1 ──veth── node-b 192.168.77.2
    (romanad, the listener, the token Job,      (the agent)
     the test Kubernetes API server's socket)

The API server is the project's (tests/fakes/kube.py) serving TLS inside node-a;
the `romanad` Service stands for romanad's pod address (no kube-proxy here). podman keeps
its storage under the test's temporary directory, removed at the end with every container.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import threading
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from romana.api.client import RomanaClient

from .kube import KubeApiServer, mismatches, namespace, node
from .lab import Lab, Netns
from .podman import Podman, build_image
from .podspec import (
    ApiServer,
    ContainerSpec,
    Node,
    RenderedCluster,
    Unsupported,
    expand,
    render,
    resolve,
)
from .wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "romana-system"
NODE_IPS = {"node-a": "192.168.77.1", "node-b": "192.168.77.2"}
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
pytestmark = [
    pytest.mark.root,
    pytest.mark.daemons,
    pytest.mark.kubectl,
    pytest.mark.image,
    pytest.mark.timeout(1200),
]
T = TypeVar("T")


def in_netns(netns: str, work: Callable[[], T]) -> T:
    """``work()`` in a thread that entered ``netns`` first (sockets it makes stay there)."""
    import ctypes
    import os

    result: list[Any] = []

    def enter_and_work() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET, for this thread only
                raise OSError(ctypes.get_errno(), f"setns into {netns}")
        finally:
            os.close(fd)
        try:
            result.append(("ok", work()))
        except BaseException as exc:
            result.append(("error", exc))

    worker = threading.Thread(target=enter_and_work)
    worker.start()
    worker.join()
    kind, value = result[0]
    if kind == "error":
        raise value
    return value  # type: ignore[no-any-return]


def eventually(check: Callable[[], T], what: str, timeout: float = 60) -> T:
    """``check()``'s first truthy value: the image's processes start slowly, and until they
    are up a request may fail or an assertion may not hold yet."""
    return wait_until(
        check,
        timeout,
        what=what,
        interval=0.2,
        ignoring=(httpx.HTTPError, OSError, AssertionError),
    )


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def capabilities(text: str) -> int:
    found = re.search(r"^CapEff:\s*([0-9a-f]+)", text, re.MULTILINE)
    assert found, text
    return int(found.group(1), 16)


@dataclasses.dataclass
class Stack:
    """The image loaded into podman, the nodes, the API server, the rendered manifests."""

    podman: Podman
    image: str
    image_user: str
    lab: Lab
    nodes: dict[str, Node]
    netns: dict[str, Netns]
    kube: KubeApiServer
    cluster: RenderedCluster
    token: str = ""

    def pod(self, kind: str, name: str, on: str, pod_name: str = "") -> list[ContainerSpec]:
        return resolve(self.cluster, kind, name, self.nodes[on], pod_name or None,
                       self.image_user)  # fmt: skip

    def probe(self, spec: ContainerSpec, kind: str = "livenessProbe") -> int:
        """An httpGet probe as kubelet makes it (host: the pod's address by default)."""
        get = spec.probes[kind]["httpGet"]
        host = get.get("host") or NODE_IPS[spec.hostname]
        url = f"http://{host}:{get['port']}{get.get('path', '/')}"
        netns = self.netns[spec.hostname].name
        return in_netns(netns, lambda: httpx.get(url, timeout=5).status_code)

    def romanad(self, on: str = "node-a") -> Callable[[Callable[[RomanaClient], T]], T]:
        """Calls with a RomanaClient (the token) from inside node ``on``'s network."""
        url = f"http://{NODE_IPS['node-a']}:9600"

        def call(work: Callable[[RomanaClient], T]) -> T:
            def inside() -> T:
                with RomanaClient(url, token=self.token) as client:
                    return work(client)

            return in_netns(self.netns[on].name, inside)

        return call


@pytest.fixture(scope="module")
def built() -> dict[str, Any]:
    """The image, built (or the cached build whose inputs are unchanged), one build at a
    time across test processes."""
    return build_image()


@pytest.fixture(scope="module")
def stack(built: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("image")
    objects = render(ROOT / "deploy")
    images = {c["image"] for o in objects if o["kind"] in ("Deployment", "DaemonSet", "Job")
              for c in o["spec"]["template"]["spec"]["containers"]}  # fmt: skip
    assert len(images) == 1, images
    (image,) = images
    podman = Podman(tmp / "podman")
    with Lab("img", tmp) as lab:
        try:
            netns = {name: lab.netns(name) for name in NODE_IPS}
            lab.veth(netns["node-a"], "eth0", netns["node-b"], "eth0")
            for name, ip in NODE_IPS.items():
                netns[name].ip("addr", "add", f"{ip}/24", "dev", "eth0")
            (tmp / "kube").mkdir()
            kube = KubeApiServer(tmp / "kube", also=(netns["node-a"].name, NODE_IPS["node-a"]))
        except BaseException:
            podman.close()
            raise
        try:
            podman.load(ROOT / built["archive"], image)
            user = podman.image_config(image).get("User", "")
            nodes = {
                name: Node(name, ip, tmp / "nodes" / name, netns=netns[name].name)
                for name, ip in NODE_IPS.items()
            }
            api = ApiServer(NODE_IPS["node-a"], kube.server.port,
                            Path(kube.server.ca).read_bytes(), kube.TOKEN)  # fmt: skip
            cluster = RenderedCluster(
                objects, tmp / "cluster", {"romanad": NODE_IPS["node-a"]}, api=api
            )
            yield Stack(podman, image, user, lab, nodes, netns, kube, cluster)
        finally:
            podman.close()
            kube.close()


def test_the_image_holds_every_program_and_each_answers_version(
    stack: Stack, built: dict[str, Any]
) -> None:
    scripts = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    tools = ["bird --version", "birdc --version", "nft --version", "ip -V"]
    shell = "; ".join(f'echo "== $({cmd} 2>&1)"' for cmd in tools)
    shell += "; " + "; ".join(f'echo "== {s} $({s} --version 2>&1)"' for s in scripts)
    out = stack.podman.run_once("--pull", "never", "--network", "none", stack.image, "sh", "-c",
                                shell)  # fmt: skip
    lines = [line for line in out.splitlines() if line.startswith("== ")]
    assert len(lines) == len(tools) + len(scripts), out
    assert re.search(r"BIRD version 2\.", out), out
    assert "nftables v1." in out and "iproute2" in out, out
    for script in scripts:
        line = next(line for line in lines if line.startswith(f"== {script} "))
        assert built["version"] in line, f"{script} --version: {line}"
    assert stack.image_user == "65532:65532"
    assert stack.image.endswith(f":{built['version']}")


def test_token_job_makes_the_api_token_secret(stack: Stack) -> None:
    """The token Job from the image, as rendered, creates the Secret every piece mounts."""
    (job,) = stack.pod("Job", "romana-token", "node-a")
    stack.podman.run(dataclasses.replace(job, init=True))  # runs to its end, exit 0
    answer = stack.kube.http.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/romana-api-token")
    assert answer.status_code == 200, answer.text
    import base64

    token = base64.b64decode(answer.json()["data"]["token"]).decode()
    assert len(token) >= 32
    stack.token = token
    stack.cluster.secrets["romana-api-token"] = {"token": token.encode()}


@pytest.fixture(scope="module")
def romanad(stack: Stack) -> Iterator[list[ContainerSpec]]:
    if not stack.token:
        test_token_job_makes_the_api_token_secret(stack)
    specs = stack.pod("Deployment", "romanad", "node-a")
    names = stack.podman.run_pod(specs)
    main = specs[-1]
    eventually(lambda: stack.probe(main, "readinessProbe") == 200, "romanad ready")
    yield specs
    for name in names:
        stack.podman.remove(name)


def test_romanad_serves_as_its_user_and_keeps_its_data_across_a_restart(
    stack: Stack, romanad: list[ContainerSpec]
) -> None:
    main = romanad[-1]
    pid = stack.podman.pid(main.container_name)
    proc = status(pid)
    assert proc["Uid"].split()[:2] == ["65532", "65532"], proc["Uid"]
    assert int(proc["CapEff"], 16) == 0  # drop: ALL
    call = stack.romanad()
    call(lambda c: c.add_host("keeper", "192.168.77.9"))
    # reads need the token (--auth-reads): any pod of the cluster could otherwise read all
    url = f"http://{NODE_IPS['node-a']}:9600/hosts"
    anonymous = in_netns(stack.netns["node-b"].name, lambda: httpx.get(url, timeout=5))
    assert anonymous.status_code == 401, anonymous.text

    assert stack.podman.stop(main.container_name, main.stop_timeout) == 0
    stack.podman.remove(main.container_name)
    again = stack.pod("Deployment", "romanad", "node-a")
    stack.podman.run_pod(again)  # init container (data owner) too, as a new pod would
    eventually(lambda: stack.probe(again[-1], "readinessProbe") == 200, "romanad ready again")
    hosts = call(lambda c: {h["name"]: h["ip"] for h in c.hosts()["hosts"]})
    assert hosts.get("keeper") == "192.168.77.9", hosts
    data = stack.nodes["node-a"].host_path("/var/lib/romana")
    assert any(data.iterdir()), "romanad's data is not on the node's hostPath"
    call(lambda c: c.remove_host("keeper"))


@pytest.fixture(scope="module")
def listener(stack: Stack, romanad: list[ContainerSpec]) -> Iterator[ContainerSpec]:
    for name, ip in NODE_IPS.items():
        stack.kube.create(node(name, ip))
    for name in ("default", NAMESPACE, "team-a"):
        stack.kube.create(namespace(name, team=name))
    (spec,) = stack.pod("Deployment", "romana-listener", "node-a")
    stack.podman.run(spec)
    yield spec
    stack.podman.remove(spec.container_name)


def test_listener_mirrors_the_api_server_into_romanad(
    stack: Stack, listener: ContainerSpec
) -> None:
    def in_step() -> bool:
        return not stack.romanad()(lambda c: mismatches(c, stack.kube))

    eventually(in_step, "romanad in step with the API server", timeout=90)
    assert stack.probe(listener) == 200, stack.podman.logs(listener.container_name)
    proc = status(stack.podman.pid(listener.container_name))
    assert proc["Uid"].split()[0] == "65532" and int(proc["CapEff"], 16) == 0


@pytest.fixture(scope="module")
def agent(stack: Stack, listener: ContainerSpec) -> Iterator[list[ContainerSpec]]:
    specs = stack.pod("DaemonSet", "romana-agent", "node-b")
    names = stack.podman.run_pod(specs)
    yield specs
    for name in names:
        stack.podman.remove(name)  # its routes and table go with node-b's namespace


def test_agent_programs_its_node_with_the_capabilities_it_needs(
    stack: Stack, agent: list[ContainerSpec]
) -> None:
    main = agent[-1]
    node_b, root = stack.netns["node-b"], stack.nodes["node-b"]
    socket = root.host_path("/run/romana/cni.sock")
    eventually(socket.exists, f"the agent's CNI socket {socket}")
    eventually(lambda: stack.probe(main) == 200, "the agent's liveness probe")
    proc = status(stack.podman.pid(main.container_name))
    caps = int(proc["CapEff"], 16)
    assert proc["Uid"].split()[0] == "0"
    assert caps >> CAP_NET_ADMIN & 1 and caps >> CAP_SYS_ADMIN & 1, proc["CapEff"]

    # an address on node-b gives it an area: a route the agent must program
    stack.romanad()(lambda c: c.allocate("image-test-pod", host="node-b", tenant="default"))
    wanted = stack.romanad()(lambda c: c.routes(host="node-b"))
    prefixes = {r["prefix"] if "prefix" in r else r["dst"] for r in wanted["routes"]}
    assert prefixes, wanted

    def programmed() -> bool:
        table = node_b.ip_json("route", "show", "table", "all")
        return prefixes <= {r["dst"] for r in table}

    eventually(programmed, f"routes {sorted(prefixes)} in node-b")
    # the routes are in node-b's network only, not this machine's
    assert not prefixes & {r.get("dst") for r in json.loads(
        subprocess.run(["ip", "-j", "route", "show", "table", "all"], capture_output=True,
                       text=True).stdout)}  # fmt: skip
    eventually(lambda: node_b.exec("nft", "list", "table", "inet", "romana", check=False)
               .returncode == 0, "the agent's nftables table in node-b")  # fmt: skip
    # the install-cni init container put the plugin and the conflist on the node
    conflists = list(root.host_path("/etc/cni/net.d").glob("*.conflist"))
    assert conflists, "no conflist installed"
    plugin = root.host_path("/opt/cni/bin") / "romana"
    version = subprocess.run([str(plugin)], env={"CNI_COMMAND": "VERSION"}, capture_output=True,
                             text=True, timeout=10)  # fmt: skip
    assert version.returncode == 0 and "supportedVersions" in version.stdout, version


def test_the_old_agent_setting_privileged_as_user_65532_has_no_capabilities(
    stack: Stack, agent: list[ContainerSpec]
) -> None:
    """What the issue found: privileged, but the image's non-root USER: CapEff is empty,
    so netlink, nft and setns would fail. The manifests' setting has them all."""
    main = agent[-1]
    read = ["python3", "-c", "print(open('/proc/self/status').read())"]
    old = dataclasses.replace(main, pod="old-setting", user="", command=None, args=read,
                              mounts=[], init=True)  # fmt: skip
    out = stack.podman.run_once(*old.podman_args()[2:])
    assert capabilities(out) == 0, out
    fixed = dataclasses.replace(old, user=main.user)
    out = stack.podman.run_once(*fixed.podman_args()[2:])
    assert capabilities(out) >> CAP_NET_ADMIN & 1, out


def test_podspec_refuses_any_field_it_does_not_understand(tmp_path: Path) -> None:
    """A manifest change podspec cannot reproduce fails the image tests, never passes them
    silently; and kubelet's $(VAR) expansion is reproduced, escapes included."""
    objects = render(ROOT / "deploy")
    api = ApiServer("192.168.77.1", 6443, b"ca", "token")
    secrets = {"romana-api-token": {"token": b"t"}}
    where = Node("node-a", "192.168.77.1", tmp_path / "node")
    agent = next(o for o in objects if o["kind"] == "DaemonSet")
    cluster = RenderedCluster(objects, tmp_path / "c", {"romanad": "192.168.77.1"}, secrets, api)
    specs = resolve(cluster, "DaemonSet", agent["metadata"]["name"], where)
    assert specs[-1].env["ROMANAD_SERVICE_HOST"] == "192.168.77.1"
    container = agent["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["procMount"] = "Unmasked"
    with pytest.raises(Unsupported, match="procMount"):
        resolve(cluster, "DaemonSet", agent["metadata"]["name"], where)
    del container["securityContext"]["procMount"]
    container["someFutureField"] = True
    with pytest.raises(Unsupported, match="someFutureField"):
        resolve(cluster, "DaemonSet", agent["metadata"]["name"], where)
    values = {"A": "1", "B": "x$(A)"}
    assert expand("$(A)-$$(A)-$(C)-$(B)-$", values) == "1-$(A)-$(C)-x$(A)-$"
