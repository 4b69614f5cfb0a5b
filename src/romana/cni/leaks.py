"""Which of a host's CNI addresses outlived their container (``romana ipam check``).

Two witnesses, because neither alone is safe to act on:

* the kernel: the address is configured on an interface in some live network namespace
  of the machine (named ones under ``/var/run/netns`` and every process's). A pod whose
  namespace is gone has no interface left anywhere;
* the runtime: the attachment ``(container ID, ifname)`` is in the list CNI ``GC`` gets
  (``cni.dev/valid-attachments``), when the operator supplies it.

An address is **leaked** (and ``--release`` frees it) only when both agree: configured
nowhere, and not a valid attachment (or no list was given). One witness alone is reported,
never acted on: **stale** (the runtime forgot it, but a namespace still holds the address:
releasing it would hand a live address to another pod) and **unconfigured** (the runtime
still lists it, but no namespace holds it: an ADD in progress, or a DEL the runtime will
still send). Addresses whose names the plugin did not make are not looked at.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from romana.cni.config import split_address_name

Verdict = Literal["leaked", "stale", "unconfigured"]


@dataclass(frozen=True, slots=True)
class Finding:
    verdict: Verdict
    name: str
    ip: str
    network: str
    container_id: str
    ifname: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def classify(
    addresses: Iterable[Mapping[str, Any]],
    live_ips: set[str],
    valid: set[tuple[str, str]] | None,
    network: str | None = None,
) -> tuple[int, list[Finding]]:
    """(how many CNI addresses were checked, the findings among them)."""
    checked, findings = 0, []
    for address in addresses:
        parts = split_address_name(str(address["name"]))
        if parts is None or (network is not None and parts[0] != network):
            continue
        checked += 1
        configured = address["ip"] in live_ips
        known = valid is None or (parts[1], parts[2]) in valid
        verdict: Verdict | None = None
        if not configured and not known:
            verdict, reason = "leaked", "no namespace has it and the runtime does not list it"
        elif not configured and valid is None:
            verdict, reason = "leaked", "no namespace on this machine has it configured"
        elif not configured:
            verdict, reason = "unconfigured", "the runtime lists it, but no namespace has it"
        elif not known:
            verdict, reason = "stale", "the runtime does not list it, but a namespace has it"
        if verdict is not None:
            findings.append(
                Finding(verdict, str(address["name"]), str(address["ip"]), *parts, reason)
            )
    return checked, findings


def read_valid_attachments(text: str) -> set[tuple[str, str]]:
    """A GC-style list: ``[{"containerID", "ifname"}, ...]`` or a whole GC network config
    holding it under ``cni.dev/valid-attachments``."""
    document = json.loads(text)
    if isinstance(document, dict):
        document = document.get("cni.dev/valid-attachments", document.get("cni.dev/attachments"))
    if not isinstance(document, list):
        raise ValueError(
            'expected a list of {"containerID", "ifname"} or a config with '
            "cni.dev/valid-attachments"
        )
    try:
        return {(str(item["containerID"]), str(item["ifname"])) for item in document}
    except (TypeError, KeyError):
        raise ValueError('every attachment needs "containerID" and "ifname"') from None
