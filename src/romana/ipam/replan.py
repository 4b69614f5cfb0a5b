"""Planning a topology change that keeps every existing allocation, or fails naming why.

Blocks follow their addresses, not names: a block stays in whichever network of the new map
contains it, so renaming a network (same CIDR) or a group keeps everything. A host holding
blocks in a network must land in the one leaf group of the new map that contains all of
them and that it is still eligible for; block size and tenant rules must still hold. Hosts
without blocks are placed afresh (pinned ones first, then balanced). Host areas are kept
where they still lie inside their host's new leaf group, and dropped otherwise (dropping
one only costs routes, never an address).
"""

from __future__ import annotations

from ipaddress import IPv4Address

from romana.errors import Problem, TopologyConflict
from romana.ipam.addr import cidr_str
from romana.ipam.facts import AreaState, HostState, TopologyApplied
from romana.ipam.groups import GroupNode, NetworkTree
from romana.ipam.state import HostRecord, IpamState, build_trees
from romana.topology.model import Topology


def _pinned_hosts(topology: Topology) -> dict[str, str]:
    """Hosts listed in the map's "hosts" lists: name -> ip (validation made them agree)."""
    found: dict[str, str] = {}

    def walk(groups: list) -> None:  # type: ignore[type-arg]
        for group in groups:
            for host in group.hosts or ():
                found.setdefault(host.name, host.ip)
            walk(group.groups or [])

    for mapping in topology.topologies:
        walk(mapping.map)
    return found


def _tree_of(trees: dict[str, NetworkTree], ip: int) -> NetworkTree | None:
    return next((t for t in trees.values() if t.contains(ip)), None)


def _keep_blocks(
    record: HostRecord, tree: NetworkTree, trees: dict[str, NetworkTree], problems: list[Problem]
) -> GroupNode | None:
    """The new leaf that keeps all of ``record``'s blocks in ``tree``'s network, if any."""
    blocks = [b for b in record.blocks.values() if _tree_of(trees, b.base) is tree]
    where = f"hosts.{record.name}"
    leaves: dict[str, GroupNode] = {}
    for block in blocks:
        cidr = cidr_str(block.base, block.tree.block_mask)
        if block.tree.block_mask != tree.block_mask:
            problems.append(
                Problem(
                    where,
                    f"block {cidr} of network {tree.name} would change size to /{tree.block_mask}",
                    "block_mask cannot change while blocks are in use",
                )
            )
            return None
        if not tree.allows(block.tenant):
            problems.append(
                Problem(
                    where,
                    f"block {cidr} belongs to tenant {block.tenant!r}, "
                    f"which network {tree.name} would no longer allow",
                )
            )
            return None
        leaf = tree.leaf_containing(block.base)
        if leaf is None:
            problems.append(
                Problem(
                    where,
                    f"block {cidr} would fall outside every leaf group of network {tree.name}",
                )
            )
            return None
        leaves[leaf.path] = leaf
    if len(leaves) > 1:
        problems.append(
            Problem(
                where,
                f"blocks of network {tree.name} would be split over "
                f"groups {', '.join(sorted(leaves))}",
            )
        )
        return None
    leaf = next(iter(leaves.values()))
    if not tree.eligible_leaf(leaf, record.name, record.labels):
        problems.append(
            Problem(
                where,
                f"blocks of network {tree.name} would lie in group "
                f"{leaf.path} ({leaf.cidr}), which the host's labels "
                f"{record.labels} do not fit",
            )
        )
        return None
    return leaf


def plan_topology(state: IpamState, topology: Topology) -> tuple[TopologyApplied, list[Problem]]:
    """The fact applying ``topology`` to ``state``, and the blackouts it drops (warnings)."""
    trees = build_trees(topology)
    problems: list[Problem] = []
    pinned = _pinned_hosts(topology)
    records: dict[str, HostRecord] = {}
    for name, record in state.hosts.items():
        if name in pinned and pinned[name] != record.ip:
            problems.append(
                Problem(
                    f"hosts.{name}",
                    f"the map pins it with IP {pinned[name]} but it exists with IP {record.ip}",
                )
            )
        records[name] = record
    ips = {r.ip: r.name for r in records.values()}
    for name, ip in pinned.items():
        if name not in records:
            if ip in ips:
                problems.append(
                    Problem(f"hosts.{name}", f'IP {ip} is already used by host "{ips[ip]}"')
                )
            records[name] = HostRecord(name, ip, {})
    for record in records.values():
        inside = _network_holding(trees, record.ip)
        if inside is not None and record.name not in pinned:  # pinned: the validator says
            problems.append(
                Problem(
                    f"hosts.{record.name}",
                    f"host IP {record.ip} would lie inside pod network {inside.name} "
                    f"({inside.cidr})",
                )
            )
    for record in records.values():
        for block in record.blocks.values():
            if _tree_of(trees, block.base) is None:
                problems.append(
                    Problem(
                        f"hosts.{record.name}",
                        f"block {cidr_str(block.base, block.tree.block_mask)} "
                        f"of network {block.tree.name} lies in no network of "
                        "the new map",
                    )
                )
    placements: dict[str, dict[str, str]] = {name: {} for name in records}
    # Pass 1: hosts held in place by their blocks or pinned by the map.
    for tree in trees.values():
        for record in records.values():
            if any(_tree_of(trees, b.base) is tree for b in record.blocks.values()):
                leaf = _keep_blocks(record, tree, trees, problems)
            else:
                leaf = tree.pinned.get(record.name)
            if leaf is not None:
                placements[record.name][tree.name] = leaf.path
                tree.place(record.name, leaf)
    # Pass 2: everyone else, balanced.
    for tree in trees.values():
        for record in records.values():
            if tree.name in placements[record.name]:
                continue
            leaf = tree.choose_leaf(record.name, record.labels)
            if leaf is not None:
                placements[record.name][tree.name] = leaf.path
                tree.place(record.name, leaf)
    if problems:
        raise TopologyConflict(
            f"the new topology cannot keep what is allocated ({len(problems)} problem(s)); "
            "nothing was changed",
            problems,
        )
    kept: dict[str, list[str]] = {}
    dropped: list[Problem] = []
    for net, blackouts in state.blackouts.items():
        for cidr in blackouts.cidrs:
            owner = _tree_of(trees, int(cidr.network_address))
            if owner is not None and cidr.subnet_of(owner.cidr) and cidr != owner.cidr:
                kept.setdefault(owner.name, []).append(str(cidr))
            else:
                dropped.append(
                    Problem(
                        f"blackouts.{net}",
                        f"blackout {cidr} dropped: no longer inside a network",
                        severity="warning",
                    )
                )
    hosts = tuple(
        HostState(r.name, r.ip, dict(r.labels), placements[r.name]) for r in records.values()
    )
    areas = _kept_areas(state, trees, placements)
    return TopologyApplied(topology.to_json(), hosts, kept, areas), dropped


def _kept_areas(
    state: IpamState, trees: dict[str, NetworkTree], placements: dict[str, dict[str, str]]
) -> tuple[AreaState, ...]:
    """The areas that still lie inside their host's new leaf, at the new block size."""
    kept = []
    for old_tree in state.trees.values():
        for old_leaf in old_tree.leaves.values():
            for area in old_leaf.areas:
                base, prefixlen = old_tree.run_prefix(old_leaf, area.start, area.size)
                tree = _tree_of(trees, base)
                path = placements.get(area.host, {}).get(tree.name) if tree else None
                if tree is None or path is None or prefixlen > tree.block_mask:
                    continue
                leaf = tree.nodes[path]
                if leaf.contains(base) and prefixlen >= leaf.prefixlen:
                    kept.append(AreaState(tree.name, area.host, cidr_str(base, prefixlen)))
    return tuple(kept)


def _network_holding(trees: dict[str, NetworkTree], ip: str) -> NetworkTree | None:
    address = IPv4Address(ip)
    return next((t for t in trees.values() if address in t.cidr), None)
