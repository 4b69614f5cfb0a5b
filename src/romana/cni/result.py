"""The JSON the runtime reads back: results, error objects, in the version it asked for.

Versions differ in small ways that runtimes check: before 1.0.0 every ``ips`` entry
carries ``"version": "4"``; 1.1.0 adds ``mtu`` to interfaces. An IPAM plugin's result
has no ``interfaces`` (the main plugin fills in the interface index).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from romana.cni.config import GATEWAY
from romana.cni.podmsg import Link
from romana.errors import CniError


def _ip(
    version: str, address: str, gateway: str | None = None, interface: int | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {"address": address}
    if version < "1.0.0":  # the supported versions compare correctly as strings
        entry["version"] = "4"
    if gateway is not None:
        entry["gateway"] = gateway
    if interface is not None:
        entry["interface"] = interface
    return entry


def add_result(
    version: str, ip: str, host: Link, pod: Link, netns: str, mtu: int
) -> dict[str, Any]:
    """The full plugin's ADD result: host veth, pod interface, the /32, default route."""
    interfaces: list[dict[str, Any]] = [
        {"name": host.name, "mac": host.mac},
        {"name": pod.name, "mac": pod.mac, "sandbox": netns},
    ]
    if version >= "1.1.0":
        for interface in interfaces:
            interface["mtu"] = mtu
    return {
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": [_ip(version, f"{ip}/32", GATEWAY, interface=1)],
        "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY}],
        "dns": {},
    }


def ipam_result(version: str, ip: str, routes: Sequence[dict[str, str]]) -> dict[str, Any]:
    """The IPAM plugin's ADD result: the /32 and the configured routes, no interfaces.

    No gateway: the reference plugins install a result's gateway as a next hop, which a
    /32 cannot reach without an on-link route they will not add (see docs/cni.md).
    """
    return {
        "cniVersion": version,
        "ips": [_ip(version, f"{ip}/32")],
        "routes": [dict(r) for r in routes],
        "dns": {},
    }


def error_object(version: str, error: CniError) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "code": error.cni_code,
        "msg": error.msg,
        "details": error.cni_details,
    }


def previous_ip(prev: dict[str, Any] | None) -> str | None:
    """The IPv4 address a prevResult reports (without its prefix length), if any."""
    for entry in (prev or {}).get("ips") or []:
        address = str(entry.get("address", "")) if isinstance(entry, dict) else ""
        if address and ":" not in address:
            return address.partition("/")[0]
    return None


def previous_mac(prev: dict[str, Any] | None, ifname: str, netns: str) -> str | None:
    """The MAC a prevResult reports for the pod's interface, if any."""
    for entry in (prev or {}).get("interfaces") or []:
        if (
            isinstance(entry, dict)
            and entry.get("name") == ifname
            and entry.get("sandbox") == netns
            and entry.get("mac")
        ):
            return str(entry["mac"])
    return None
