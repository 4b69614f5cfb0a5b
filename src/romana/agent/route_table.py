"""The agent's routing table in the kernel, over :mod:`romana.netlink`.

Ownership. The agent owns one routing table (default 10) and, inside it, only routes whose
route protocol is its own (default 82). Everything it sends carries that protocol, deletes are
matched by the kernel on table + prefix + protocol, and dumps are filtered by protocol, so a
route someone else put in the table (``proto static``, BIRD, ...) is never read as ours,
replaced or deleted. Policy rules are owned the same way: they carry ``protocol 82``.

Why not one ``IPRoute.route()`` call per route. pyroute2's generic request path costs about
240 us per route (one round trip, one asyncio turn, generic encoding and decoding), so 10,000
routes take ~2.4 s. Its batch helpers do not fix that: encoding one ``rtmsg`` with pyroute2's
generic encoder alone costs ~77 us (0.77 s for 10k), and pipelining through pyroute2's own
``NetlinkRequest`` objects (what ``nlm_request_batch`` does) measured 2.3 s for 10k, while the
kernel needs ~60 ms for the same work. So this module:

* encodes each request *shape* (operation, route kind, prefix length) once with pyroute2's
  ``rtmsg`` and stamps per-route values (destination, gateway) into a copy at the offsets
  pyroute2's own decoder reports for those fields;
* sends them through :class:`romana.netlink.Channel`, which pipelines windows of requests
  and matches each acknowledgement to its request, so one bad route fails alone;
* dumps with ``NETLINK_GET_STRICT_CHK`` so the kernel filters by table and protocol, and
  decodes only the three attributes it needs (at the offsets of ``rtmsg``'s layout).

Policy rules are few, so they use pyroute2's ``fibmsg`` both ways.

A ``RouteTable`` is not safe for concurrent use by several threads (see ``Channel``).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, NamedTuple, Self

from romana.agent.reconcile import KernelRoute, RouteDiff, diff_routes, prefix_key
from romana.netlink import (
    FR_ACT_TO_TBL,
    HEADER,
    NLA,
    NLA_TYPE_MASK,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_GETROUTE,
    RTM_GETRULE,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    Channel,
    Message,
    Template,
    build,
    encode,
    fibmsg,
    layout,
    nla_type,
    rt_scope,
    rt_type,
    rtmsg,
)

__all__ = ["ApplyResult", "RouteFailure", "RouteTable", "routing_drops"]

Operation = Literal["add", "replace", "delete"]

MAIN_TABLE = 254
MAIN_RULE_PRIORITY = 32766  # the kernel's default "from all lookup main"
COMPAT_TABLE = 252  # rtm_table value meaning "see RTA_TABLE" for ids above 255
RESERVED_TABLES = frozenset({COMPAT_TABLE, 253, MAIN_TABLE, 255})  # compat/default/main/local
NO_SUPPRESS = 0xFFFFFFFF  # FRA_SUPPRESS_PREFIXLEN of a rule without suppress_prefixlength

_RTMSG = layout(rtmsg.fields)
_U32 = struct.Struct("=I")
RTA_DST = nla_type(rtmsg, "RTA_DST")
RTA_GATEWAY = nla_type(rtmsg, "RTA_GATEWAY")
RTA_TABLE = nla_type(rtmsg, "RTA_TABLE")
RTA_MULTIPATH = nla_type(rtmsg, "RTA_MULTIPATH")
_RTMSG_INDEX = {name: i for i, (name, _) in enumerate(rtmsg.fields)}
_UNICAST, _UNREACHABLE, _THROW = rt_type["unicast"], rt_type["unreachable"], rt_type["throw"]


@dataclass(frozen=True, slots=True)
class RouteFailure:
    """One route the kernel refused, with the kernel's errno and explanation."""

    op: Operation
    route: KernelRoute
    errno: int
    message: str

    @property
    def prefix(self) -> str:
        return self.route.prefix

    def __str__(self) -> str:
        name = errno.errorcode.get(self.errno, str(self.errno))
        return f"{self.op} {self.route.prefix}: [{name}] {self.message}"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What ``RouteTable.apply`` did. Deleting a route that is already gone counts as deleted."""

    added: int
    replaced: int
    deleted: int
    failures: tuple[RouteFailure, ...]

    @property
    def ok(self) -> bool:
        return not self.failures


def _split(prefix: str) -> tuple[bytes, int]:
    address, _, length = prefix.partition("/")
    return socket.inet_aton(address), int(length)


_FLAGS: dict[Operation, tuple[int, int]] = {
    "add": (RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL),
    "replace": (RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE),
    "delete": (RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK),
}


class _Rule(NamedTuple):
    """A policy rule of ours, as far as the agent cares: where, which table, suppressing."""

    priority: int
    network: str
    table: int
    suppress: int  # suppress_prefixlength, or NO_SUPPRESS


class RouteTable:
    """The agent's routes (one table, one protocol) and its policy rules in one namespace.

    ``netns=None`` means the current network namespace; a name means ``/var/run/netns/NAME``,
    which must exist.
    """

    def __init__(self, table: int = 10, protocol: int = 82, netns: str | None = None) -> None:
        if not 0 < table < 2**32 or table in RESERVED_TABLES:
            raise ValueError(f"table {table}: use a dedicated table, not main/local/default")
        if not 0 < protocol < 256:
            raise ValueError(f"protocol {protocol}: must be 1..255")
        self.table = table
        self.protocol = protocol
        self.netns = netns
        self._channel = Channel(netns)
        self._templates: dict[tuple[Operation, str, int], Template] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- routes ----------------------------------------------------------------------------

    def dump(self) -> dict[str, KernelRoute]:
        """IPv4 routes of our table with our protocol, by prefix."""
        routes: dict[str, KernelRoute] = {}
        for message in self._dump_routes(self.protocol):
            table, protocol, route = _decode_route(message)
            if table == self.table and protocol == self.protocol:
                routes[route.prefix] = route
        return routes

    def foreign(self) -> list[str]:
        """Prefixes in our table whose protocol is not ours (never touched; for logs/tests)."""
        prefixes = set()
        for message in self._dump_routes(0):
            table, protocol, route = _decode_route(message)
            if table == self.table and protocol != self.protocol:
                prefixes.add(route.prefix)
        return sorted(prefixes, key=prefix_key)

    def apply(self, diff: RouteDiff) -> ApplyResult:
        """Program a diff in pipelined windows; a refused route fails alone.

        Order: replacements, additions, then deletions, so a prefix being moved is never
        missing longer than necessary. A replacement is the kernel's atomic NLM_F_REPLACE,
        which takes the first route at that prefix and metric: it can only hit a foreign
        route if someone *appended* one next to ours (``ip route append``). Additions use
        NLM_F_EXCL, so a foreign route at a desired prefix fails that addition (EEXIST).
        A unicast route without a gateway cannot be programmed and fails (EINVAL) unsent.
        """
        plan: list[tuple[Operation, KernelRoute]] = [
            *(("replace", r) for r in diff.replace),
            *(("add", r) for r in diff.add),
            *(("delete", r) for r in diff.delete),
        ]
        failures = [
            RouteFailure(op, r, errno.EINVAL, "unicast route without a gateway")
            for op, r in plan
            if not _programmable(op, r)
        ]
        plan = [(op, r) for op, r in plan if _programmable(op, r)]
        outcomes = self._channel.transact([self._render(op, route) for op, route in plan])
        done = {"add": 0, "replace": 0, "delete": 0}
        for (op, route), (code, text) in zip(plan, outcomes, strict=True):
            if code == 0 or (op == "delete" and code == errno.ESRCH):
                done[op] += 1  # ESRCH: already gone, which is what a delete wants
            else:
                failures.append(RouteFailure(op, route, code, text))
        return ApplyResult(done["add"], done["replace"], done["delete"], tuple(failures))

    def flush(self) -> int:
        """Delete all our routes (``--cleanup``); returns how many. Foreign routes stay."""
        result = self.apply(diff_routes({}, self.dump()))
        if result.failures:
            first = result.failures[0]
            raise OSError(first.errno, f"flush left {len(result.failures)} route(s): {first}")
        return result.deleted

    def _dump_routes(self, protocol: int) -> list[Message]:
        request = build(
            rtmsg,
            RTM_GETROUTE,
            NLM_F_REQUEST | NLM_F_DUMP,
            [("RTA_TABLE", self.table)],
            family=socket.AF_INET,
            table=self.table if self.table <= 255 else COMPAT_TABLE,
            proto=protocol,
        )  # 0: any (the kernel's strict dump filter)
        try:
            messages = self._channel.dump(request)
        except FileNotFoundError:
            return []  # "FIB table does not exist": nothing was ever routed through it
        return [m for m in messages if m.type == RTM_NEWROUTE]

    def _render(self, op: Operation, route: KernelRoute) -> bytearray:
        dst, length = _split(route.prefix)
        template = self._template(op, route.kind, length)
        if op != "delete" and route.kind == "unicast" and route.gateway is not None:
            return template.render(dst, socket.inet_aton(route.gateway))
        return template.render(dst)  # deletes, unreachable and throw routes: no gateway

    def _template(self, op: Operation, kind: str, length: int) -> Template:
        key = (op, kind if op != "delete" else "any", length)
        template = self._templates.get(key)
        if template is None:
            template = self._templates[key] = self._build_template(*key)
        return template

    def _build_template(self, op: Operation, kind: str, length: int) -> Template:
        msg = rtmsg()
        msg["family"] = socket.AF_INET
        msg["dst_len"] = length
        msg["table"] = self.table if self.table <= 255 else COMPAT_TABLE
        msg["proto"] = self.protocol
        msg["attrs"] = [("RTA_DST", "0.0.0.0"), ("RTA_TABLE", self.table)]
        slots = ["RTA_DST"]
        if op == "delete":
            # type unspec + scope nowhere: match our route at this prefix whatever its shape;
            # the kernel still requires table, prefix and *protocol* to match.
            msg["type"], msg["scope"] = rt_type["unspec"], rt_scope["nowhere"]
        else:
            msg["type"], msg["scope"] = rt_type[kind], rt_scope["universe"]
            if kind == "unicast":
                msg["attrs"].append(("RTA_GATEWAY", "0.0.0.1"))
                slots.append("RTA_GATEWAY")
        return Template(msg, *_FLAGS[op], *slots)

    # -- policy rules ----------------------------------------------------------------------

    def ensure_rules(self, networks: Sequence[str], priority: int = 1000) -> None:
        """For each pod network N: ``P: to N lookup main suppress_prefixlength 0`` and
        ``P+1: to N lookup <table>``; every other rule of ours is removed.

        Main first, with its default route suppressed, so the CNI's per-pod /32s in main beat
        our ``unreachable`` blocks, while our neighbour routes beat main's default route.
        Idempotent: correct rules are left alone.
        """
        if not 0 < priority < MAIN_RULE_PRIORITY - 1:
            raise ValueError(
                f"priority {priority}: our rules must come before main's ({MAIN_RULE_PRIORITY})"
            )
        wanted = set()
        for network in networks:
            cidr = str(ipaddress.IPv4Network(network))
            wanted.add(_Rule(priority, cidr, MAIN_TABLE, 0))
            wanted.add(_Rule(priority + 1, cidr, self.table, NO_SUPPRESS))
        present = set(self._rules())
        self._change_rules(RTM_NEWRULE, sorted(wanted - present))
        self._change_rules(RTM_DELRULE, sorted(present - wanted))

    def remove_rules(self) -> None:
        """Remove every policy rule carrying our protocol (``--cleanup``)."""
        self._change_rules(RTM_DELRULE, sorted(set(self._rules())))

    def _rules(self) -> list[_Rule]:
        request = build(fibmsg, RTM_GETRULE, NLM_F_REQUEST | NLM_F_DUMP, family=socket.AF_INET)
        rules = []
        for message in self._channel.dump(request):
            if message.type != RTM_NEWRULE:
                continue
            rule: fibmsg = message.decode(fibmsg)
            if rule.get_attr("FRA_PROTOCOL") == self.protocol:
                rules.append(_decode_rule(rule))
        return rules

    def _change_rules(self, msg_type: int, rules: Sequence[_Rule]) -> None:
        flags = NLM_F_REQUEST | NLM_F_ACK
        if msg_type == RTM_NEWRULE:
            flags |= NLM_F_CREATE | NLM_F_EXCL
        messages = [encode(self._rule_msg(rule), msg_type, flags) for rule in rules]
        for rule, (code, text) in zip(rules, self._channel.transact(messages), strict=True):
            if code and not (msg_type == RTM_DELRULE and code == errno.ENOENT):
                raise OSError(code, f"rule {rule.priority} to {rule.network}: {text}")

    def _rule_msg(self, rule: _Rule) -> fibmsg:
        address, _, length = rule.network.partition("/")
        msg = fibmsg()
        msg["family"] = socket.AF_INET
        msg["dst_len"] = int(length)
        msg["table"] = rule.table if rule.table <= 255 else COMPAT_TABLE
        msg["action"] = FR_ACT_TO_TBL
        msg["attrs"] = [
            ("FRA_PRIORITY", rule.priority),
            ("FRA_TABLE", rule.table),
            ("FRA_PROTOCOL", self.protocol),
        ]
        if int(length):
            msg["attrs"].append(("FRA_DST", address))
        if rule.suppress != NO_SUPPRESS:
            msg["attrs"].append(("FRA_SUPPRESS_PREFIXLEN", rule.suppress))
        return msg


def _programmable(op: Operation, route: KernelRoute) -> bool:
    return op == "delete" or route.kind != "unicast" or route.gateway is not None


def _decode_rule(rule: fibmsg) -> _Rule:
    dst = rule.get_attr("FRA_DST") or "0.0.0.0"
    suppress = rule.get_attr("FRA_SUPPRESS_PREFIXLEN")
    return _Rule(
        priority=rule.get_attr("FRA_PRIORITY") or 0,
        network=f"{dst}/{rule['dst_len']}",
        table=rule.get_attr("FRA_TABLE") or rule["table"],
        suppress=NO_SUPPRESS if suppress is None else suppress,
    )


def _decode_route(message: Message) -> tuple[int, int, KernelRoute]:
    """(table, protocol, route) of one RTM_NEWROUTE, reading only what the agent needs."""
    data, start = message.data, message.offset + HEADER.size
    fields = _RTMSG.unpack_from(data, start)
    table = fields[_RTMSG_INDEX["table"]]
    dst, gateway, multipath = "0.0.0.0", None, False
    offset, end = start + _RTMSG.size, message.offset + message.length
    while offset + NLA.size <= end:
        length, kind = NLA.unpack_from(data, offset)
        if length < NLA.size:
            break
        kind &= NLA_TYPE_MASK
        value = offset + NLA.size
        if kind == RTA_DST:
            dst = socket.inet_ntoa(data[value : value + 4])
        elif kind == RTA_GATEWAY:
            gateway = socket.inet_ntoa(data[value : value + 4])
        elif kind == RTA_TABLE:
            table = _U32.unpack_from(data, value)[0]
        elif kind == RTA_MULTIPATH:
            multipath = True
        offset += (length + 3) & ~3
    prefix = f"{dst}/{fields[_RTMSG_INDEX['dst_len']]}"
    return (
        table,
        fields[_RTMSG_INDEX["proto"]],
        _route(prefix, fields[_RTMSG_INDEX["type"]], gateway, multipath),
    )


def _route(prefix: str, route_type: int, gateway: str | None, multipath: bool) -> KernelRoute:
    if route_type == _UNREACHABLE:
        return KernelRoute(prefix, None, "unreachable")
    if route_type == _THROW:
        return KernelRoute(prefix, None, "throw")
    if route_type == _UNICAST and gateway is not None and not multipath:
        return KernelRoute(prefix, gateway, "unicast")
    return KernelRoute(prefix, None, "unicast")  # ours by protocol, but not a shape we make


def routing_drops(address: str) -> bool:
    """Whether this namespace's routing drops packets to ``address``: the kernel's route
    lookup finds an ``unreachable`` (EHOSTUNREACH), ``blackhole`` (EINVAL) or
    ``prohibit`` (EACCES) route for it, or no route (ENETUNREACH). A packet dropped at
    routing never confirms a conntrack entry: the policy enforcer relies on it to skip a
    dump."""
    request = build(
        rtmsg,
        RTM_GETROUTE,
        NLM_F_REQUEST,
        [("RTA_DST", address)],
        family=socket.AF_INET,
        dst_len=32,
    )
    with Channel() as channel:
        try:
            channel.get(request)
        except OSError as exc:
            if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EINVAL, errno.EACCES):
                return True
            raise
    return False
