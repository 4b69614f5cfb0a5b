"""One CNI invocation, validated: the ``CNI_*`` environment and the network configuration.

Everything the runtime can get wrong is caught here, before anything is allocated, and
reported with the spec's code: 1 for a CNI version we do not speak, 4 for a bad
environment, 6 for stdin that is not JSON, 7 for a bad field. Unknown fields are ignored,
because runtimes add their own (``runtimeConfig``, ``capabilities``, ``args``, ...).

Names. The address an attachment gets in romanad is named ``NETWORK:CONTAINERID:IFNAME``:
the spec's primary key ``(network name, CNI_CONTAINERID, CNI_IFNAME)``, joined by ``:``,
which none of the three may contain. Keeping the network in the name means a ``GC`` of one
network can never release another network's addresses on the same host. The host side of
the pod's veth is named from a hash of the same key, so ``DEL`` finds it without state.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from romana import names
from romana.cni.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    CniError,
)
from romana.wire import CNI_VERSIONS

SUPPORTED_VERSIONS = CNI_VERSIONS
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
GATEWAY = "169.254.1.1"  # link-local next hop of every pod; the host side answers its ARP
DEFAULT_SEGMENT_LABEL = "romana.io/segment"
DEFAULT_MTU = 1500
VETH_PREFIX = "rmn"
MAX_NAME = 253  # romanad's limit on address names
MAX_NETWORK_NAME = 63
# Fields the original plugin took from the network configuration; now the agent's own.
AGENT_SETTINGS = {
    "romanad_url": "--url",
    "token_file": "--token-file",
    "log_file": "--cni-request-log",
    "host": "--host",
}
DEFAULT_ROUTES: tuple[dict[str, str], ...] = ({"dst": "0.0.0.0/0"},)  # IPAM mode
# How long the plugin waits for an agent that is away (restarting, being upgraded); the
# plugin's own copies are in shim.py and plugin.c.
AGENT_WAIT_SECONDS, MAX_AGENT_WAIT_SECONDS = 60, 600

Mode = Literal["full", "ipam"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")  # network names and container IDs
_BAD_IFNAME = re.compile(r"[/:\s]")


@dataclass(frozen=True, slots=True)
class NetConf:
    """The network configuration fields Romana reads (see docs/cni.md for each)."""

    cni_version: str
    network: str
    segment_label: str = DEFAULT_SEGMENT_LABEL
    mtu: int = DEFAULT_MTU
    use_policy: bool = False
    host_route_dev: str | None = None  # IPAM mode: route the pod's /32 to this device
    routes: tuple[dict[str, str], ...] = DEFAULT_ROUTES  # IPAM mode: the result's routes
    prev_result: dict[str, Any] | None = None
    valid_attachments: frozenset[tuple[str, str]] | None = None  # GC only
    # The pod's labels (``args.cni.labels``, the CNI conventions' form) and named container
    # ports (``args.romana.ports``), for network policies.
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[tuple[str, int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Invocation:
    mode: Mode
    command: str
    conf: NetConf
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = field(default_factory=dict)

    @property
    def address_name(self) -> str:
        return address_name(self.conf.network, self.container_id, self.ifname)

    @property
    def host_ifname(self) -> str:
        return host_ifname(self.address_name)

    @property
    def tenant(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod(self) -> dict[str, str] | None:
        """The Kubernetes pod this attachment is for, when the runtime names it: romanad
        stores it with the address, so the listener labels this pod's address only."""
        namespace, name = self.args.get("K8S_POD_NAMESPACE"), self.args.get("K8S_POD_NAME")
        if not namespace or not name:
            return None
        return {"namespace": namespace, "name": name, "uid": self.args.get("K8S_POD_UID", "")}


def address_name(network: str, container_id: str, ifname: str) -> str:
    return f"{network}:{container_id}:{ifname}"


def split_address_name(name: str) -> tuple[str, str, str] | None:
    """``(network, container_id, ifname)`` of a name the plugin made, else None."""
    parts = name.split(":")
    if len(parts) != 3 or not all(parts):
        return None
    network, container_id, ifname = parts
    if not (_NAME.match(network) and _NAME.match(container_id)) or not valid_ifname(ifname):
        return None
    return network, container_id, ifname


def host_ifname(name: str) -> str:
    """The host end of an attachment's veth: ``rmn`` + 11 hex digits (14 of 15 chars)."""
    return VETH_PREFIX + hashlib.sha256(name.encode()).hexdigest()[:11]


def valid_ifname(name: str) -> bool:
    return 0 < len(name) < 16 and name not in {".", ".."} and not _BAD_IFNAME.search(name)


def parse_args(text: str) -> dict[str, str]:
    """``CNI_ARGS``: ``K=V;K=V``. Items without ``=`` carry nothing and are skipped."""
    pairs = (item.partition("=") for item in text.split(";"))
    return {key: value for key, sep, value in pairs if sep and key}


def parse(mode: Mode, env: Mapping[str, str], stdin: bytes) -> Invocation:
    """Validate one invocation; raises CniError with the spec's code."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(
            INVALID_ENVIRONMENT,
            f"unknown CNI_COMMAND {command!r}",
            f"expected one of {', '.join(COMMANDS)}",
        )
    document = _decode(stdin)
    conf = _netconf(mode, command, document)
    if command in {"STATUS", "GC", "VERSION"}:
        return Invocation(mode, command, conf)
    container_id = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    netns = env.get("CNI_NETNS", "")
    if not _NAME.match(container_id):
        raise CniError(
            INVALID_ENVIRONMENT,
            f"invalid CNI_CONTAINERID {container_id!r}",
            "must start with a letter or digit, then letters, digits, _ . -",
        )
    if not valid_ifname(ifname):
        raise CniError(
            INVALID_ENVIRONMENT,
            f"invalid CNI_IFNAME {ifname!r}",
            "1-15 characters, no '/', ':' or whitespace, not '.' or '..'",
        )
    if command in {"ADD", "CHECK"} and not netns:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS is required for {command}")
    invocation = Invocation(
        mode, command, conf, container_id, netns, ifname, parse_args(env.get("CNI_ARGS", ""))
    )
    if len(invocation.address_name) <= MAX_NAME and (
        reason := names.ADDRESS.problem(invocation.address_name)
    ):
        raise CniError(
            INVALID_ENVIRONMENT,
            f"CNI_CONTAINERID {container_id!r} and CNI_IFNAME {ifname!r} make no valid "
            "address name",
            reason,
        )
    if len(invocation.address_name) > MAX_NAME:
        raise CniError(
            INVALID_ENVIRONMENT,
            f"CNI_CONTAINERID is too long ({len(container_id)} characters)",
            f"NETWORK:CONTAINERID:IFNAME must fit romanad's {MAX_NAME} characters; with "
            f"network {conf.network!r} and interface {ifname!r}, the container id may have "
            f"{MAX_NAME - len(conf.network) - len(ifname) - 2}",
        )
    return invocation


def _decode(stdin: bytes) -> dict[str, Any]:
    try:
        document = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(
            DECODE_FAILURE, "the network configuration is not valid JSON", str(exc)
        ) from None
    if not isinstance(document, dict):
        raise CniError(DECODE_FAILURE, "the network configuration is not a JSON object")
    return document


def _netconf(mode: Mode, command: str, document: dict[str, Any]) -> NetConf:
    version = document.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"CNI version {version!r} is not supported",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    network = document.get("name")
    if not isinstance(network, str) or not _NAME.match(network):
        raise CniError(
            INVALID_CONFIG,
            f"invalid network name {network!r}"[:200],
            '"name" must start with a letter or digit, then letters, digits, _ . -',
        )
    if len(network) > MAX_NETWORK_NAME:
        raise CniError(
            INVALID_CONFIG,
            f"network name is too long ({len(network)} characters)",
            f'"name" has at most {MAX_NETWORK_NAME} characters',
        )
    if mode == "ipam":
        section = document.get("ipam", {})
        where = "ipam."
        if not isinstance(section, dict):
            raise CniError(INVALID_CONFIG, '"ipam" must be an object')
    else:
        section, where = document, ""
    fields = _Fields(section, where)
    for key, flag in AGENT_SETTINGS.items():
        if key in section:
            raise CniError(
                INVALID_CONFIG,
                f'"{where}{key}" is not read from a network configuration',
                f"what romana-agent reads, contacts or writes is set on romana-agent only: "
                f"{flag} (whoever may write a network configuration must not choose it)",
            )
    segment_label = fields.text("segment_label", allow_empty=True)
    conf = NetConf(
        cni_version=version,
        network=network,
        segment_label=DEFAULT_SEGMENT_LABEL if segment_label is None else segment_label,
        mtu=fields.integer("mtu", DEFAULT_MTU, 68, 65535),
        use_policy=fields.boolean("use_policy"),
        host_route_dev=_host_route_dev(fields, document) if mode == "ipam" else None,
        routes=_routes(fields) if mode == "ipam" else DEFAULT_ROUTES,
        prev_result=_prev_result(document),
        valid_attachments=_attachments(document) if command == "GC" else None,
        labels=_pod_labels(document),
        ports=_pod_ports(document),
    )
    # Read by the plugin executable itself (plugin.c); checked here so a typo is reported.
    fields.text("agent_socket")
    fields.integer("agent_wait_seconds", AGENT_WAIT_SECONDS, 0, MAX_AGENT_WAIT_SECONDS)
    return conf


class _Fields:
    """Typed reads of optional fields; a wrong type is code 7 naming the field."""

    def __init__(self, section: dict[str, Any], where: str) -> None:
        self.section, self.where = section, where

    def _bad(self, key: str, expected: str) -> CniError:
        return CniError(
            INVALID_CONFIG,
            f"{self.where}{key} must be {expected}",
            f"got {json.dumps(self.section[key])}",
        )

    def text(self, key: str, allow_empty: bool = False) -> str | None:
        value = self.section.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not (value or allow_empty):
            raise self._bad(key, "a non-empty string" if not allow_empty else "a string")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._bad(key, f"an integer from {low} to {high}")
        return value

    def boolean(self, key: str) -> bool:
        value = self.section.get(key, False)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value


def _host_route_dev(fields: _Fields, document: dict[str, Any]) -> str | None:
    """IPAM mode: where the host routes the pod's /32; defaults to bridge's ``bridge``."""
    if "host_route_dev" in fields.section:  # "" turns the default off
        device = fields.text("host_route_dev", allow_empty=True) or None
    elif document.get("type") == "bridge":
        bridge = document.get("bridge", "cni0")  # the bridge plugin's own default
        device = bridge if isinstance(bridge, str) else None
    else:
        device = None
    if device is not None and not valid_ifname(device):
        raise CniError(INVALID_CONFIG, f"invalid host route device {device!r}")
    return device


def _routes(fields: _Fields) -> tuple[dict[str, str], ...]:
    routes = fields.section.get("routes")
    if routes is None:
        return DEFAULT_ROUTES
    if not isinstance(routes, list):
        raise fields._bad("routes", 'a list of {"dst": CIDR[, "gw": IP]}')
    result = []
    for route in routes:
        try:
            dst = str(ipaddress.IPv4Network(route["dst"]))
            entry = {"dst": dst}
            if route.get("gw") is not None:
                entry["gw"] = str(ipaddress.IPv4Address(route["gw"]))
        except (TypeError, KeyError, ValueError):
            raise fields._bad("routes", 'a list of {"dst": CIDR[, "gw": IP]}') from None
        result.append(entry)
    return tuple(result)


def _args(document: dict[str, Any], section: str) -> dict[str, Any]:
    args = document.get("args", {})
    part = args.get(section, {}) if isinstance(args, dict) else None
    if not isinstance(part, dict):
        raise CniError(INVALID_CONFIG, f"args.{section} must be an object")
    return part


def _pod_labels(document: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    items = _args(document, "cni").get("labels", [])
    expected = 'a list of {"key": NAME, "value": VALUE}'
    if not isinstance(items, list) or len(items) > 256:
        raise CniError(INVALID_CONFIG, f"args.cni.labels must be {expected} (256 at most)")
    labels: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict) or not {"key", "value"} <= set(item):
            raise CniError(INVALID_CONFIG, f"args.cni.labels must be {expected}")
        labels[item["key"]] = item["value"]
    problems = names.label_problems(labels)
    if problems:
        raise CniError(INVALID_CONFIG, "args.cni.labels: " + problems[0][1])
    return tuple(sorted(labels.items()))


def _pod_ports(document: dict[str, Any]) -> tuple[tuple[str, int, str], ...]:
    items = _args(document, "romana").get("ports", [])
    expected = 'a list of {"name": NAME, "containerPort": 1-65535, "protocol": TCP|UDP|SCTP}'
    if not isinstance(items, list) or len(items) > 256:
        raise CniError(INVALID_CONFIG, f"args.romana.ports must be {expected} (256 at most)")
    ports = set()
    for item in items:
        port = item.get("containerPort", item.get("port")) if isinstance(item, dict) else None
        protocol = item.get("protocol", "TCP") if isinstance(item, dict) else None
        valid = (
            isinstance(port, int)
            and not isinstance(port, bool)
            and 1 <= port <= 65535
            and isinstance(protocol, str)
            and protocol.lower() in ("tcp", "udp", "sctp")
        )
        if not valid or names.PORT_NAME.problem(item.get("name")) is not None:
            raise CniError(INVALID_CONFIG, f"args.romana.ports must be {expected}")
        assert isinstance(port, int) and isinstance(protocol, str)
        ports.add((item["name"], port, protocol.lower()))
    return tuple(sorted(ports))


def _prev_result(document: dict[str, Any]) -> dict[str, Any] | None:
    prev = document.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "prevResult must be an object")
    return prev


def _attachments(document: dict[str, Any]) -> frozenset[tuple[str, str]]:
    """GC's list of attachments still in use. libcni sends the spec's key and, for older
    plugins, ``cni.dev/attachments``. Without either, GC must not guess: code 7."""
    for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
        if key in document:
            items = document[key]
            break
    else:
        raise CniError(
            INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments",
            "refusing to treat every attachment as stale",
        )
    try:
        return frozenset((str(item["containerID"]), str(item["ifname"])) for item in items)
    except (TypeError, KeyError):
        raise CniError(
            INVALID_CONFIG, 'cni.dev/valid-attachments must be a list of {"containerID", "ifname"}'
        ) from None
