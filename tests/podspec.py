"""A pod template of the rendered manifests (``kubectl kustomize deploy/``), resolved as a
kubelet on one node would resolve it, and turned into ``podman run`` arguments.

Nothing is copied by hand from ``deploy/``: the image, command and args (with kubelet's
``$(VAR)`` expansion), the environment (values, the downward API, secret and ConfigMap
keys, the service links kubelet injects), the user and groups, privileged, capabilities,
read-only root, no-new-privileges, seccomp, host network/PID/IPC, every volume and mount
with its propagation, and init containers in order all come from the rendered objects.

Any field this module does not understand raises :class:`Unsupported`, so a manifest
change can never be silently ignored: teach this module the field (or list it with the
reason it changes nothing on one node) before a test can run the changed manifest.

A :class:`Node` stands for one Kubernetes node: a network namespace (its host network),
its address, and a directory standing for its file system (hostPath volumes). Services
have no kube-proxy here, so each Service the pod may use is given the address that
reaches its endpoints directly; a Service whose port differs from its target port is
refused, since nothing would translate it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet", "Job", "Pod")
# The capabilities a CRI runtime (containerd, CRI-O) gives a container that asks for
# none: the defaults Kubernetes' `capabilities.add/drop` edit. podman's own default set
# is smaller (no NET_RAW, MKNOD, AUDIT_WRITE), so it is always replaced by this one.
CRI_DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW",
                    "SETGID", "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE",
                    "SYS_CHROOT", "KILL", "AUDIT_WRITE")  # fmt: skip
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# Fields that decide where or whether a pod runs, or that kubelet acts on from outside
# the container; none changes how the container's processes run on their node.
POD_FIELDS_WITHOUT_EFFECT = {
    "tolerations": "scheduling",
    "affinity": "scheduling",
    "nodeSelector": "scheduling",
    "priorityClassName": "scheduling and eviction order",
    "topologySpreadConstraints": "scheduling",
    "imagePullSecrets": "the image is loaded locally, never pulled",
    "dnsPolicy": "resolv.conf only; the components use service env addresses, no DNS",
    "restartPolicy": "kubelet restarts; tests start and stop containers themselves",
}
CONTAINER_FIELDS_WITHOUT_EFFECT = {
    "resources": "requests schedule; the memory limit is applied (see limits)",
    "livenessProbe": "kept in ContainerSpec.probes: tests call it as kubelet would",
    "readinessProbe": "kept in ContainerSpec.probes: tests call it as kubelet would",
    "startupProbe": "kept in ContainerSpec.probes: tests call it as kubelet would",
    "imagePullPolicy": "the image is loaded locally, never pulled (--pull never)",
    "terminationMessagePath": "kubelet reads it after exit; nothing runs differently",
    "terminationMessagePolicy": "kubelet reads it after exit; nothing runs differently",
}


class Unsupported(Exception):
    """A manifest field this module does not understand (so cannot reproduce)."""


class Fields:
    """Reads a mapping key by key; :meth:`done` raises for every key nobody read."""

    def __init__(self, obj: Mapping[str, Any] | None, where: str) -> None:
        self.obj: Mapping[str, Any] = obj or {}
        self.where = where
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self.obj.get(key, default)

    def without_effect(self, reasons: Mapping[str, str]) -> None:
        self.read.update(k for k in reasons if k in self.obj)

    def done(self) -> None:
        unread = sorted(set(self.obj) - self.read)
        if unread:
            raise Unsupported(
                f"{self.where}: {', '.join(unread)} not understood by tests/podspec.py; "
                "teach it these fields before running this manifest"
            )


@dataclass
class Node:
    """One node: its network namespace ``netns`` (the pod's host network when
    hostNetwork), its address (status.hostIP) and a directory standing for its file
    system. Paths under ``shared`` are the machine's own (network namespaces are
    machine-wide, so the node's /var/run/netns is this machine's)."""

    name: str
    ip: str
    root: Path
    netns: str = ""
    shared: tuple[str, ...] = ("/var/run/netns", "/run/netns")

    def host_path(self, path: str) -> Path:
        if any(path == s or path.startswith(s + "/") for s in self.shared):
            return Path(path)
        return self.root / path.lstrip("/")

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns or self.name}"


@dataclass
class ApiServer:
    """The Kubernetes API as pods see it: the `kubernetes` Service's address and port,
    the cluster CA and the token of every service account."""

    host: str
    port: int
    ca: bytes
    token: str


@dataclass
class RenderedCluster:
    """The cluster the manifests describe: the rendered objects, Secrets made at run time
    (e.g. by the token Job) as raw bytes, the address standing for each Service, the API
    server, and where volume data lives (a PersistentVolumeClaim's directory outlives its
    pods, as on a real cluster)."""

    objects: list[dict[str, Any]]
    storage: Path
    services: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)
    api: ApiServer | None = None

    def find(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        found = [
            o
            for o in self.objects
            if o["kind"] == kind
            and o["metadata"]["name"] == name
            and (namespace is None or o["metadata"].get("namespace") == namespace)
        ]
        if len(found) != 1:
            raise LookupError(f"{len(found)} {kind} named {name} in the rendered manifests")
        return found[0]

    def maybe(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            return self.find(kind, name, namespace)
        except LookupError:
            return None


@dataclass
class Mount:
    source: str  # a path on this machine ("" for a tmpfs)
    target: str
    read_only: bool = False
    propagation: str = ""  # "", "rslave" (HostToContainer), "rshared" (Bidirectional)
    tmpfs: bool = False


@dataclass
class ContainerSpec:
    """One container as the runtime receives it from kubelet (runtime-neutral)."""

    pod: str
    name: str
    init: bool
    image: str
    command: list[str] | None  # replaces the image's entrypoint
    args: list[str] | None  # replaces the image's cmd
    env: dict[str, str]
    user: str  # "UID", "UID:GID" or "" (the image's)
    groups: list[int]
    privileged: bool
    capabilities: list[str] | None  # None: privileged (all of them)
    no_new_privileges: bool
    read_only_root: bool
    seccomp_unconfined: bool
    netns: str  # a path: the pod's network namespace
    host_pid: bool
    host_ipc: bool
    hostname: str
    workdir: str
    mounts: list[Mount]
    memory_limit: int | None
    stop_timeout: int
    probes: dict[str, dict[str, Any]]
    pre_stop: list[str] | None

    @property
    def container_name(self) -> str:
        return f"{self.pod}-{self.name}"

    def podman_args(self) -> list[str]:
        """Arguments for ``podman run`` (after ``run``), image and arguments last."""
        out = ["--name", self.container_name, "--pull", "never", "--network", f"ns:{self.netns}"]
        out += ["--hostname", self.hostname]
        if self.host_pid:
            out += ["--pid", "host"]
        if self.host_ipc:
            out += ["--ipc", "host"]
        if self.user:
            out += ["--user", self.user]
        for group in self.groups:
            out += ["--group-add", str(group)]
        if self.privileged:
            out.append("--privileged")
        else:
            out += ["--cap-drop", "all"]
            for cap in self.capabilities or []:
                out += ["--cap-add", cap]
        if self.no_new_privileges:
            out += ["--security-opt", "no-new-privileges"]
        if self.seccomp_unconfined and not self.privileged:
            out += ["--security-opt", "seccomp=unconfined"]
        if self.read_only_root:  # podman would add tmpfs on /tmp, /run: kubelet does not
            out += ["--read-only", "--read-only-tmpfs=false"]
        for key, value in self.env.items():
            out += ["--env", f"{key}={value}"]
        for m in self.mounts:
            if m.tmpfs:
                out += ["--mount", f"type=tmpfs,destination={m.target}"]
                continue
            options = ["ro" if m.read_only else "rw"]
            if m.propagation:
                options.append(m.propagation)
            out += ["--volume", f"{m.source}:{m.target}:{','.join(options)}"]
        if self.memory_limit is not None:
            out += ["--memory", str(self.memory_limit)]
        if self.workdir:
            out += ["--workdir", self.workdir]
        out += ["--stop-timeout", str(self.stop_timeout)]
        if self.command is not None:
            out += ["--entrypoint", json.dumps(self.command)]
        out.append(self.image)
        out += self.args or []
        return out


def render(kustomization: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR``'s objects."""
    import yaml

    done = subprocess.run(
        ["kubectl", "kustomize", str(kustomization)], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {kustomization}: {done.stderr}")
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def expand(text: str, values: Mapping[str, str]) -> str:
    """kubelet's ``$(VAR)`` expansion: ``$$`` is ``$``; an unknown ``$(VAR)`` stays."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(values[name] if name in values else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def quantity(text: str | int) -> int:
    """A Kubernetes memory quantity in bytes (``512Mi``, ``1G``, ``1000``)."""
    if isinstance(text, int):
        return text
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6,
                "G": 10**9, "T": 10**12}  # fmt: skip
    for suffix, factor in suffixes.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


class PodResolver:
    """Resolves one workload's pod on one node into :class:`ContainerSpec` s."""

    def __init__(
        self,
        cluster: RenderedCluster,
        kind: str,
        name: str,
        node: Node,
        pod_name: str | None = None,
        image_user: str = "",
    ) -> None:
        if kind not in WORKLOADS:
            raise Unsupported(f"{kind}: not a workload kind tests/podspec.py runs")
        self.cluster, self.node = cluster, node
        self.workload = cluster.find(kind, name)
        self.namespace = self.workload["metadata"].get("namespace", "default")
        self.pod_name = pod_name or f"{name}-{node.name}"
        self.image_user = image_user
        self.where = f"{kind}/{name}"
        if kind == "Pod":
            self.template: dict[str, Any] = self.workload
            self.claim_templates: list[dict[str, Any]] = []
        else:
            self.template = self._workload_spec(kind)
        self.pod_dir = cluster.storage / "pods" / self.pod_name

    def _workload_spec(self, kind: str) -> dict[str, Any]:
        spec = Fields(self.workload["spec"], f"{self.where}.spec")
        # how many pods, which and when: not how each one runs
        for key in ("replicas", "selector", "strategy", "updateStrategy", "minReadySeconds",
                    "revisionHistoryLimit", "progressDeadlineSeconds", "backoffLimit",
                    "completions", "parallelism", "ttlSecondsAfterFinished",
                    "activeDeadlineSeconds", "serviceName", "podManagementPolicy"):  # fmt: skip
            spec.get(key)
        self.claim_templates = spec.get("volumeClaimTemplates") or []
        template = spec.get("template")
        spec.done()
        return template  # type: ignore[no-any-return]

    # -- the pod ----------------------------------------------------------------------------
    def containers(self) -> list[ContainerSpec]:
        """Init containers first, in order (each must end with 0 before the next), then
        the containers."""
        meta = Fields(self.template.get("metadata"), f"{self.where}.template.metadata")
        self.labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        if annotations:  # some annotations change the runtime (apparmor, seccomp, ...)
            raise Unsupported(f"{self.where}: pod annotations {sorted(annotations)}")
        meta.done()
        spec = Fields(self.template.get("spec"), f"{self.where}.template.spec")
        spec.without_effect(POD_FIELDS_WITHOUT_EFFECT)
        self.host_network = bool(spec.get("hostNetwork", False))
        if not self.host_network:
            raise Unsupported(f"{self.where}: a pod network (only hostNetwork pods run here)")
        self.host_pid = bool(spec.get("hostPID", False))
        self.host_ipc = bool(spec.get("hostIPC", False))
        if spec.get("shareProcessNamespace"):
            raise Unsupported(f"{self.where}: shareProcessNamespace")
        self.service_account = spec.get("serviceAccountName") or "default"
        self.automount = spec.get("automountServiceAccountToken")
        self.service_links = spec.get("enableServiceLinks", True)
        self.grace = int(spec.get("terminationGracePeriodSeconds", 30))
        self.pod_security = self._pod_security(spec.get("securityContext"))
        self.volumes = {v["name"]: v for v in spec.get("volumes") or []}
        self.volumes.update(self._service_account_volume())
        inits = spec.get("initContainers") or []
        mains = spec.get("containers") or []
        spec.done()
        self.prepared: dict[str, Path] = {}
        out = [self._container(c, init=True) for c in inits]
        return out + [self._container(c, init=False) for c in mains]

    def _pod_security(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        sc = Fields(given, f"{self.where}.securityContext")
        out = {
            "runAsUser": sc.get("runAsUser"),
            "runAsGroup": sc.get("runAsGroup"),
            "runAsNonRoot": sc.get("runAsNonRoot"),
            "fsGroup": sc.get("fsGroup"),
            "supplementalGroups": sc.get("supplementalGroups") or [],
            "seccompProfile": sc.get("seccompProfile"),
        }
        if sc.get("fsGroupChangePolicy") not in (None, "Always", "OnRootMismatch"):
            raise Unsupported(f"{self.where}: fsGroupChangePolicy")
        sc.done()
        return out

    def _service_account_volume(self) -> dict[str, dict[str, Any]]:
        """kubelet's projected token volume, unless the pod or its account opts out."""
        automount = self.automount
        if automount is None:
            account = self.cluster.maybe("ServiceAccount", self.service_account, self.namespace)
            automount = (account or {}).get("automountServiceAccountToken", True)
        if not automount:
            return {}
        return {"kube-api-access": {"name": "kube-api-access", "kube-api-access": True}}

    # -- one container ----------------------------------------------------------------------
    def _container(self, given: Mapping[str, Any], init: bool) -> ContainerSpec:
        name = given.get("name", "?")
        where = f"{self.where} {'initContainer' if init else 'container'} {name}"
        c = Fields(given, where)
        c.without_effect(CONTAINER_FIELDS_WITHOUT_EFFECT)
        c.get("name")
        if c.get("stdin") or c.get("tty"):
            raise Unsupported(f"{where}: stdin/tty")
        if c.get("restartPolicy") is not None:
            raise Unsupported(f"{where}: restartPolicy (a sidecar init container)")
        lifecycle = Fields(c.get("lifecycle"), f"{where}.lifecycle")
        pre_stop = lifecycle.get("preStop")
        lifecycle.done()
        stop_command = None
        if pre_stop is not None:
            hook = Fields(pre_stop, f"{where}.lifecycle.preStop")
            stop_command = list(Fields(hook.get("exec"), f"{where} preStop.exec").obj["command"])
            hook.done()
        for port in c.get("ports") or []:
            if "hostPort" in port and port["hostPort"] != port["containerPort"]:
                raise Unsupported(f"{where}: a hostPort other than its containerPort")
        env = self._env(c.get("env") or [], c.get("envFrom") or [], where)
        command = c.get("command")
        args = c.get("args")
        security = self._security(c.get("securityContext"), where)
        limits = (given.get("resources") or {}).get("limits") or {}
        memory = quantity(limits["memory"]) if "memory" in limits else None
        privileged = security["privileged"]
        mounts = [self._mount(m, where, privileged) for m in c.get("volumeMounts") or []]
        if "kube-api-access" in self.volumes:
            token = {"name": "kube-api-access", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True}
            mounts.append(self._mount(token, where, False))
        probes = ("livenessProbe", "readinessProbe", "startupProbe")
        spec = ContainerSpec(
            pod=self.pod_name,
            name=name,
            init=init,
            image=c.get("image"),
            command=[expand(a, env) for a in command] if command is not None else None,
            args=[expand(a, env) for a in args] if args is not None else None,
            env=env,
            user=security["user"],
            groups=security["groups"],
            privileged=security["privileged"],
            capabilities=security["capabilities"],
            no_new_privileges=security["no_new_privileges"],
            read_only_root=security["read_only_root"],
            seccomp_unconfined=security["seccomp_unconfined"],
            netns=self.node.netns_path,
            host_pid=self.host_pid,
            host_ipc=self.host_ipc,
            hostname=self.node.name if self.host_network else self.pod_name,
            workdir=c.get("workingDir") or "",
            mounts=mounts,
            memory_limit=memory,
            stop_timeout=self.grace,
            probes={k: given[k] for k in probes if k in given},
            pre_stop=stop_command,
        )
        c.done()
        return spec

    def _security(self, given: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
        sc = Fields(given, f"{where}.securityContext")
        pod = self.pod_security
        privileged = bool(sc.get("privileged", False))
        uid = sc.get("runAsUser", pod["runAsUser"])
        gid = sc.get("runAsGroup", pod["runAsGroup"])
        non_root = sc.get("runAsNonRoot", pod["runAsNonRoot"])
        if uid is None and gid is not None:
            if not self.image_user:
                raise Unsupported(f"{where}: runAsGroup without runAsUser needs image_user")
            uid = self.image_user.split(":")[0]
        user = f"{uid}:{gid}" if gid is not None else "" if uid is None else str(uid)
        effective = str(uid if uid is not None else self.image_user.split(":")[0])
        if non_root:  # kubelet refuses to start the container, as here
            if not effective.isdigit():
                raise ValueError(f"{where}: runAsNonRoot with a non-numeric user {effective!r}")
            if int(effective) == 0:
                raise ValueError(f"{where}: runAsNonRoot, but the user is root")
        caps = Fields(sc.get("capabilities"), f"{where}.capabilities")
        add, drop = caps.get("add") or [], caps.get("drop") or []
        caps.done()
        # containerd's order: ALL first (add, then drop), then single capabilities
        held = set(CRI_DEFAULT_CAPS)
        if "ALL" in add:
            held = {"ALL"}
        if "ALL" in drop:
            held = set()
        held |= {a for a in add if a != "ALL"}
        held -= set(drop)
        if "ALL" in held:
            raise Unsupported(f"{where}: capabilities add ALL without privileged")
        escalation = sc.get("allowPrivilegeEscalation")
        if escalation is False and privileged:
            raise ValueError(f"{where}: allowPrivilegeEscalation false with privileged")
        seccomp = sc.get("seccompProfile", pod["seccompProfile"]) or {"type": "Unconfined"}
        if seccomp.get("type") not in ("RuntimeDefault", "Unconfined") or len(seccomp) != 1:
            raise Unsupported(f"{where}: seccompProfile {seccomp}")
        for unknown in ("procMount", "seLinuxOptions", "windowsOptions", "appArmorProfile"):
            if sc.get(unknown) is not None:
                raise Unsupported(f"{where}: securityContext.{unknown}")
        read_only = bool(sc.get("readOnlyRootFilesystem", False))
        sc.done()
        groups = list(pod["supplementalGroups"])
        if pod["fsGroup"] is not None:
            groups.append(int(pod["fsGroup"]))
        return {
            "user": user,
            "groups": groups,
            "privileged": privileged,
            "capabilities": None if privileged else sorted(held),
            "no_new_privileges": escalation is False,
            "read_only_root": read_only,
            "seccomp_unconfined": seccomp["type"] == "Unconfined",
        }

    # -- environment ------------------------------------------------------------------------
    def _service_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        services = []
        if self.service_links:
            services = [
                o
                for o in self.cluster.objects
                if o["kind"] == "Service"
                and o["metadata"].get("namespace", "default") == self.namespace
            ]
        for svc in services:
            name = svc["metadata"]["name"]
            if svc["spec"].get("clusterIP") == "None":
                continue
            if name not in self.cluster.services:
                raise LookupError(
                    f"Service {name}: give RenderedCluster.services the address for it"
                )
            ports = svc["spec"]["ports"]
            for port in ports:
                if port.get("targetPort", port["port"]) != port["port"]:
                    raise Unsupported(f"Service {name}: targetPort differs (no kube-proxy here)")
            env.update(service_links(name, self.cluster.services[name], ports))
        if self.cluster.api is not None:  # kubelet always adds the master service's
            api = self.cluster.api
            env.update(service_links("kubernetes", api.host,
                                     [{"name": "https", "port": api.port}]))  # fmt: skip
        return env

    def _field(self, path: str, where: str) -> str:
        values: dict[str, str] = {
            "metadata.name": self.pod_name,
            "metadata.namespace": self.namespace,
            "spec.nodeName": self.node.name,
            "spec.serviceAccountName": self.service_account,
            "status.hostIP": self.node.ip,
            "status.hostIPs": self.node.ip,
            "status.podIP": self.node.ip,  # hostNetwork: the pod's address is the node's
            "status.podIPs": self.node.ip,
        }
        if path.startswith("metadata.labels['") and path.endswith("']"):
            return str(self.labels.get(path[17:-2], ""))
        if path not in values:
            raise Unsupported(f"{where}: fieldRef {path}")
        return values[path]

    def _env(self, entries: Sequence[Any], sources: Sequence[Any], where: str) -> dict[str, str]:
        env = self._service_env()
        for source in sources:
            s = Fields(source, f"{where}.envFrom")
            prefix = s.get("prefix") or ""
            if (ref := s.get("configMapRef")) is not None:
                data = self._config_map(ref["name"], ref.get("optional", False))
            elif (ref := s.get("secretRef")) is not None:
                secret = self._secret(ref["name"], ref.get("optional", False))
                data = {k: v.decode() for k, v in secret.items()}
            s.done()
            env.update({prefix + k: v for k, v in data.items()})
        for entry in entries:
            e = Fields(entry, f"{where}.env")
            name = e.get("name")
            if (value := e.get("value")) is not None:
                env[name] = expand(value, env)
            elif (source := e.get("valueFrom")) is not None:
                env[name] = self._value_from(source, f"{where}.env.{name}")
            else:
                env[name] = ""
            e.done()
        return env

    def _value_from(self, source: Mapping[str, Any], where: str) -> str:
        s = Fields(source, where)
        if (ref := s.get("fieldRef")) is not None:
            value = self._field(ref["fieldPath"], where)
        elif (ref := s.get("secretKeyRef")) is not None:
            value = self._secret(ref["name"], ref.get("optional", False))[ref["key"]].decode()
        elif (ref := s.get("configMapKeyRef")) is not None:
            value = self._config_map(ref["name"], ref.get("optional", False))[ref["key"]]
        else:
            value = ""
        s.done()
        return value

    def _config_map(self, name: str, optional: bool) -> dict[str, str]:
        obj = self.cluster.maybe("ConfigMap", name, self.namespace)
        if obj is None:
            if optional:
                return {}
            raise LookupError(f"ConfigMap {name} is not in the rendered manifests")
        data = dict(obj.get("data") or {})
        for key, value in (obj.get("binaryData") or {}).items():
            data[key] = base64.b64decode(value).decode("latin-1")
        return data

    def _secret(self, name: str, optional: bool) -> dict[str, bytes]:
        if name in self.cluster.secrets:
            return self.cluster.secrets[name]
        obj = self.cluster.maybe("Secret", name, self.namespace)
        if obj is not None:
            out = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
            out.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
            return out
        if optional:
            return {}
        raise LookupError(
            f"Secret {name}: give RenderedCluster.secrets its data (made at run time)"
        )

    # -- volumes ----------------------------------------------------------------------------
    def _mount(self, given: Mapping[str, Any], where: str, privileged: bool) -> Mount:
        m = Fields(given, f"{where}.volumeMounts")
        name = m.get("name")
        source = self._volume(name, where)
        if (sub := m.get("subPath")) is not None:
            source = source / sub
        if m.get("subPathExpr") is not None:
            raise Unsupported(f"{where}: subPathExpr")
        propagation = {None: "", "None": "", "HostToContainer": "rslave",
                       "Bidirectional": "rshared"}[m.get("mountPropagation")]  # fmt: skip
        if propagation == "rshared" and not privileged:
            raise ValueError(f"{where}: Bidirectional propagation needs a privileged container")
        volume = self.volumes[name]
        tmpfs = (volume.get("emptyDir") or {}).get("medium") == "Memory"
        mount = Mount(str(source), m.get("mountPath"), bool(m.get("readOnly", False)),
                      propagation, tmpfs)  # fmt: skip
        m.done()
        return mount

    def _volume(self, name: str, where: str) -> Path:
        """The directory standing for volume ``name`` (made once per pod)."""
        if name in self.prepared:
            return self.prepared[name]
        if name not in self.volumes:
            raise LookupError(f"{where}: no volume {name}")
        v = Fields(self.volumes[name], f"{self.where} volume {name}")
        v.get("name")
        fs_group = self.pod_security["fsGroup"]
        if (host := v.get("hostPath")) is not None:
            path = self._host_path(host, name)
            fs_group = None  # kubelet never changes a hostPath's ownership
        elif (pvc := v.get("persistentVolumeClaim")) is not None:
            claim = pvc["claimName"]
            if self.cluster.maybe("PersistentVolumeClaim", claim, self.namespace) is None:
                raise LookupError(f"PersistentVolumeClaim {claim} is not rendered")
            path = self.cluster.storage / "claims" / self.namespace / claim
            path.mkdir(parents=True, exist_ok=True)
        elif (empty := v.get("emptyDir")) is not None:
            if set(empty) - {"medium"}:
                raise Unsupported(f"{self.where} volume {name}: emptyDir {sorted(empty)}")
            path = self.pod_dir / "empty" / name
            path.mkdir(parents=True, exist_ok=True)
        elif (secret := v.get("secret")) is not None:
            files = self._secret(secret["secretName"], secret.get("optional", False))
            path = self._files(name, files, secret, readonly=True)
        elif (config := v.get("configMap")) is not None:
            data = self._config_map(config["name"], config.get("optional", False))
            path = self._files(name, {k: s.encode() for k, s in data.items()}, config, True)
        elif v.get("kube-api-access"):
            if self.cluster.api is None:
                raise LookupError(f"{self.where}: mounts a service account token: give an api")
            api = self.cluster.api
            files = {"token": api.token.encode(), "ca.crt": api.ca,
                     "namespace": self.namespace.encode()}  # fmt: skip
            path = self._files(name, files, {}, readonly=True)
        else:
            raise Unsupported(f"{self.where} volume {name}: {sorted(self.volumes[name])}")
        v.done()
        if fs_group is not None:
            own(path, int(fs_group), readonly=bool(v.obj.get("secret") or v.obj.get("configMap")))
        self.prepared[name] = path
        return path

    def _host_path(self, host: Mapping[str, Any], name: str) -> Path:
        h = Fields(host, f"{self.where} volume {name}.hostPath")
        path = self.node.host_path(h.get("path"))
        kind = h.get("type") or ""
        h.done()
        if kind == "DirectoryOrCreate":
            path.mkdir(parents=True, exist_ok=True, mode=0o755)
        elif kind == "FileOrCreate":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o644)
        elif kind == "Directory" and not path.is_dir():
            raise FileNotFoundError(f"hostPath {path} (type Directory) does not exist")
        elif kind in ("File", "Socket", "CharDevice", "BlockDevice") and not path.exists():
            raise FileNotFoundError(f"hostPath {path} (type {kind}) does not exist")
        elif kind not in ("", "DirectoryOrCreate", "FileOrCreate", "Directory", "File",
                          "Socket", "CharDevice", "BlockDevice"):  # fmt: skip
            raise Unsupported(f"hostPath type {kind}")
        return path

    def _files(self, name: str, data: Mapping[str, bytes], source: Mapping[str, Any],
               readonly: bool) -> Path:  # fmt: skip
        """A directory of ``data``'s keys as files, as kubelet writes a secret or a
        ConfigMap volume (``items`` pick and rename keys; ``defaultMode`` 0644)."""
        s = Fields(source, f"{self.where} volume {name}")
        s.get("secretName"), s.get("name"), s.get("optional")
        mode = int(s.get("defaultMode", 0o644))
        items = s.get("items")
        s.done()
        path = self.pod_dir / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        wanted = items or [{"key": k, "path": k} for k in data]
        for item in wanted:
            target = path / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data[item["key"]])
            target.chmod(int(item.get("mode", mode)))
        return path


def service_links(name: str, host: str, ports: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The variables kubelet writes for a Service (docker links' format)."""
    prefix = name.upper().replace("-", "_")
    first = ports[0]
    env = {
        f"{prefix}_SERVICE_HOST": host,
        f"{prefix}_SERVICE_PORT": str(first["port"]),
        f"{prefix}_PORT": f"{first.get('protocol', 'TCP').lower()}://{host}:{first['port']}",
    }
    for port in ports:
        proto = port.get("protocol", "TCP")
        if port.get("name"):
            env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(
                port["port"]
            )
        base = f"{prefix}_PORT_{port['port']}_{proto}"
        env[base] = f"{proto.lower()}://{host}:{port['port']}"
        env[f"{base}_PROTO"] = proto.lower()
        env[f"{base}_PORT"] = str(port["port"])
        env[f"{base}_ADDR"] = host
    return env


def own(path: Path, group: int, readonly: bool) -> None:
    """kubelet's fsGroup ownership: group ``group``, g+rw (g+r read-only), setgid dirs."""
    mask = 0o440 if readonly else 0o660
    for top, _dirs, files in os.walk(path):
        for entry in [top, *(os.path.join(top, f) for f in files)]:
            st = os.lstat(entry)
            os.lchown(entry, -1, group)
            extra = mask | (0o2110 if os.path.isdir(entry) else 0)
            os.chmod(entry, (st.st_mode & 0o7777) | extra)


def resolve(
    cluster: RenderedCluster,
    kind: str,
    name: str,
    node: Node,
    pod_name: str | None = None,
    image_user: str = "",
) -> list[ContainerSpec]:
    """Every container of ``kind/name``'s pod on ``node``: init containers first."""
    return PodResolver(cluster, kind, name, node, pod_name, image_user).containers()
