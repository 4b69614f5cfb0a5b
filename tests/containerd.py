"""A private containerd for tests, and nodes whose pods it runs through their CNI plugins.

:class:`Containerd` runs ``containerd`` with a configuration of its own (root, state and
socket under the test's directory, the CRI plugin off), so it shares nothing with any other
containerd on the machine; it is started and stopped by PID, and :meth:`Containerd.close`
removes every task, container, shim, mount and file it made, even after a failure.

:class:`RuntimeNode` is one node as the runtime sees it: ``ctr run --cni`` runs in the
node's network namespace, in a mount namespace of its own that is ``chroot``-ed into a
root holding only ``ctr`` (with the C library it links), the node's CNI directories at
``/opt/cni/bin`` and ``/etc/cni/net.d``, and the shared directory (containerd's socket,
the agents' sockets, FIFOs) at its own path. Nothing else of this machine is there: no
Python, no shell, none of the machine's other libraries, as on a node running COS, Talos
or Bottlerocket. ``ctr`` itself calls the plugins (go-cni, like the CRI plugin does): ADD
between creating the task and starting it, DEL when ``ctr run --rm`` sees the task exit.

Pods run a busybox image built here (:func:`build_busybox_image`): no registry needed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import secrets
import shlex
import shutil
import signal
import socket as socketlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from romana.api.client import AddressJson, RomanaClient
from romana.errors import NotFound

from .daemon import Daemon
from .kube import KubeApiServer
from .lab import Lab, Netns, romana_argv, run
from .podman import Podman
from .podspec import ApiServer, ContainerSpec, RenderedCluster, resolve
from .podspec import Node as PodNode
from .wait import wait_until

NAMESPACE = "pods"  # containerd namespace of every container made here
CNI_BIN = "/opt/cni/bin"  # where ctr (go-cni's defaults) looks for plugins
CNI_CONF = "/etc/cni/net.d"  # ... and for network configurations
BUSYBOX = "/bin/busybox"
CONFLIST_NETWORK = "romana"  # the network name in the conflist `romana-cni install` writes
RUN_ROMANA = "/run/romana"  # the node's directory of the agent's sockets (the manifest's)
AGENT_SOCKET = f"{RUN_ROMANA}/cni.sock"  # the plugin's path to the agent (the manifest's)


def build_busybox_image(workdir: Path) -> Path:
    """An OCI archive holding only a static busybox at /bin/busybox (tag ``1``)."""
    busybox = Path("/bin/busybox")
    layout, bundle, archive = workdir / "layout", workdir / "bundle", workdir / "busybox.tar"
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:1")
    run("umoci", "unpack", "--rootless", "--image", f"{layout}:1", str(bundle))
    (bundle / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy2(busybox, bundle / "rootfs" / "bin" / "busybox")
    run("umoci", "repack", "--image", f"{layout}:1", str(bundle))
    run("tar", "-C", str(layout), "-cf", str(archive), ".")
    shutil.rmtree(bundle)
    shutil.rmtree(layout)
    return archive


class Containerd:
    """``containerd`` on a private socket; every call goes through ``ctr``."""

    def __init__(self, workdir: Path, socket: Path | None = None) -> None:
        self.workdir = workdir
        self.root, self.state = workdir / "root", workdir / "state"
        self.socket = socket or workdir / "containerd.sock"
        self.config = workdir / "config.toml"
        self.log = workdir / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Containerd:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "version = 2\n"
            f'root = "{self.root}"\n'
            f'state = "{self.state}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.socket}"\n'
        )
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(self.config)], stdout=log, stderr=log
            )

        def serving() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited: {self.log.read_text()[-2000:]}")
            return self.ctr("version", check=False).returncode == 0

        wait_until(serving, timeout, what="containerd to serve", interval=0.1)
        return self

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return run(*self.ctr_argv(*args), check=check, timeout=timeout)

    def ctr_argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args]

    def import_image(self, archive: Path, name: str) -> str:
        """Import an OCI archive whose one image is tagged ``1``; returns its reference."""
        self.ctr("images", "import", "--base-name", name, str(archive))
        return f"{name}:1"

    def tasks(self) -> dict[str, str]:
        """Task id -> status (RUNNING, STOPPED, ...)."""
        rows = self.ctr("tasks", "ls").stdout.splitlines()[1:]
        return {row.split()[0]: row.split()[2] for row in rows if row.strip()}

    def containers(self) -> set[str]:
        rows = self.ctr("containers", "ls", "--quiet").stdout.split()
        return set(rows)

    def exec(
        self, container: str, *cmd: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside a running container (its namespaces, its root)."""
        exec_id = f"x{time.monotonic_ns()}"
        return self.ctr(
            "tasks", "exec", "--exec-id", exec_id, container, *cmd, check=check, timeout=timeout
        )

    def close(self) -> None:
        """Remove every task and container, stop containerd and its shims by PID, unmount
        what they left mounted and delete the directory."""
        if self.proc is not None and self.proc.poll() is None:
            for task in self.tasks():
                self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
                self.ctr("tasks", "delete", "--force", task, check=False)
            for container in self.containers():
                self.ctr("containers", "delete", container, check=False)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        for pid in self._shims():  # shims outlive containerd by design; ours name our socket
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for mountpoint in sorted(_mounts_under(self.workdir), key=len, reverse=True):
            run("umount", "-l", mountpoint, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _shims(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if b"containerd-shim" in argv[0] and str(self.socket).encode() in argv:
                    pids.append(int(entry.name))
        return pids


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve()) + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mountpoint = line.split()[4].replace("\\040", " ")
        if mountpoint.startswith(prefix):
            mounts.append(mountpoint)
    return mounts


@dataclass
class Pod:
    """A container made by ``ctr run --rm --cni`` on a node; ``proc`` is that ctr."""

    id: str
    node: RuntimeNode
    proc: subprocess.Popen[bytes]
    log: Path
    removed: bool = field(default=False)

    @property
    def attachment(self) -> str:
        """The container id the runtime gives the plugins (go-cni's ``NAMESPACE-ID``)."""
        return f"{NAMESPACE}-{self.id}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class RuntimeNode:
    """A node as the runtime sees it: its netns, CNI dirs and a root holding only ctr.

    ``fs`` stands for the node's own file system: its ``/opt/cni/bin``, ``/etc/cni/net.d``
    and ``/run/romana`` are ``fs``'s directories of those names (what a DaemonSet's
    hostPath volumes of the node are), bound at those paths in ctr's root."""

    def __init__(self, runtime: Containerd, netns: str, directory: Path, shared: Path) -> None:
        self.runtime, self.netns = runtime, netns
        self.directory, self.shared = directory, shared
        self.fs = directory / "fs"
        self.bin_dir = self.fs / CNI_BIN.lstrip("/")
        self.conf_dir = self.fs / CNI_CONF.lstrip("/")
        self.run_dir = self.fs / RUN_ROMANA.lstrip("/")
        self.root = directory / "root"
        self.pods: dict[str, Pod] = {}
        for d in (self.bin_dir, self.conf_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._build_root()

    def _build_root(self) -> None:
        """ctr and the libraries its ELF header names; mount points for everything else."""
        ctr = Path(shutil.which("ctr") or "/usr/bin/ctr")
        (self.root / "usr/bin").mkdir(parents=True)
        shutil.copy2(ctr, self.root / "usr/bin/ctr")
        for library in _linked_libraries(ctr):
            target = self.root / library.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(library, target)
        shared = (str(self.shared), str(self.runtime.workdir))
        for d in (CNI_BIN, CNI_CONF, RUN_ROMANA, "/proc", "/var/lib/cni", "/tmp", *shared):
            (self.root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (self.root / "dev").mkdir(exist_ok=True)
        (self.root / "dev/null").touch()

    def argv(self, *ctr_args: str) -> list[str]:
        """``ctr ARGS`` run as this node's runtime: in its netns, chrooted into its root."""
        root = shlex.quote(str(self.root))
        binds = [
            (self.bin_dir, CNI_BIN),
            (self.conf_dir, CNI_CONF),
            # the conflist names the agent's socket at the node's path (as deployed)
            (self.run_dir, RUN_ROMANA),
            (self.shared, str(self.shared)),
            # ctr mounts image snapshots itself (to read the image's config): their
            # layers must be at containerd's paths.
            (self.runtime.workdir, str(self.runtime.workdir)),
            (Path("/dev/null"), "/dev/null"),
        ]
        script = ["set -e"]
        script += [
            f"mount --bind {shlex.quote(str(src))} {root}{shlex.quote(dst)}" for src, dst in binds
        ]
        script.append(f"mount -t proc proc {root}/proc")
        script.append(f'exec chroot {root} "$@"')
        ctr = self.runtime.ctr_argv(*ctr_args)
        ctr[0] = "/usr/bin/ctr"
        return [
            "ip", "netns", "exec", self.netns,
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", "\n".join(script), "runtime", *ctr,
        ]  # fmt: skip

    def in_root(
        self, *argv: str, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a program as the runtime would see it (chrooted), for checks."""
        cmd = self.argv()
        cmd = cmd[: cmd.index("runtime") + 1] + list(argv)
        return subprocess.run(
            cmd,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"PATH": os.environ["PATH"], **(env or {})},
        )

    def start_pod(self, image: str, pod_id: str, *cmd: str) -> Pod:
        """Start ``ctr run --rm --cni`` (it stays, as the pod's parent, until the pod exits)."""
        log = self.directory / f"pod-{pod_id}.log"
        fifo_dir = self.shared / "fifo"
        fifo_dir.mkdir(exist_ok=True)
        argv = self.argv("run", "--rm", "--cni", "--fifo-dir", str(fifo_dir), image, pod_id, *cmd)
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        pod = self.pods[pod_id] = Pod(pod_id, self, proc, log)
        return pod

    def wait_started(self, pod: Pod, timeout: float = 60) -> None:
        """Until the task runs (ctr starts it only after a successful CNI ADD); raises with
        ctr's output if ctr gave up (ADD failed)."""

        def started() -> bool:
            if pod.proc.poll() is not None:
                raise AssertionError(
                    f"ctr run {pod.id} exited {pod.proc.returncode}: {pod.output()}"
                )
            return self.runtime.tasks().get(pod.id) == "RUNNING"

        wait_until(started, timeout, what=f"pod {pod.id} to run", interval=0.05)

    def run_pod(self, image: str, pod_id: str) -> Pod:
        pod = self.start_pod(image, pod_id, BUSYBOX, "sleep", "100000")
        self.wait_started(pod)
        return pod

    def stop_pod(self, pod: Pod, timeout: float = 60) -> int:
        """Kill the pod's process; ctr then runs CNI DEL and deletes the container. Returns
        ctr's exit status (the task's; a CNI DEL failure is only logged by ctr)."""
        self.runtime.ctr("tasks", "kill", "--signal", "SIGKILL", pod.id, check=False)
        try:
            code = pod.proc.wait(timeout)
        finally:
            pod.removed = True
        return code

    def close(self) -> None:
        for pod in self.pods.values():
            if pod.proc.poll() is None:
                self.runtime.ctr("tasks", "kill", "--signal", "SIGKILL", pod.id, check=False)
                try:
                    pod.proc.wait(30)
                except subprocess.TimeoutExpired:
                    pod.proc.kill()
                    pod.proc.wait()


def plugin_processes(path: str) -> list[tuple[str, str]]:
    """(CNI_COMMAND, CNI_CONTAINERID) of every running process started as ``path``: the
    CNI calls a runtime has in flight (read from /proc, as root)."""
    calls = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0]
            if not argv0.startswith(path.encode() + b"/"):
                continue
            environ = dict(
                item.split(b"=", 1)
                for item in (entry / "environ").read_bytes().split(b"\0")
                if b"=" in item
            )
        except OSError:
            continue
        command, container = environ.get(b"CNI_COMMAND"), environ.get(b"CNI_CONTAINERID")
        if command and container:
            calls.append((command.decode(), container.decode()))
    return calls


def _linked_libraries(executable: Path) -> list[Path]:
    """The shared objects ``ldd`` resolves for an executable (with the dynamic loader)."""
    out = run("ldd", str(executable), check=False).stdout
    libs = []
    for line in out.splitlines():
        words = line.split()
        for word in words:
            if word.startswith("/"):
                libs.append(Path(word))
                break
    return libs


class Runtime:
    """A containerd and its nodes, closed together (nodes' pods first)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.shared = workdir / "shared"
        self.shared.mkdir(parents=True, exist_ok=True)
        # The socket in the shared directory: the chrooted ctr finds it at the same path.
        self.containerd = Containerd(workdir / "containerd", self.shared / "containerd.sock")
        self.nodes: list[RuntimeNode] = []

    def __enter__(self) -> Runtime:
        self.containerd.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def node(self, netns: str, name: str) -> RuntimeNode:
        node = RuntimeNode(self.containerd, netns, self.workdir / "nodes" / name, self.shared)
        self.nodes.append(node)
        return node

    def close(self) -> None:
        try:
            for node in self.nodes:
                node.close()
        finally:
            self.containerd.close()


# -- a small romana cluster whose nodes run pods through containerd ---------------------------
POD_NETWORK = "pods"


def racks_topology(cidr: str, racks: int, block_mask: int = 28) -> dict[str, Any]:
    """One group per rack, ``rack=rack-N`` assigns a host to it."""
    return {
        "networks": [{"name": POD_NETWORK, "cidr": cidr, "block_mask": block_mask}],
        "topologies": [
            {
                "networks": [POD_NETWORK],
                "map": [
                    {"name": f"rack-{r}", "assignment": {"rack": f"rack-{r}"}, "groups": []}
                    for r in range(1, racks + 1)
                ],
            }
        ],
    }


@dataclass
class Node:
    name: str
    ip: str
    netns: Netns
    runtime: RuntimeNode
    agent: subprocess.Popen[bytes] | None = None  # a plain-process agent (RuntimeCluster)
    installed: list[Path] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        """The node's /run/romana (the agent's sockets)."""
        return self.runtime.run_dir

    @property
    def cni_socket(self) -> Path:
        return self.run_dir / "cni.sock"


CONTROL_IP = "192.168.60.10"  # romanad's (and the test API server's) address in `ctl`
ROMANAD_PORT = 9600  # the romanad Service's port in deploy/


class RuntimeCluster:
    """romanad (in a control netns), nodes one per rack behind a router netns, each with
    its romana-agent and ``romana-cni install`` into its own CNI dirs.

    Layout::

        ctl:  romanad on unix:SHARED/romanad.sock (the test's client) and
              192.168.60.10:9600 (the nodes), token required, reads too (as deployed)
        fabric: ctl 192.168.60.1/24 ── ctl eth0 .10
                n1 192.168.61.1/24 ── node1 eth0 .10 (rack-1)  agent, ctr (chrooted)
                n2 192.168.62.1/24 ── node2 eth0 .10 (rack-2)  agent, ctr (chrooted)

    The router routes each rack's prefix to its one node (romanad's group CIDR). Here the
    agents are plain processes (the benchmarks use this); :class:`ImageCluster` runs them
    from the image as the DaemonSet does.
    """

    def __init__(
        self,
        lab: Lab,
        runtime: Runtime,
        cidr: str,
        racks: int = 2,
        agent_flags: dict[str, object] | None = None,
        start_agents: bool = True,
    ) -> None:
        self.lab, self.runtime, self.cidr = lab, runtime, cidr
        self.agent_flags = agent_flags or {}
        shared = runtime.shared
        topology = shared / "topology.json"
        topology.write_text(json.dumps(racks_topology(cidr, racks)))
        self.token = secrets.token_urlsafe(32)
        self.token_file = shared / "romanad-token"
        self.token_file.write_text(self.token)
        self.token_file.chmod(0o600)
        self.control = lab.netns("ctl")
        self.fabric = lab.netns("fab")
        lab.veth(self.control, "eth0", self.fabric, "ctl")
        self.control.ip("addr", "add", f"{CONTROL_IP}/24", "dev", "eth0")
        self.control.ip("route", "add", "default", "via", "192.168.60.1")
        self.fabric.ip("addr", "add", "192.168.60.1/24", "dev", "ctl")
        self.romanad = Daemon(
            shared / "romanad-data",
            *("--topology", str(topology)),
            *("--listen", f"{CONTROL_IP}:{ROMANAD_PORT}"),
            *("--token-file", str(self.token_file), "--auth-reads"),
            socket=shared / "romanad.sock",
            netns=self.control.name,
        )
        self.romanad.start()
        self.romanad_url = f"http://{CONTROL_IP}:{ROMANAD_PORT}"  # as the nodes reach it
        self.client = RomanaClient(self.romanad.url, token=self.token)
        self.nodes: dict[str, Node] = {}
        for rack in range(1, racks + 1):
            self._add_node(rack)
        if start_agents:
            for name in self.nodes:
                self.start_agent(name)

    def _add_node(self, rack: int) -> None:
        name, subnet = f"node{rack}", f"192.168.{60 + rack}"
        ns = self.lab.netns(f"n{rack}")
        self.lab.veth(ns, "eth0", self.fabric, f"n{rack}")
        ns.ip("addr", "add", f"{subnet}.10/24", "dev", "eth0")
        ns.ip("route", "add", "default", "via", f"{subnet}.1")
        self.fabric.ip("addr", "add", f"{subnet}.1/24", "dev", f"n{rack}")
        host = self.client.add_host(name, f"{subnet}.10", {"rack": f"rack-{rack}"})
        group_cidr = host["groups"][POD_NETWORK]["cidr"]
        self.fabric.ip("route", "add", group_cidr, "via", f"{subnet}.10")
        node = Node(name, f"{subnet}.10", ns, self.runtime.node(ns.name, name))
        self.nodes[name] = node

    def install(self, name: str) -> list[Path]:
        """``romana-cni install`` into the node's CNI dirs with the manifest's paths;
        returns the paths it wrote."""
        node = self.nodes[name]
        out = run(
            *romana_argv(
                "romana-cni",
                "install",
                host_root=node.runtime.fs,
                bin_dir=CNI_BIN,
                conf_dir=CNI_CONF,
                agent_socket=AGENT_SOCKET,
            )
        ).stdout
        node.installed = written(out, "installed ", Path("/"), Path("/"))
        return node.installed

    def uninstall(self, name: str) -> list[Path]:
        node = self.nodes[name]
        out = run(
            *romana_argv(
                "romana-cni",
                "uninstall",
                host_root=node.runtime.fs,
                bin_dir=CNI_BIN,
                conf_dir=CNI_CONF,
            )
        ).stdout
        return written(out, "removed ", Path("/"), Path("/"))

    def start_agent(self, name: str) -> None:
        node = self.nodes[name]
        node.cni_socket.unlink(missing_ok=True)
        node.agent = self.lab.agent(
            node.netns,
            name,
            self.romanad.url,
            log=self.runtime.shared / f"agent-{name}.log",
            token_file=self.token_file,
            cni_socket=node.cni_socket,
            listen=f"unix:{node.run_dir / 'agent.sock'}",
            **self.agent_flags,
        )
        wait_until(lambda: serving(node.cni_socket), 30, what=f"{name}'s agent CNI socket")

    def stop_agent(self, name: str) -> int:
        """SIGTERM by PID, as a kubelet stops a container; returns its exit status."""
        node = self.nodes[name]
        assert node.agent is not None
        code = self.lab.stop(node.agent, timeout=15)
        node.agent = None
        return code

    def group_cidr(self, name: str) -> str:
        return self.client.host(name)["groups"][POD_NETWORK]["cidr"]

    def address(self, pod: Pod) -> AddressJson | None:
        """romanad's allocation for a pod's eth0 (``NETWORK:CONTAINERID:IFNAME``), if any."""
        try:
            return self.client.address(f"{CONFLIST_NETWORK}:{pod.attachment}:eth0")
        except NotFound:
            return None

    def close(self) -> None:
        self.client.close()
        self.romanad.stop()


def written(out: str, prefix: str, root: Path, fs: Path) -> list[Path]:
    """The paths ``romana-cni install|uninstall`` printed (``installed PATH``), moved from
    the writer's ``root`` (``/host`` in the init container) to the node's ``fs``."""
    return [
        fs / Path(line[len(prefix) :]).relative_to(root)
        for line in out.splitlines()
        if line.startswith(prefix)
    ]


def serving(path: Path) -> bool:
    """Something accepts connections on the Unix socket ``path`` (a socket file left by a
    stopped agent does not count)."""
    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


class ImageCluster(RuntimeCluster):
    """The same cluster, each node's agent run from the image by podman exactly as the
    rendered DaemonSet says (tests/podspec.py): its install-cni init container, then the
    agent, uid 0, privileged, the node's netns as host network, host PID, the node's
    /run/romana, /opt/cni/bin, /etc/cni/net.d (``RuntimeNode.fs``) and /var/run/netns,
    the token Secret as a file, romanad's Service env naming 192.168.60.10:9600, and the
    test Kubernetes API server (``--kubernetes``) on that address too.

    Each agent pod has a name of its own (``romana-agent-NODE-N``): a new pod runs its init
    container first, as kubelet does; a container restart inside a pod does not."""

    DAEMONSET = "romana-agent"

    def __init__(
        self,
        lab: Lab,
        runtime: Runtime,
        cidr: str,
        podman: Podman,
        image: str,
        objects: list[dict[str, Any]],
        uninstall_objects: list[dict[str, Any]],
        racks: int = 2,
    ) -> None:
        self.podman, self.image = podman, image
        self.image_user = podman.image_config(image).get("User", "")
        self.uninstall_objects = uninstall_objects
        self.pods: dict[str, list[ContainerSpec]] = {}  # node -> its agent pod's containers
        self.images: dict[str, str] = {}  # node -> the image its agent pod runs
        self.generation = 0
        self.kube: KubeApiServer | None = None
        super().__init__(lab, runtime, cidr, racks, start_agents=False)
        try:
            kube_dir = runtime.workdir / "kube"
            kube_dir.mkdir()
            self.kube = KubeApiServer(kube_dir, also=(self.control.name, CONTROL_IP))
            api = ApiServer(CONTROL_IP, self.kube.server.port,
                            Path(self.kube.server.ca).read_bytes(), self.kube.TOKEN)  # fmt: skip
            self.spec = RenderedCluster(
                objects,
                runtime.workdir / "podspec",
                {"romanad": CONTROL_IP},
                {"romana-api-token": {"token": self.token.encode()}},
                api,
            )
            for name in self.nodes:
                self.run_agent_pod(name, image)
        except BaseException:
            self.close()
            raise

    def pod_node(self, name: str) -> PodNode:
        node = self.nodes[name]
        return PodNode(name, node.ip, node.runtime.fs, netns=node.netns.name)

    def resolve(self, name: str, image: str) -> list[ContainerSpec]:
        """The agent pod on node ``name`` with the DaemonSet's image set to ``image`` (as
        ``kubectl set image`` would), under a new pod name."""
        self.generation += 1
        objects = set_image(self.spec.objects, "DaemonSet", self.DAEMONSET, image)
        cluster = dataclasses.replace(self.spec, objects=objects)
        return resolve(cluster, "DaemonSet", self.DAEMONSET, self.pod_node(name),
                       f"{self.DAEMONSET}-{name}-{self.generation}", self.image_user)  # fmt: skip

    def run_agent_pod(self, name: str, image: str) -> None:
        """A new agent pod on the node: install-cni from ``image`` (to its end, exit 0),
        then the agent from ``image``; returns once it serves the CNI socket."""
        specs = self.resolve(name, image)
        inits = [s for s in specs if s.init]
        assert [s.name for s in inits] == ["install-cni"], [s.name for s in inits]
        self.pods[name], self.images[name] = specs, image
        self.podman.run(inits[0])
        fs = self.nodes[name].runtime.fs
        out = self.podman.outputs[inits[0].container_name]
        self.nodes[name].installed = written(out, "installed ", Path("/host"), fs)
        self.start_agent(name)

    def agent_spec(self, name: str) -> ContainerSpec:
        (main,) = [s for s in self.pods[name] if not s.init]
        return main

    def install(self, name: str) -> list[Path]:
        """The current agent pod's install-cni container, run again."""
        init = next(s for s in self.pods[name] if s.init)
        self.podman.run(init)
        out = self.podman.outputs[init.container_name]
        node = self.nodes[name]
        node.installed = written(out, "installed ", Path("/host"), node.runtime.fs)
        return node.installed

    def uninstall(self, name: str) -> list[Path]:
        """deploy/uninstall's DaemonSet on the node: its init containers in order (the CNI
        files, then the agent's kernel state); the files the first one removed."""
        cluster = dataclasses.replace(self.spec, objects=self.uninstall_objects)
        (daemonset,) = [o for o in self.uninstall_objects if o["kind"] == "DaemonSet"]
        specs = resolve(cluster, "DaemonSet", daemonset["metadata"]["name"],
                        self.pod_node(name), None, self.image_user)  # fmt: skip
        inits = [s for s in specs if s.init]
        for init in inits:
            self.podman.run(init)
        out = self.podman.outputs[inits[0].container_name]
        return written(out, "removed ", Path("/host"), self.nodes[name].runtime.fs)

    def start_agent(self, name: str) -> None:
        """The agent container of the node's current pod (a new container: kubelet's
        restart of a container, or the first start after the init container)."""
        main = self.agent_spec(name)
        self.podman.run(main)
        node = self.nodes[name]

        def up() -> bool:
            if not self.podman.running(main.container_name):
                raise AssertionError(f"{main.container_name} exited: "
                                     f"{self.podman.logs(main.container_name)}")  # fmt: skip
            return serving(node.cni_socket)

        wait_until(up, 60, what=f"{name}'s agent container to serve its CNI socket")

    def stop_agent(self, name: str) -> int:
        """kubelet's stop: SIGTERM, SIGKILL after terminationGracePeriodSeconds; then the
        container is removed. Returns its exit status."""
        main = self.agent_spec(name)
        code = self.podman.stop(main.container_name, main.stop_timeout)
        self.podman.remove(main.container_name)
        return code

    def agent_running(self, name: str) -> bool:
        return name in self.pods and self.podman.running(self.agent_spec(name).container_name)

    def agent_pid(self, name: str) -> int:
        return self.podman.pid(self.agent_spec(name).container_name)

    def close(self) -> None:
        try:
            for specs in self.pods.values():
                for spec in specs:
                    self.podman.remove(spec.container_name)
            if self.kube is not None:
                self.kube.close()
        finally:
            super().close()


def set_image(
    objects: list[dict[str, Any]], kind: str, name: str, image: str
) -> list[dict[str, Any]]:
    """A copy of the rendered objects with every container (init ones too) of ``kind/name``
    running ``image``: what ``kubectl set image KIND/NAME '*=IMAGE'`` changes."""
    out = copy.deepcopy(objects)
    (workload,) = [o for o in out if o["kind"] == kind and o["metadata"]["name"] == name]
    spec = workload["spec"]["template"]["spec"]
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        container["image"] = image
    return out
