"""Versioned JSON snapshots of the IPAM state.

A snapshot is the smallest set of facts that rebuilds the state (topology with hosts,
blackouts and host areas, then blocks, then addresses) plus the revision it was taken at.
Restoring goes through the same appliers as live changes, so it cannot disagree with them.
Version 3 adds endpoint metadata, tenant labels and policies (:mod:`romana.ipam.policy_book`);
version 4 the pod an endpoint belongs to (a fourth element of an endpoint's row, when
known: a build that reads only version 3 would misread it, so it says 4 and is refused
there by name). Versions 1 (before host areas), 2 (before policies) and 3 (before pods)
still load: their state simply has no areas, no policies, or no pods.
"""

from __future__ import annotations

from typing import Any

from romana.ipam import policy_book
from romana.ipam.addr import cidr_str, ip_from_str, ip_to_str
from romana.ipam.facts import (
    AddressAllocated,
    AreaState,
    BlockAssigned,
    Fact,
    HostState,
    TopologyApplied,
)
from romana.ipam.state import IpamState

FORMAT = "romana-ipam-snapshot"
VERSION = 4
READABLE = (1, 2, 3, 4)


def take(state: IpamState) -> dict[str, Any]:
    if state.topology is None:  # policies and labels may come before any topology
        return {
            "format": FORMAT,
            "version": VERSION,
            "revision": state.revision,
            "topology": None,
            "policy": state.book.snapshot(),
        }
    return {
        "format": FORMAT,
        "version": VERSION,
        "revision": state.revision,
        "topology": state.topology.to_json(),
        "hosts": [r.state().to_json() for r in state.hosts.values()],
        "blackouts": {
            net: [str(c) for c in b.cidrs] for net, b in state.blackouts.items() if b.cidrs
        },
        "areas": [a.to_json() for a in state.area_states()],
        "blocks": [
            {
                "network": b.tree.name,
                "cidr": cidr_str(b.base, b.tree.block_mask),
                "host": b.host,
                "tenant": b.tenant,
                "segment": b.segment,
            }
            for _, b in sorted(state.blocks.items())
        ],
        # In address order: replicas that undid a batch hold the same addresses in a
        # different insertion order, and their snapshots must still be equal.
        "addresses": [
            [a.name, a.block.tree.name, ip_to_str(a.ip)] for _, a in sorted(state.ips.items())
        ],
        "policy": state.book.snapshot(),
    }


def facts_of(snapshot: dict[str, Any]) -> tuple[list[Fact], int]:
    """The facts that rebuild ``snapshot``'s state, and the revision to resume at."""
    if snapshot.get("format") != FORMAT:
        raise ValueError("not a Romana IPAM snapshot")
    if snapshot.get("version") not in READABLE:
        raise ValueError(
            f"snapshot version {snapshot.get('version')} is not supported "
            f"(this build reads versions {', '.join(map(str, READABLE))})"
        )
    revision = int(snapshot["revision"])
    if snapshot["topology"] is None:
        return policy_book.facts_of(snapshot.get("policy", {})), revision
    facts: list[Fact] = [
        TopologyApplied(
            snapshot["topology"],
            tuple(HostState.from_json(h) for h in snapshot["hosts"]),
            {k: list(v) for k, v in snapshot.get("blackouts", {}).items()},
            tuple(AreaState.from_json(a) for a in snapshot.get("areas", ())),
        )
    ]
    for b in snapshot["blocks"]:
        ip, prefix = b["cidr"].split("/")
        facts.append(
            BlockAssigned(
                b["network"], ip_from_str(ip), int(prefix), b["host"], b["tenant"], b["segment"]
            )
        )
    facts += [
        AddressAllocated(name, net, ip_from_str(ip)) for name, net, ip in snapshot["addresses"]
    ]
    facts += policy_book.facts_of(snapshot.get("policy", {}))
    return facts, revision


def restore(snapshot: dict[str, Any]) -> IpamState:
    facts, revision = facts_of(snapshot)
    state = IpamState()
    state.apply(facts)
    state.revision = revision
    return state
