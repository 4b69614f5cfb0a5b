"""The IPAM engine: every operation checks its request, plans facts, then commits them.

Planning never mutates state. ``commit`` hands the facts to the sink, then applies them
(with their inverses in the undo journal while one is open). Under romanad
(:mod:`romana.api.service`) the sink only queues: memory is applied first, the queued
facts are appended to the store, and an append that fails is undone from the journal, so
no change is acknowledged, or shown to a reader, before it is durable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from ipaddress import AddressValueError, IPv4Address, IPv4Network
from typing import Any

from romana.errors import Conflict, Exhausted, InvalidRequest, NotFound, Problem
from romana.ipam import snapshot
from romana.ipam.addr import cidr_str, ip_to_str
from romana.ipam.blocks import Address, first_free_in
from romana.ipam.facts import (
    RESTRUCTURING,
    AddressAllocated,
    AddressReleased,
    AreaReleased,
    AreaReserved,
    BlackoutAdded,
    BlackoutRemoved,
    BlockAssigned,
    BlockFreed,
    Fact,
    HostAdded,
    HostLabelsUpdated,
    HostRemoved,
    HostState,
)
from romana.ipam.groups import GroupNode, NetworkTree
from romana.ipam.placement import AreaChange, choose_block, claim, emptied
from romana.ipam.policy_book import StoredPolicy
from romana.ipam.policy_operations import PolicyOperations
from romana.ipam.reads import EngineReads
from romana.ipam.replan import plan_topology
from romana.ipam.state import HostRecord, IpamState
from romana.ipam.undo import Journal, inverse
from romana.ipam.views import AddressView, HostView
from romana.policy.inputs import PolicyInputs
from romana.policy.model import Policy
from romana.responses import TenantJson
from romana.topology.model import Topology
from romana.topology.validate import check

FactSink = Callable[[list[Fact]], None]
Ports = Sequence[Mapping[str, Any]]
Pod = Mapping[str, str]  # {namespace, name, uid}: see romana.ipam.facts.PodRef


class Engine(EngineReads):
    """Topology-aware IPAM over an in-memory state; docs/architecture.md has the rules."""

    def __init__(self, sink: FactSink | None = None) -> None:
        self.state = IpamState()
        self.sink = sink
        # Called with facts after they are applied (route tracking, metrics).
        self.observers: list[FactSink] = []
        self.journal: Journal | None = None
        self.policy_operations = PolicyOperations(lambda: self.state, self.commit)

    @property
    def revision(self) -> int:
        return self.state.revision

    @classmethod
    def replay(cls, facts: Iterable[Fact], sink: FactSink | None = None) -> Engine:
        engine = cls(sink)
        engine.state.apply(facts)
        return engine

    @classmethod
    def from_snapshot(cls, data: dict[str, Any], sink: FactSink | None = None) -> Engine:
        engine = cls(sink)
        engine.state = snapshot.restore(data)
        return engine

    def snapshot(self) -> dict[str, Any]:
        """The state as a versioned JSON-ready document (see :mod:`romana.ipam.snapshot`)."""
        return snapshot.take(self.state)

    def apply_durable(self, facts: Iterable[Fact]) -> None:
        """Apply already-durable facts (replay, or a replica tailing the log).

        A page of the log is no one operation's plan: it may assign a block and free it
        again, and an observer told of the whole page would look for that block in a state
        without it. So observers hear of each fact right after it is applied, as in
        :meth:`undo`; except the page's run up to its last host or topology fact, told at
        once (observers recompute from the state after such facts: once, not once each)."""
        if not self.observers:
            self.state.apply(facts)
            return
        page = list(facts)
        last = max((i for i, f in enumerate(page) if isinstance(f, RESTRUCTURING)), default=-1)
        apply, notify = self.state.apply, self._notify
        if last >= 0:
            head = page[: last + 1]
            apply(head)
            notify(head)
        for fact in page[last + 1 :]:
            one = [fact]
            apply(one)
            notify(one)

    def commit(self, facts: list[Fact]) -> None:
        """Make one operation's facts durable (the sink), then apply them. Observers hear
        of them together: they were planned on one state as one change (a device's route
        update counts once), and no operation assigns and frees the same block."""
        if self.sink is not None:
            self.sink(facts)
        journal = self.journal
        if journal is None:
            self.state.apply(facts)
        else:
            for fact in facts:  # each inverse is read from the state just before its fact
                journal.record(inverse(self.state, fact))
                self.state.apply((fact,))
        self._notify(facts)

    def open_journal(self) -> Journal:
        """Record how to undo what is committed from now on (see :mod:`romana.ipam.undo`)."""
        self.journal = Journal(self.revision)
        return self.journal

    def close_journal(self) -> None:
        self.journal = None

    def undo(self, journal: Journal) -> bool:
        """Take the state back to where ``journal`` was opened; False if some fact had no
        inverse (the caller must rebuild the state from the store)."""
        self.journal = None
        if not journal.complete:
            return False
        # One fact's inverse at a time, observed as it is applied: observers (the route
        # tracker) read the state after each notice, and a block assigned then freed in
        # one notice would no longer be there to read.
        for undo in journal.undo_steps():
            self.state.apply(undo)
            self._notify(undo)
        self.state.revision = journal.revision
        return True

    def _notify(self, facts: list[Fact]) -> None:
        for observer in self.observers:
            observer(facts)

    # -- topology -------------------------------------------------------------------
    def apply_topology(
        self,
        document: Topology | Mapping[str, Any],
        service_cidr: str | None = None,
        checked: tuple[Topology, list[Problem]] | None = None,
    ) -> list[Problem]:
        """Apply a map, keeping every allocation or failing atomically; returns warnings.

        ``checked``: what :func:`romana.topology.check` returned for ``document`` (romanad
        validates off its event loop, then applies here)."""
        if checked is None:
            raw = document.to_json() if isinstance(document, Topology) else dict(document)
            checked = check(raw, service_cidr)
        topology, warnings = checked
        fact, dropped = plan_topology(self.state, topology)
        self.commit([fact])
        return warnings + dropped

    # -- hosts ----------------------------------------------------------------------
    def add_host(self, name: str, ip: str, labels: Mapping[str, str] | None = None) -> HostView:
        """Register a host and place it in every network that has an eligible group.

        Adding a host that exists with the same IP is idempotent; with new labels it is a
        label update (same rules as :meth:`update_labels`).
        """
        labels = dict(labels or {})
        trees = self._trees()
        ip = _host_ip(ip)
        st = self.state
        record = st.hosts.get(name)
        if record is not None:
            if record.ip != ip:
                raise Conflict(
                    f'host "{name}" exists with IP {record.ip}, not {ip}',
                    ["remove it first to change its IP"],
                )
            return self.update_labels(name, labels) if labels != record.labels else self.host(name)
        if ip in st.host_ips:
            raise Conflict(f'IP {ip} is already used by host "{st.host_ips[ip]}"')
        address = int(IPv4Address(ip))
        for tree in trees.values():
            if tree.contains(address):
                raise InvalidRequest(
                    f"host IP {ip} lies inside pod network {tree.name} ({tree.cidr})",
                    ["a node's own IP must come from outside every pod network"],
                )
        placements = {}
        for tree in trees.values():
            leaf = tree.choose_leaf(name, labels)
            if leaf is not None:
                placements[tree.name] = leaf.path
        if not placements:
            raise InvalidRequest(
                f'host "{name}" fits no group of any network',
                [
                    f"labels {labels or '{}'} match no leaf group's assignment; "
                    "see romana topology show for the assignments"
                ],
            )
        self.commit([HostAdded(HostState(name, ip, labels, placements))])
        return self.host(name)

    def update_labels(self, name: str, labels: Mapping[str, str]) -> HostView:
        """Replace a host's labels; refused if it would no longer fit a group it is in."""
        record = self._host(name)
        labels = dict(labels)
        problems = []
        for net, leaf in record.placements.items():
            tree = self.state.trees[net]
            if not tree.eligible_leaf(leaf, name, labels):
                wanted = {k: v for n in leaf.lineage() for k, v in n.assignment.items()}
                problems.append(f'network "{net}" group "{leaf.path}" requires labels {wanted}')
        if problems:
            raise Conflict(
                f'new labels of host "{name}" do not fit its current groups; '
                "hosts are never moved silently: remove and re-add the host to move it",
                problems,
            )
        placements = {net: leaf.path for net, leaf in record.placements.items()}
        for tree in self.state.trees.values():
            if tree.name not in placements:
                chosen = tree.choose_leaf(name, labels)
                if chosen is not None:
                    placements[tree.name] = chosen.path
        if labels != record.labels or len(placements) != len(record.placements):
            self.commit([HostLabelsUpdated(HostState(name, record.ip, labels, placements))])
        return self.host(name)

    def remove_host(self, name: str) -> None:
        """Remove a host, releasing its addresses and returning its blocks to the pools."""
        record = self._host(name)
        facts: list[Fact] = []
        for base in sorted(record.blocks):
            block = record.blocks[base]
            net = block.tree.name
            facts += [AddressReleased(self.state.ips[ip].name, net, ip) for ip in block.used_ips()]
            facts.append(BlockFreed(net, base, block.tree.block_mask))
        for net, leaf in record.placements.items():
            tree = self.state.trees[net]
            mine = leaf.areas.by_host.get(name, ())
            facts += _area_facts(
                tree, leaf, [AreaChange(False, name, a.start, a.size) for a in mine]
            )
        facts.append(HostRemoved(name))
        self.commit(facts)

    # -- addresses ------------------------------------------------------------------
    def allocate(
        self,
        name: str,
        host: str,
        tenant: str = "",
        segment: str = "",
        labels: Mapping[str, str] | None = None,
        ports: Ports | None = None,
        pod: Pod | None = None,
    ) -> AddressView:
        """Allocate the next address for (tenant, segment) on ``host``; ``labels`` and
        ``ports`` are the endpoint's metadata for policies, ``pod`` the pod it is for
        (``{namespace, name, uid}``); None: none, or unchanged."""
        st = self.state
        if name in st.addresses:
            return self._same_request(name, host, tenant, segment, None, labels, ports, pod)
        record = st.hosts.get(host)
        if record is None:
            raise NotFound(f'host "{host}" not found')
        facts: list[Fact] | None = None
        for tree in st.networks_for(tenant):
            leaf = record.placements.get(tree.name)
            if leaf is None:
                continue
            owned = st.nonfull.get((host, tenant, segment, tree.name))
            if owned:
                facts = [AddressAllocated(name, tree.name, owned[0].lowest_free())]
                break
            choice = choose_block(leaf, host)
            if choice is None:
                continue
            base = leaf.base + choice.index * tree.block_size
            offset = first_free_in(
                st.blackouts[tree.name].mask(base, tree.block_size), tree.block_size
            )
            assert offset is not None, "wholly blacked-out blocks are never in the pool"
            facts = [
                *_area_facts(tree, leaf, choice.changes),
                BlockAssigned(tree.name, base, tree.block_mask, host, tenant, segment),
                AddressAllocated(name, tree.name, base + offset),
            ]
            break
        if facts is None:
            raise self._exhausted(record, tenant)
        self.commit(facts + self.endpoint_facts(name, labels, ports, pod))
        return self._view(st.addresses[name])

    def _same_request(
        self,
        name: str,
        host: str,
        tenant: str,
        segment: str,
        ip: int | None = None,
        labels: Mapping[str, str] | None = None,
        ports: Ports | None = None,
        pod: Pod | None = None,
    ) -> AddressView:
        """A retried allocation (a CNI runtime after a timeout) gets the address it holds
        (with the metadata it gives now: labels, ports, pod); the same name asked for
        another host, tenant, segment or IP is a conflict naming the difference."""
        address = self.state.addresses[name]
        block = address.block
        held = {"host": block.host, "tenant": block.tenant, "segment": block.segment}
        asked = {"host": host, "tenant": tenant, "segment": segment}
        if ip is not None:
            held["ip"], asked["ip"] = ip_to_str(address.ip), ip_to_str(ip)
        different = [f"{k} {asked[k]!r} (it has {held[k]!r})" for k in held if held[k] != asked[k]]
        if different:
            raise Conflict(
                f'address name "{name}" is already allocated ({ip_to_str(address.ip)}) '
                f"with other parameters: {', '.join(different)}",
                ["release it first, or use another name"],
            )
        relabel = self.endpoint_facts(name, labels, ports, pod)
        if relabel:
            self.commit(relabel)
        return self._view(address)

    def _exhausted(self, record: HostRecord, tenant: str) -> Exhausted:
        groups = [
            f"{t.name}:{record.placements[t.name].path} ({record.placements[t.name].cidr})"
            for t in self.state.networks_for(tenant)
            if t.name in record.placements
        ]
        if not groups:
            return Exhausted(f'host "{record.name}" is in no network open to tenant "{tenant}"')
        return Exhausted(
            f'no free address for host "{record.name}" tenant "{tenant}": '
            f"every block of its groups is in use",
            groups,
        )

    def allocate_ip(
        self,
        name: str,
        host: str,
        ip: str,
        tenant: str = "",
        segment: str = "",
        labels: Mapping[str, str] | None = None,
        ports: Ports | None = None,
        pod: Pod | None = None,
    ) -> AddressView:
        """Allocate a specific address; it must be free and inside the host's group."""
        st = self.state
        value = int(_parse_ip(ip))
        if name in st.addresses:
            return self._same_request(name, host, tenant, segment, value, labels, ports, pod)
        record = self._host(host)
        tree = next(
            (t for t in st.trees.values() if t.base <= value < t.base + (1 << (32 - t.prefixlen))),
            None,
        )
        if tree is None:
            raise InvalidRequest(f"{ip} is in no network")
        if not tree.allows(tenant):
            raise Conflict(f'network "{tree.name}" is not open to tenant "{tenant}"')
        leaf = record.placements.get(tree.name)
        if leaf is None or not leaf.contains(value):
            where = f"its group {leaf.path} ({leaf.cidr})" if leaf else "none of its groups"
            raise Conflict(f'{ip} is outside host "{host}"\'s group: it is in {where}')
        if value in st.ips:
            raise Conflict(f'{ip} is already allocated to "{st.ips[value].name}"')
        if st.blackouts[tree.name].contains(value):
            raise Conflict(f"{ip} is blacked out in network {tree.name}")
        base = value & tree.block_base_mask
        block = st.blocks.get(base)
        facts: list[Fact] = []
        if block is not None:
            if block.owner != (host, tenant, segment):
                raise Conflict(
                    f"{ip} lies in block {cidr_str(base, tree.block_mask)} owned by "
                    f"host {block.host}, tenant {block.tenant!r}, "
                    f"segment {block.segment!r}"
                )
        else:
            index = (base - leaf.base) // tree.block_size
            facts += _area_facts(tree, leaf, claim(leaf.areas, host, index))
            facts.append(BlockAssigned(tree.name, base, tree.block_mask, host, tenant, segment))
        facts.append(AddressAllocated(name, tree.name, value))
        self.commit(facts + self.endpoint_facts(name, labels, ports, pod))
        return self._view(st.addresses[name])

    def release(self, name_or_ip: str) -> AddressView:
        """Release by address name, or by IP; an emptied block returns to its pool."""
        address = self._address(name_or_ip)
        view = self._view(address)
        block = address.block
        net = block.tree.name
        facts: list[Fact] = [AddressReleased(address.name, net, address.ip)]
        if block.allocated == 1:
            facts.append(BlockFreed(net, block.base, block.tree.block_mask))
            facts += _area_facts(block.tree, block.leaf, emptied(block.leaf, block))
        self.commit(facts)
        return view

    def _address(self, name_or_ip: str) -> Address:
        """The address named ``name_or_ip``, or numbered so; never a guess between two."""
        st = self.state
        by_name = st.addresses.get(name_or_ip)
        try:
            by_ip = st.ips.get(int(IPv4Address(name_or_ip)))
        except AddressValueError:
            by_ip = None
        if by_name is not None and by_ip is not None and by_name is not by_ip:
            # Only stores from before names shaped like IPs were refused can hold this.
            raise Conflict(
                f'"{name_or_ip}" is ambiguous: it names {ip_to_str(by_name.ip)}, and '
                f'{name_or_ip} itself is allocated as "{by_ip.name}"',
                ["release the other one by its name first, or rename by re-allocating"],
            )
        address = by_name or by_ip
        if address is None:
            raise NotFound(f'no address named or numbered "{name_or_ip}"')
        return address

    # -- endpoint metadata, tenant labels, policies: romana.ipam.policy_operations ----
    def endpoint_facts(
        self,
        name: str,
        labels: Mapping[str, str] | None,
        ports: Ports | None,
        pod: Pod | None = None,
    ) -> list[Fact]:
        return self.policy_operations.endpoint_facts(name, labels, ports, pod)

    def label_endpoint(
        self, name: str, labels: Mapping[str, str] | None, ports: Ports | None = None
    ) -> None:
        self.policy_operations.label_endpoint(name, labels, ports)

    def label_tenant(self, name: str, labels: Mapping[str, str]) -> TenantJson:
        return self.policy_operations.label_tenant(name, labels)

    def tenant(self, name: str) -> TenantJson:
        return self.policy_operations.tenant(name)

    def tenants(self) -> list[TenantJson]:
        return self.policy_operations.tenants()

    def add_policies(self, given: Sequence[tuple[Policy, dict[str, Any]]], replace: bool) -> None:
        self.policy_operations.add_policies(given, replace)

    def remove_policy(self, key: str) -> StoredPolicy:
        return self.policy_operations.remove_policy(key)

    def policy(self, key: str) -> StoredPolicy:
        return self.policy_operations.policy(key)

    def policies(self) -> list[StoredPolicy]:
        return self.policy_operations.policies()

    def policy_inputs(self) -> PolicyInputs:
        return self.policy_operations.policy_inputs()

    # -- blackouts ------------------------------------------------------------------
    def add_blackout(self, network: str, cidr: str) -> None:
        tree, net = self._blackout_target(network, cidr)
        if net in self.state.blackouts[network].cidrs:
            return  # idempotent
        if net == tree.cidr:
            raise InvalidRequest(f"{net} is the whole network {network}; nothing would be left")
        lo, hi = int(net.network_address), int(net.broadcast_address) + 1
        taken = [
            f"{ip_to_str(ip)} ({self.state.ips[ip].name})"
            for block in self.state.blocks.values()
            if block.tree is tree and block.base < hi and block.base + tree.block_size > lo
            for ip in block.used_ips()
            if lo <= ip < hi
        ]
        if taken:
            raise Conflict(
                f"{net} holds {len(taken)} allocated address(es); release them first", taken[:20]
            )
        self.commit([BlackoutAdded(network, str(net))])

    def remove_blackout(self, network: str, cidr: str) -> None:
        _, net = self._blackout_target(network, cidr)
        if net not in self.state.blackouts[network].cidrs:
            raise NotFound(f"{net} is not blacked out in network {network}")
        self.commit([BlackoutRemoved(network, str(net))])

    def blackouts(self, network: str) -> list[str]:
        self._tree(network)
        return [str(c) for c in self.state.blackouts[network].cidrs]

    def _blackout_target(self, network: str, cidr: str) -> tuple[NetworkTree, IPv4Network]:
        tree = self._tree(network)
        try:
            net = IPv4Network(cidr)
        except ValueError as exc:
            raise InvalidRequest(f'"{cidr}" is not a valid IPv4 CIDR: {exc}') from exc
        if not net.subnet_of(tree.cidr):
            raise InvalidRequest(f"{net} is not inside network {network} ({tree.cidr})")
        return tree, net


def _area_facts(tree: NetworkTree, leaf: GroupNode, changes: list[AreaChange]) -> list[Fact]:
    facts: list[Fact] = []
    for change in changes:
        base, prefixlen = tree.run_prefix(leaf, change.start, change.size)
        kind = AreaReserved if change.reserve else AreaReleased
        facts.append(kind(tree.name, base, prefixlen, change.host))
    return facts


def _parse_ip(text: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except AddressValueError as exc:
        raise InvalidRequest(f'"{text}" is not an IPv4 address') from exc


def _host_ip(text: str) -> str:
    return str(_parse_ip(text.strip()))


__all__ = ["Engine", "FactSink"]
