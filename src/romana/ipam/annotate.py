"""The applied topology document annotated with what the IPAM computed.

Networks get their effective ``block_mask``; every group gets ``cidr`` (a string when its
topology has one network, otherwise an object ``{network: cidr}``) and ``hosts``
(``[{name, ip}]``) where hosts are placed. The result mirrors the input, so people and
scripts can read it side by side with their map.
"""

from __future__ import annotations

from typing import Any

from romana.ipam.groups import GroupNode
from romana.ipam.state import IpamState


def annotated_topology(state: IpamState) -> dict[str, Any] | None:
    if state.topology is None:
        return None
    doc = state.topology.to_json()
    for network in doc["networks"]:
        tree = state.trees.get(network["name"])
        if tree is not None:
            network["block_mask"] = tree.block_mask
    for mapping in doc["topologies"]:
        trees = [state.trees[n] for n in mapping["networks"]]
        for i, group in enumerate(mapping["map"]):
            _annotate(group, [t.root.children[i] for t in trees], [t.name for t in trees], state)
    return doc


def _annotate(
    group: dict[str, Any], nodes: list[GroupNode], networks: list[str], state: IpamState
) -> None:
    cidrs = {net: node.cidr for net, node in zip(networks, nodes, strict=True)}
    group["cidr"] = next(iter(cidrs.values())) if len(cidrs) == 1 else cidrs
    if nodes[0].is_leaf:
        names = dict.fromkeys(name for node in nodes for name in node.hosts)
        if names or "hosts" in group:
            group["hosts"] = [{"name": n, "ip": state.hosts[n].ip} for n in names]
        return
    for i, child in enumerate(group["groups"]):
        _annotate(child, [node.children[i] for node in nodes], networks, state)
