"""Pods made by a real container runtime through the installed plugin, on two nodes whose
agents run from the image built here, as the rendered DaemonSet runs them.

containerd (private, started here) runs busybox containers with ``ctr run --rm --cni``
in each node's network namespace; ``ctr`` runs chrooted into a root that holds only
itself and its C library, with the node's CNI dirs and /run/romana: no Python, no shell,
nothing else of this machine, as on a node that ships none (see ``tests/containerd.py``).
Each node's agent pod (install-cni, then romana-agent) runs from the image under podman
with exactly the settings of ``kubectl kustomize deploy/`` (tests/podspec.py): uid 0,
privileged, the node's netns as host network, host PID, the node's directories as its
hostPath volumes, the token Secret, romanad's Service env. romanad runs in a control
namespace on 192.168.60.10:9600 (token required, as deployed); ``node1`` is in rack-1,
``node2`` in rack-2, a router namespace between them.

Checked: the plugin install-cni wrote is static and needs nothing of the node; the agent
runs as the manifest says; every pod's address is in its node's group and is what romanad
allocated; pods reach each other across nodes; a pod's removal (ctr's CNI DEL) releases
its address; an agent restart and an image upgrade (the DaemonSet's rolling update: old
container stopped and removed, install-cni and the agent from another tag) while pods run
keep them connected (no ping lost), leave the node's routes and nftables table in place
while no agent runs, keep the conflist, and answer an ADD and a DEL started in the gap;
deploy/uninstall removes every file install wrote.

Every test makes its own pods and removes them; one cluster serves the module and each
test starts with both agents serving and the plugin installed, so any one test runs alone.
The pod network is 10.78.0.0/16, used by no other test.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .containerd import (
    AGENT_SOCKET,
    BUSYBOX,
    CNI_BIN,
    CONTROL_IP,
    ROMANAD_PORT,
    ImageCluster,
    Pod,
    Runtime,
    build_busybox_image,
    plugin_processes,
)
from .elf import is_static
from .lab import Lab, Netns, run
from .podman import Podman, build_image
from .podspec import render
from .wait import wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.daemons,
    pytest.mark.kubectl,  # the pods' specs come from the rendered manifests
    pytest.mark.skipif(
        any(shutil.which(tool) is None for tool in ("containerd", "ctr", "runc", "umoci", "nft"))
        or not Path("/bin/busybox").exists()
        or os.geteuid() != 0,
        reason="needs root, containerd, runc, umoci, busybox-static and nftables",
    ),
]
IMAGE_TOOLS = ("podman", "mmdebstrap", "kubectl")
# The cluster's tests run the image (built here when its inputs changed: minutes).
needs_image = [
    pytest.mark.image,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        any(shutil.which(tool) is None for tool in IMAGE_TOOLS),
        reason="needs podman, mmdebstrap and kubectl (the image and the manifests)",
    ),
]


def image_test(test: Callable[..., None]) -> Callable[..., None]:
    for mark in needs_image:
        test = mark(test)
    return test


ROOT = Path(__file__).resolve().parent.parent
CIDR = "10.78.0.0/16"
CONFLIST = "10-romana.conflist"
CAP_NET_ADMIN = 12
NEXT_ENV = "ROMANA_IMAGE_TAG"  # set in the upgrade's image only (its config's Env)


class World:
    def __init__(self, cluster: ImageCluster, image: str, workdir: Path) -> None:
        self.cluster, self.image, self.workdir = cluster, image, workdir
        self.containerd = cluster.runtime.containerd
        self.pods: dict[str, Pod] = {}

    def run_pod(self, node: str, pod_id: str) -> Pod:
        pod = self.cluster.nodes[node].runtime.run_pod(self.image, pod_id)
        self.pods[pod_id] = pod
        return pod

    def start_pod(self, node: str, pod_id: str) -> Pod:
        """``ctr run`` started, not waited for (its ADD may be in flight)."""
        runtime = self.cluster.nodes[node].runtime
        pod = runtime.start_pod(self.image, pod_id, BUSYBOX, "sleep", "100000")
        self.pods[pod_id] = pod
        return pod

    def remove_pods(self) -> None:
        """Every pod the test made and did not remove (their DELs need the agents)."""
        for pod in list(self.pods.values()):
            if not pod.removed:
                pod.node.stop_pod(pod)
        self.pods.clear()

    def ip(self, pod: Pod) -> str:
        """The pod's IPv4 address on eth0, as the pod itself sees it (it must be a /32)."""
        shown = self.containerd.exec(pod.id, BUSYBOX, "ip", "-4", "-o", "addr", "show", "eth0")
        found = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/(\d+)", shown.stdout)
        assert len(found) == 1 and found[0][1] == "32", shown.stdout
        return str(found[0][0])

    def ping(self, pod: Pod, ip: str) -> bool:
        """One retry: a first packet may wait for neighbour resolution on a loaded machine."""
        for wait in ("1", "3"):
            pinged = self.containerd.exec(
                pod.id, BUSYBOX, "ping", "-c", "1", "-W", wait, ip, check=False
            )
            if pinged.returncode == 0:
                return True
        return False

    def processes(self, pod: Pod) -> list[str]:
        """PIDs of the processes running in a pod (its main one and any exec'd)."""
        rows = self.containerd.ctr("tasks", "ps", pod.id).stdout.splitlines()[1:]
        return [row.split()[0] for row in rows if row.strip()]


@pytest.fixture(scope="module")
def built() -> dict[str, Any]:
    """The image (the cached build whose inputs are unchanged), one build at a time."""
    return build_image()


@pytest.fixture(scope="module")
def world(built: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("rtpods")
    objects = render(ROOT / "deploy")
    uninstall = render(ROOT / "deploy" / "uninstall")
    (daemonset,) = [o for o in objects if o["kind"] == "DaemonSet"]
    template = daemonset["spec"]["template"]["spec"]
    images = {c["image"] for c in [*template["initContainers"], *template["containers"]]}
    assert len(images) == 1, images
    (image,) = images
    podman = Podman(workdir / "podman")  # its own storage: nothing shared with test_image
    try:
        with Lab("rp", workdir) as lab, Runtime(workdir / "rt") as runtime:
            podman.load(ROOT / built["archive"], image)
            busybox = runtime.containerd.import_image(
                build_busybox_image(workdir), "localhost/busybox"
            )
            cluster = ImageCluster(lab, runtime, CIDR, podman, image, objects, uninstall)
            try:
                yield World(cluster, busybox, workdir)
            finally:
                runtime.close()  # pods first (their DELs need the agents), then the cluster
                cluster.close()
    finally:
        podman.close()


def heal(world: World) -> None:
    """Both agents serving and the plugin installed (a test that failed half way may have
    left an agent stopped or the plugin uninstalled)."""
    cluster = world.cluster
    for name, node in cluster.nodes.items():
        if not (node.runtime.conf_dir / CONFLIST).exists():
            cluster.install(name)
        if not cluster.agent_running(name):
            cluster.podman.remove(cluster.agent_spec(name).container_name)
            cluster.start_agent(name)


@pytest.fixture
def world_ready(world: World) -> Iterator[World]:
    """A whole cluster before the test; the test's pods removed after it (agents back
    first: the pods' DELs need them)."""
    heal(world)
    try:
        yield world
    finally:
        heal(world)
        world.remove_pods()


@image_test
def test_installed_plugin_needs_nothing_of_the_node(world_ready: World) -> None:
    cluster = world_ready.cluster
    for name, node in cluster.nodes.items():
        installed = cluster.install(name)  # install-cni from the image, run again
        # The runtime's bin dir holds exactly what install wrote, and the conflist is there.
        assert {p.name for p in installed if p.parent == node.runtime.bin_dir} == {
            p.name for p in node.runtime.bin_dir.iterdir()
        }
        assert [p.name for p in node.runtime.conf_dir.iterdir()] == [CONFLIST]
        conf = json.loads((node.runtime.conf_dir / CONFLIST).read_text())
        assert conf["plugins"][0]["agent_socket"] == AGENT_SOCKET, conf
        for plugin in ("romana", "romana-ipam"):
            path = node.runtime.bin_dir / plugin
            assert path in installed
            # No loader, no libraries, no interpreter: it runs on a node that has none.
            assert is_static(path), f"{path} is not a static executable"
    runtime = cluster.nodes["node1"].runtime
    # The runtime's root: ctr and its libc, the CNI dirs, nothing that could run Python.
    assert not list(runtime.root.rglob("*python*"))
    assert runtime.in_root("/usr/bin/python3", "-c", "pass").returncode != 0
    assert runtime.in_root("/bin/sh", "-c", "true").returncode != 0
    # The plugin, run there as a runtime runs it, answers VERSION (no agent needed).
    version = runtime.in_root(
        f"{CNI_BIN}/romana", env={"CNI_COMMAND": "VERSION"}, stdin='{"cniVersion": "1.0.0"}'
    )
    assert version.returncode == 0, version.stderr
    assert "1.0.0" in json.loads(version.stdout)["supportedVersions"]


@image_test
def test_each_agent_runs_from_the_image_as_the_daemonset_says(world_ready: World) -> None:
    cluster = world_ready.cluster
    for name, node in cluster.nodes.items():
        pid = cluster.agent_pid(name)
        container = cluster.agent_spec(name).container_name
        inspected = json.loads(cluster.podman("inspect", container).stdout)[0]
        assert inspected["ImageName"] == cluster.images[name]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"romana-agent" in argv[1], argv  # the venv's python runs the script
        # The manifest's $(VAR)s expanded from the Service env and the downward API.
        assert f"--url=http://{CONTROL_IP}:{ROMANAD_PORT}".encode() in argv, argv
        assert f"--host={name}".encode() in argv and b"--kubernetes" in argv, argv
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        status = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
        assert status["Uid"].split()[0] == "0"
        assert int(status["CapEff"], 16) >> CAP_NET_ADMIN & 1, status["CapEff"]
        # hostNetwork: the node's netns; hostPID: this machine's PID namespace; but a
        # mount namespace of its own (the image's root).
        netns = os.stat(f"/run/netns/{node.netns.name}")
        agent_net = os.stat(f"/proc/{pid}/ns/net")
        assert (agent_net.st_dev, agent_net.st_ino) == (netns.st_dev, netns.st_ino)
        assert os.readlink(f"/proc/{pid}/ns/pid") == os.readlink("/proc/self/ns/pid")
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        # Its liveness probe, as kubelet asks it, in the node's network.
        assert probe(node.netns.name, "http://127.0.0.1:9604/healthz") == 200
        # It follows romanad (over TCP, with the token): an address on the node gives it
        # an area, a route it must program in the node's network.
        cluster.client.allocate(f"probe-{name}", host=name, tenant="default")
        try:
            wait_until(lambda n=name: agent_routes(cluster, n), 30,
                       what=f"{name}'s agent to program its routes")  # fmt: skip
        finally:
            cluster.client.release(f"probe-{name}")
        listed = node.netns.exec("nft", "list", "table", "inet", "romana", check=False)
        assert listed.returncode == 0, listed.stderr


@image_test
def test_runtime_pods_get_group_addresses_and_reach_across_nodes(world_ready: World) -> None:
    world = world_ready
    cluster = world.cluster
    placed = {"a1": "node1", "a2": "node1", "b1": "node2"}
    pods = {pod_id: world.run_pod(node, pod_id) for pod_id, node in placed.items()}
    ips = {}
    for pod_id, pod in pods.items():
        allocation = cluster.address(pod)
        assert allocation is not None, f"romanad has no address for {pod.attachment}"
        assert allocation["host"] == placed[pod_id]
        group = ipaddress.ip_network(cluster.group_cidr(placed[pod_id]))
        assert ipaddress.ip_address(allocation["ip"]) in group
        ips[pod_id] = world.ip(pod)
        assert ips[pod_id] == allocation["ip"]
    assert len(set(ips.values())) == 3
    # Across nodes (through the router) both ways, and within a node.
    assert world.ping(pods["a1"], ips["b1"])
    assert world.ping(pods["b1"], ips["a1"])
    assert world.ping(pods["a1"], ips["a2"])

    # Removing a pod: ctr's CNI DEL releases the address and removes the host's veth.
    veths_before = rmn_links(cluster, "node1")
    code = cluster.nodes["node1"].runtime.stop_pod(pods["a2"])
    assert code == 137, pods["a2"].output()  # SIGKILL'd task; a failed DEL is only logged
    assert "level=error" not in pods["a2"].output(), pods["a2"].output()
    assert cluster.address(pods["a2"]) is None
    wait_until(
        lambda: len(rmn_links(cluster, "node1")) == len(veths_before) - 1,
        10,
        what="a2's host veth to go",
    )
    assert ips["a2"] not in {a["ip"] for a in cluster.client.addresses(host="node1")["addresses"]}
    assert world.ping(pods["a1"], ips["b1"])


@dataclass
class Gap:
    """What a test saw while node2 had no agent."""

    pings_sent: int
    pings_received: int
    conflist_reads: int
    conflist_changed: int


def through_an_agent_gap(world: World, tag: str, stop: Callable[[], int],
                         start: Callable[[], None]) -> Gap:  # fmt: skip
    """node2's agent stopped by ``stop`` and brought back by ``start`` while pods run:
    a1 (node1) pings b1 (node2) all along; with no agent, a new pod's ADD and another
    pod's DEL are started and must both wait for it; the node's routes and nftables
    state must stay as they were. Checks everything that must hold after; returns the
    counts."""
    cluster = world.cluster
    node2 = cluster.nodes["node2"]
    conflist = node2.runtime.conf_dir / CONFLIST
    conflist_before = conflist.read_bytes()
    a1 = world.run_pod("node1", f"{tag}a1")
    b1 = world.run_pod("node2", f"{tag}b1")
    b2 = world.run_pod("node2", f"{tag}b2")
    b1_ip = world.ip(b1)
    watcher = ConflistWatcher(conflist, conflist_before)

    # Ping b1 (node2) from a1 (node1), every 0.1 s, from before the agent stops until after
    # it is back and has answered; busybox ping counts sent and received when interrupted.
    pinger = subprocess.Popen(
        world.containerd.ctr_argv(
            *("tasks", "exec", "--exec-id", "pinger", a1.id),
            *(BUSYBOX, "ping", "-i", "0.1", "-W", "1", b1_ip),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: len(world.processes(a1)) == 2, 10, what="the pinger to run")
        routes_before, nft_before = node_state(cluster, "node2")
        assert any(r.get("dst") == b1_ip for r in routes_before), routes_before
        watcher.start()
        assert stop() == 0
        # No agent: the node keeps every route and its whole nftables ruleset (running
        # pods stay reachable and their policies enforced until the next agent).
        routes_after, nft_after = node_state(cluster, "node2")
        assert routes_after == routes_before, route_changes(routes_before, routes_after)
        assert nft_after == nft_before, "".join(
            difflib.unified_diff(nft_before.splitlines(True), nft_after.splitlines(True))
        )
        # While the agent is down: a new pod (ADD) and the removal of another (DEL).
        b3 = world.start_pod("node2", f"{tag}b3")
        world.containerd.ctr("tasks", "kill", "--signal", "SIGKILL", b2.id)
        # Both plugin calls are in flight, waiting for the agent, before it comes back.
        wait_until(
            lambda: (
                {("ADD", b3.attachment), ("DEL", b2.attachment)} <= set(plugin_processes(CNI_BIN))
            ),
            30,
            what="the ADD and the DEL to wait for the agent",
        )
        start()
        node2.runtime.wait_started(b3)
        assert b2.proc.wait(60) == 137
        b2.removed = True
        assert "level=error" not in b2.output(), b2.output()
        assert world.ping(b3, b1_ip)
    finally:
        watcher.stop()
        world.containerd.ctr(
            *("tasks", "kill", "--exec-id", "pinger", "--signal", "SIGINT", a1.id), check=False
        )
        out, _ = pinger.communicate(timeout=30)
    sent, received = ping_totals(out)
    # Not one reply lost through the gap (the last request may be cut by SIGINT).
    assert sent >= 10 and received >= sent - 1, out
    assert conflist.read_bytes() == conflist_before
    # Read all along the gap (install-cni rewrote it in an upgrade): never missing, never
    # another content (a runtime reading it mid-write would see no network).
    assert watcher.reads > 0 and watcher.changed == 0, (watcher.reads, watcher.changed)

    allocation = cluster.address(b3)
    assert allocation is not None and allocation["host"] == "node2"
    assert world.ip(b3) == allocation["ip"]
    assert cluster.address(b2) is None
    assert world.ping(b3, world.ip(a1))
    return Gap(sent, received, watcher.reads, watcher.changed)


@image_test
def test_agent_restart_keeps_pods_connected_and_answers_cni_in_the_gap(
    world_ready: World,
) -> None:
    """kubelet restarts the agent container (its pod stays; no init container)."""
    cluster = world_ready.cluster
    old_pid = cluster.agent_pid("node2")
    gap = through_an_agent_gap(
        world_ready, "r", lambda: cluster.stop_agent("node2"), lambda: cluster.start_agent("node2")
    )
    print(f"restart: {gap}")  # the counts, for the report (pytest -s / -rP)
    assert cluster.agent_pid("node2") != old_pid


@image_test
def test_image_upgrade_while_pods_run(world_ready: World, built: dict[str, Any]) -> None:
    """The DaemonSet's rolling update on node2: the old pod's agent stopped (SIGTERM, the
    manifest's grace period) and removed, then a new pod from the next tag: install-cni
    rewrites the plugin and the conflist, the agent starts."""
    world = world_ready
    cluster = world.cluster
    old_image = cluster.images["node2"]
    new_image = f"{old_image.rsplit(':', 1)[0]}:{built['version']}-next"
    new_id = next_image(cluster.podman, built["layout"], world.workdir, new_image)
    old_id = cluster.podman("image", "inspect", "--format", "{{.Id}}", old_image).stdout.strip()
    assert new_id != old_id
    old_container = cluster.agent_spec("node2").container_name
    old_pid = cluster.agent_pid("node2")

    gap = through_an_agent_gap(world, "u", lambda: cluster.stop_agent("node2"),
                               lambda: cluster.run_agent_pod("node2", new_image))  # fmt: skip
    assert gap.conflist_changed == 0
    print(f"upgrade: {gap}")  # the counts, for the report (pytest -s / -rP)

    # The old container is gone; the agent that answered is the new pod's, from the new tag.
    gone = cluster.podman("container", "exists", old_container, check=False)
    assert gone.returncode == 1
    new_container = cluster.agent_spec("node2").container_name
    assert new_container != old_container
    inspected = json.loads(cluster.podman("inspect", new_container).stdout)[0]
    assert inspected["ImageName"] == new_image and inspected["Image"] == new_id
    pid = cluster.agent_pid("node2")
    assert pid != old_pid
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"{NEXT_ENV}={built['version']}-next".encode() in environ
    assert probe(cluster.nodes["node2"].netns.name, "http://127.0.0.1:9604/healthz") == 200
    # The other node's agent was left alone (one node at a time: maxUnavailable 1).
    assert cluster.images["node1"] == old_image


@image_test
def test_uninstall_removes_every_file_install_wrote(world_ready: World) -> None:
    world = world_ready
    cluster = world.cluster
    pod = world.run_pod("node1", "un1")
    assert cluster.address(pod) is not None
    world.remove_pods()
    assert cluster.address(pod) is None
    # Every pod of this module is gone by now: none left an address behind.
    assert cluster.client.addresses()["addresses"] == []
    try:
        for name, node in cluster.nodes.items():
            installed = set(node.installed)
            assert installed
            cluster.stop_agent(name)  # deleted with Romana, before deploy/uninstall runs
            assert "inet romana" in node_tables(node.netns)  # a stopped agent leaves them
            assert agent_table(node.netns)
            removed = cluster.uninstall(name)  # deploy/uninstall's containers, from the image
            assert set(removed) >= installed
            assert list(node.runtime.bin_dir.iterdir()) == []
            assert list(node.runtime.conf_dir.iterdir()) == []
            # ... and the agent's kernel state: nothing would drop the next CNI's pods.
            assert not {"inet romana", "ip romana-nat"} & node_tables(node.netns)
            assert agent_table(node.netns) == []
    finally:
        for name in cluster.nodes:  # the module's cluster stays usable for later tests
            cluster.install(name)


def node_tables(netns: Netns) -> set[str]:
    listed = run("ip", "netns", "exec", netns.name, "nft", "list", "tables").stdout
    return {line.removeprefix("table ").strip() for line in listed.splitlines()}


def agent_table(netns: Netns) -> list[dict[str, Any]]:
    """The routes in the agent's table (10 by default); none once the table is gone."""
    done = netns.ip("-j", "route", "show", "table", "10", check=False)
    return list(json.loads(done.stdout)) if done.returncode == 0 and done.stdout.strip() else []


class ConflistWatcher:
    """Reads the conflist over and over in a thread: how many reads, how many of them
    found it missing or different."""

    def __init__(self, path: Path, expected: bytes) -> None:
        self.path, self.expected = path, expected
        self.reads = self.changed = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.done.wait(0.005):
            try:
                same = self.path.read_bytes() == self.expected
            except FileNotFoundError:
                same = False
            self.reads += 1
            self.changed += not same

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join(10)


def next_image(podman: Podman, layout_ref: str, workdir: Path, ref: str) -> str:
    """The built image under another tag, ``ref``, made different by its config only: a
    label with the new version and ``ROMANA_IMAGE_TAG`` in its Env, the same layers. Its
    id differs, so a container of it is not one of the old image, and its process shows
    the Env: how the test knows the agent that runs came from the new tag. Returns its id.

    The layout is copied with its blobs hard-linked (they are content-addressed and
    never rewritten; umoci adds new ones) and its index.json a file of its own."""
    layout, tag = layout_ref.rsplit(":", 1)
    copy = workdir / "next-layout"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(layout, copy, copy_function=os.link)
    for name in ("index.json", "oci-layout"):
        data = (copy / name).read_bytes()
        (copy / name).unlink()
        (copy / name).write_bytes(data)
    next_tag = ref.rsplit(":", 1)[1]
    run("umoci", "config", "--image", f"{copy}:{tag}", "--tag", next_tag,
        "--config.env", f"{NEXT_ENV}={next_tag}",
        "--config.label", f"org.opencontainers.image.version={next_tag}")  # fmt: skip
    image_id = podman("pull", "--quiet", f"oci:{copy}:{next_tag}", timeout=600).stdout.strip()
    podman("tag", image_id, ref)
    env = podman.image_config(ref)["Env"]
    assert any(e.startswith("PATH=/opt/romana/bin") for e in env), env  # the image's own
    return image_id


def node_state(cluster: ImageCluster, node: str) -> tuple[list[dict[str, Any]], str]:
    """Every IPv4 route of the node (all tables) and its nftables ruleset without
    counters."""
    netns = cluster.nodes[node].netns
    # IPv4 only: the kernel adds a new veth's IPv6 link-local routes by itself, late.
    routes = netns.ip_json("-4", "route", "show", "table", "all")
    ruleset = netns.exec("nft", "-s", "list", "ruleset").stdout
    assert "table inet romana" in ruleset, ruleset
    return sorted(routes, key=lambda r: json.dumps(r, sort_keys=True)), ruleset


def route_changes(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    def keys(routes: list[dict[str, Any]]) -> set[str]:
        return {json.dumps(r, sort_keys=True) for r in routes}

    return f"gone: {sorted(keys(before) - keys(after))}, new: {sorted(keys(after) - keys(before))}"


def agent_routes(cluster: ImageCluster, node: str) -> bool:
    """romanad's route set for the node is not empty and is all in the node's tables."""
    wanted = {r["prefix"] for r in cluster.client.routes(host=node)["routes"]}
    table = cluster.nodes[node].netns.ip_json("route", "show", "table", "all")
    return bool(wanted) and wanted <= {r.get("dst") for r in table}


def probe(netns: str, url: str) -> int:
    """An httpGet probe from inside the node's network, as kubelet (hostNetwork) makes it."""
    code = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=5).status)"
    done = run("ip", "netns", "exec", netns, sys.executable, "-c", code, url, check=False)
    return int(done.stdout.strip() or 0)


def rmn_links(cluster: ImageCluster, node: str) -> set[str]:
    return {
        link["ifname"]
        for link in cluster.nodes[node].netns.ip_json("link", "show")
        if link["ifname"].startswith("rmn")
    }


def ping_totals(output: str) -> tuple[int, int]:
    found = re.search(r"(\d+) packets transmitted, (\d+) packets received", output)
    assert found, output
    return int(found[1]), int(found[2])
