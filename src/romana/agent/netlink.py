"""The agent's routing table in the kernel: the only module of Romana that talks netlink.

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
  ``rtmsg`` and stamps per-route values (sequence number, destination, gateway) into a copy at
  the offsets pyroute2's own decoder reports for those fields;
* pipelines: a window of requests goes out in one ``send()`` (the kernel processes every
  message of the datagram and acknowledges each one), then the acknowledgements are read and
  matched to their requests by sequence number, so one bad route fails alone. The window is
  sized from the socket's receive buffer, because acknowledgements that do not fit are dropped
  by the kernel (``ENOBUFS``);
* dumps with ``NETLINK_GET_STRICT_CHK`` so the kernel filters by table and protocol, and
  decodes only the three attributes it needs.

The netlink socket itself is made by pyroute2 (``pyroute2.netns.create_socket``), which also
knows how to open it inside another network namespace. Header and field layouts come from
pyroute2's message classes; errors are decoded by pyroute2's ``nlmsgerr`` (with the kernel's
extended-ack text). Policy rules are few, so they use pyroute2's ``fibmsg`` both ways.

One socket, synchronous, no event loop: safe to call from a worker thread of an asyncio
daemon. A ``RouteTable`` is not safe for concurrent use by several threads.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, NamedTuple, Self

from pyroute2.netlink import (
    NETLINK_EXT_ACK,
    NETLINK_GET_STRICT_CHK,
    NETLINK_ROUTE,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOL_NETLINK,
    nlmsg,
    nlmsgerr,
)
from pyroute2.netlink.rtnl import (
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_GETROUTE,
    RTM_GETRULE,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    rt_scope,
    rt_type,
)
from pyroute2.netlink.rtnl.fibmsg import FR_ACT_TO_TBL, fibmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg
from pyroute2.netns import create_socket

from romana.agent.reconcile import KernelRoute, RouteDiff, diff_routes, prefix_key

__all__ = ["ApplyResult", "RouteFailure", "RouteTable"]

Operation = Literal["add", "replace", "delete"]

MAIN_TABLE = 254
MAIN_RULE_PRIORITY = 32766  # the kernel's default "from all lookup main"
COMPAT_TABLE = 252  # rtm_table value meaning "see RTA_TABLE" for ids above 255
RESERVED_TABLES = frozenset({COMPAT_TABLE, 253, MAIN_TABLE, 255})  # compat/default/main/local
NO_SUPPRESS = 0xFFFFFFFF  # FRA_SUPPRESS_PREFIXLEN of a rule without suppress_prefixlength
RCVBUF = 1 << 20  # asked for; the kernel caps it at net.core.rmem_max (and doubles it)
ACK_COST = 2048  # receive-buffer bytes one queued acknowledgement may take (measured ~832)
WINDOW_MAX = 1024  # requests per send(); beyond this the kernel's work dominates anyway
RECV_SIZE = 1 << 18  # one datagram; kernel dump datagrams stay below 32 KiB
REPLY_TIMEOUT = 5.0  # seconds to wait for the kernel's answer to a window
DUMP_ATTEMPTS = 5  # a dump interrupted by a concurrent change is retried this often

# Layouts as pyroute2 declares them (native byte order, like the kernel's structs).
_HEADER = struct.Struct("=" + "".join(fmt for _, fmt in nlmsg.header))
_RTMSG = struct.Struct("=" + "".join(fmt for _, fmt in rtmsg.fields))
_NLA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER


def _field_offset(fields: Sequence[tuple[str, str]], name: str) -> int:
    """Byte offset of a field in a pyroute2 field list such as ``nlmsg.header``."""
    names = [field for field, _ in fields]
    return struct.calcsize("=" + "".join(fmt for _, fmt in fields[: names.index(name)]))


def _nla_type(msg_class: type[nlmsg], name: str) -> int:
    """The numeric attribute type of ``name`` in a pyroute2 message class's NLA map."""
    for index, entry in enumerate(msg_class.nla_map):
        if entry[0] == name or (isinstance(entry[0], int) and entry[1] == name):
            return entry[0] if isinstance(entry[0], int) else index
    raise LookupError(f"{msg_class.__name__} has no attribute {name}")


RTA_DST = _nla_type(rtmsg, "RTA_DST")
RTA_GATEWAY = _nla_type(rtmsg, "RTA_GATEWAY")
RTA_TABLE = _nla_type(rtmsg, "RTA_TABLE")
RTA_MULTIPATH = _nla_type(rtmsg, "RTA_MULTIPATH")
_SEQ_OFFSET = _field_offset(nlmsg.header, "sequence_number")
_RTMSG_INDEX = {name: i for i, (name, _) in enumerate(rtmsg.fields)}
_UNICAST, _UNREACHABLE = rt_type["unicast"], rt_type["unreachable"]


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


class _DumpInterrupted(OSError):
    """The kernel flagged the dump NLM_F_DUMP_INTR: the table changed while being read."""


class _Message(NamedTuple):
    """Where one netlink message sits in a received datagram."""

    data: bytes | memoryview
    offset: int
    length: int
    type: int
    flags: int
    seq: int


def _messages(data: bytes | memoryview, size: int) -> Iterator[_Message]:
    """The netlink messages in the first ``size`` bytes of a datagram."""
    offset = 0
    while offset + _HEADER.size <= size:
        length, msg_type, flags, seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            return
        yield _Message(data, offset, length, msg_type, flags, seq)
        offset += (length + 3) & ~3


def _error_code(message: _Message) -> int:
    """errno of an NLMSG_ERROR (0: an acknowledgement) or of an NLMSG_DONE (0: success)."""
    if message.length < _HEADER.size + _I32.size:
        return 0
    return -_I32.unpack_from(message.data, message.offset + _HEADER.size)[0]


def _error_text(message: _Message, code: int) -> str:
    """strerror plus the kernel's extended-ack message, decoded by pyroute2's nlmsgerr."""
    text = os.strerror(code)
    raw = bytes(message.data[message.offset : message.offset + message.length])
    try:
        decoded = nlmsgerr(raw)
        decoded.decode()
        detail = decoded.get_attr("NLMSGERR_ATTR_MSG")
    except Exception:  # a malformed error payload must not hide the errno itself
        detail = None
    return f"{text}: {detail}" if detail else text


class _Channel:
    """One NETLINK_ROUTE socket used synchronously: pipelined requests and dumps."""

    def __init__(self, netns: str | None) -> None:
        # flags=0: a missing namespace is an error, never silently created.
        sock = create_socket(
            netns, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE, flags=0
        )
        try:
            sock.bind((0, 0))
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.settimeout(REPLY_TIMEOUT)
            rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.window = max(1, min(WINDOW_MAX, rcvbuf // ACK_COST))
        self._buffer = bytearray(RECV_SIZE)
        self._view = memoryview(self._buffer)
        self._seq = 0

    def close(self) -> None:
        self._view.release()
        self.sock.close()

    def _next_seq(self) -> int:
        self._seq = self._seq % 0xFFFFFFFF + 1  # 1 .. 2**32-1; 0 is what notifications use
        return self._seq

    def _stamp(self, message: bytearray) -> int:
        seq = self._next_seq()
        _U32.pack_into(message, _SEQ_OFFSET, seq)
        return seq

    def transact(self, messages: Sequence[bytearray]) -> list[tuple[int, str]]:
        """Send requests (each asking for an ACK) and return (errno, text) per request.

        The sequence number of each message is stamped in place. errno 0 means success.
        """
        results: list[tuple[int, str]] = [(0, "")] * len(messages)
        for start in range(0, len(messages), self.window):
            window = messages[start : start + self.window]
            pending = {self._stamp(m): start + i for i, m in enumerate(window)}
            self.sock.send(b"".join(window))
            self._collect(pending, results)
        return results

    def _collect(self, pending: dict[int, int], results: list[tuple[int, str]]) -> None:
        """Read acknowledgements until every request of the window has its answer."""
        while pending:
            try:
                size = self.sock.recv_into(self._buffer)
            except TimeoutError:
                self._give_up(pending, results, errno.ETIMEDOUT, "no reply from the kernel")
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self._drain(pending, results)
                self._give_up(pending, results, errno.ENOBUFS,
                              "reply lost (receive buffer overrun): state unknown")
            else:
                self._match(self._view, size, pending, results)

    def _match(self, data: memoryview, size: int, pending: dict[int, int],
               results: list[tuple[int, str]]) -> None:
        for message in _messages(data, size):
            if message.type != NLMSG_ERROR:
                continue
            index = pending.pop(message.seq, None)
            if index is None:
                continue  # the late answer to a window given up on earlier
            code = _error_code(message)
            if code:
                results[index] = (code, _error_text(message, code))

    def _drain(self, pending: dict[int, int], results: list[tuple[int, str]]) -> None:
        """After an overrun: take what did arrive without waiting (the kernel is done)."""
        self.sock.settimeout(0)
        try:
            while pending:
                size = self.sock.recv_into(self._buffer)
                self._match(self._view, size, pending, results)
        except (BlockingIOError, InterruptedError):
            pass
        finally:
            self.sock.settimeout(REPLY_TIMEOUT)

    @staticmethod
    def _give_up(pending: dict[int, int], results: list[tuple[int, str]],
                 code: int, text: str) -> None:
        for index in pending.values():
            results[index] = (code, text)
        pending.clear()

    def dump(self, request: bytearray) -> list[_Message]:
        """Run one dump request; return its messages (before NLMSG_DONE), with copied data."""
        seq = self._stamp(request)
        self.sock.send(request)
        found: list[_Message] = []
        interrupted = False
        while True:
            size = self.sock.recv_into(self._buffer)
            data = bytes(self._view[:size])
            for message in _messages(data, size):
                if message.seq != seq:
                    continue
                interrupted = interrupted or bool(message.flags & NLM_F_DUMP_INTR)
                if message.type in (NLMSG_DONE, NLMSG_ERROR):
                    return self._finish_dump(message, found, interrupted)
                found.append(message)

    @staticmethod
    def _finish_dump(last: _Message, found: list[_Message], interrupted: bool) -> list[_Message]:
        code = _error_code(last)
        if code:
            raise OSError(code, _error_text(last, code))
        if interrupted:
            raise _DumpInterrupted(errno.EINTR, "dump interrupted by a concurrent change")
        return found


def _encode(msg: nlmsg, msg_type: int, flags: int) -> bytearray:
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags
    msg.encode()
    return bytearray(msg.data)


def _split(prefix: str) -> tuple[bytes, int]:
    address, _, length = prefix.partition("/")
    return socket.inet_aton(address), int(length)


class _Template:
    """One request shape encoded by pyroute2; per-route values are stamped into copies."""

    __slots__ = ("data", "dst", "gateway")

    def __init__(self, msg: rtmsg, msg_type: int, flags: int) -> None:
        self.data = bytes(_encode(msg, msg_type, flags))
        decoded = rtmsg(self.data)
        decoded.decode()
        self.dst = decoded.nla("RTA_DST").offset + _NLA.size
        gateway = decoded.get_attr("RTA_GATEWAY")
        self.gateway = decoded.nla("RTA_GATEWAY").offset + _NLA.size if gateway else None

    def render(self, dst: bytes, gateway: str | None) -> bytearray:
        out = bytearray(self.data)
        out[self.dst : self.dst + 4] = dst
        if self.gateway is not None and gateway is not None:
            out[self.gateway : self.gateway + 4] = socket.inet_aton(gateway)
        return out


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
        self._channel = _Channel(netns)
        self._templates: dict[tuple[Operation, str, int], _Template] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
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
        failures = [RouteFailure(op, r, errno.EINVAL, "unicast route without a gateway")
                    for op, r in plan if not _programmable(op, r)]
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

    def _dump_routes(self, protocol: int) -> list[_Message]:
        msg = rtmsg()
        msg["family"] = socket.AF_INET
        msg["table"] = self.table if self.table <= 255 else COMPAT_TABLE
        msg["proto"] = protocol  # 0: any (the kernel's strict dump filter)
        msg["attrs"] = [("RTA_TABLE", self.table)]
        request = _encode(msg, RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP)
        try:
            messages = self._dump(request)
        except FileNotFoundError:
            return []  # "FIB table does not exist": nothing was ever routed through it
        return [m for m in messages if m.type == RTM_NEWROUTE]

    def _dump(self, request: bytearray) -> list[_Message]:
        attempt = 1
        while True:
            try:
                return self._channel.dump(request)
            except _DumpInterrupted:
                if attempt == DUMP_ATTEMPTS:
                    raise
                attempt += 1

    def _render(self, op: Operation, route: KernelRoute) -> bytearray:
        dst, length = _split(route.prefix)
        return self._template(op, route.kind, length).render(dst, route.gateway)

    def _template(self, op: Operation, kind: str, length: int) -> _Template:
        key = (op, kind if op != "delete" else "any", length)
        template = self._templates.get(key)
        if template is None:
            template = self._templates[key] = self._build_template(*key)
        return template

    def _build_template(self, op: Operation, kind: str, length: int) -> _Template:
        msg = rtmsg()
        msg["family"] = socket.AF_INET
        msg["dst_len"] = length
        msg["table"] = self.table if self.table <= 255 else COMPAT_TABLE
        msg["proto"] = self.protocol
        msg["attrs"] = [("RTA_DST", "0.0.0.0"), ("RTA_TABLE", self.table)]
        if op == "delete":
            # type unspec + scope nowhere: match our route at this prefix whatever its shape;
            # the kernel still requires table, prefix and *protocol* to match.
            msg["type"], msg["scope"] = rt_type["unspec"], rt_scope["nowhere"]
        else:
            msg["type"], msg["scope"] = rt_type[kind], rt_scope["universe"]
            if kind == "unicast":
                msg["attrs"].append(("RTA_GATEWAY", "0.0.0.1"))
        return _Template(msg, *_FLAGS[op])

    # -- policy rules ----------------------------------------------------------------------

    def ensure_rules(self, networks: Sequence[str], priority: int = 1000) -> None:
        """For each pod network N: ``P: to N lookup main suppress_prefixlength 0`` and
        ``P+1: to N lookup <table>``; every other rule of ours is removed.

        Main first, with its default route suppressed, so the CNI's per-pod /32s in main beat
        our ``unreachable`` blocks, while our neighbour routes beat main's default route.
        Idempotent: correct rules are left alone.
        """
        if not 0 < priority < MAIN_RULE_PRIORITY - 1:
            raise ValueError(f"priority {priority}: our rules must come before main's "
                             f"({MAIN_RULE_PRIORITY})")
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
        msg = fibmsg()
        msg["family"] = socket.AF_INET
        request = _encode(msg, RTM_GETRULE, NLM_F_REQUEST | NLM_F_DUMP)
        rules = []
        for message in self._dump(request):
            if message.type != RTM_NEWRULE:
                continue
            rule = fibmsg(bytes(message.data[message.offset : message.offset + message.length]))
            rule.decode()
            if rule.get_attr("FRA_PROTOCOL") == self.protocol:
                rules.append(_decode_rule(rule))
        return rules

    def _change_rules(self, msg_type: int, rules: Sequence[_Rule]) -> None:
        flags = NLM_F_REQUEST | NLM_F_ACK
        if msg_type == RTM_NEWRULE:
            flags |= NLM_F_CREATE | NLM_F_EXCL
        messages = [_encode(self._rule_msg(rule), msg_type, flags) for rule in rules]
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


def _decode_route(message: _Message) -> tuple[int, int, KernelRoute]:
    """(table, protocol, route) of one RTM_NEWROUTE, reading only what the agent needs."""
    data, start = message.data, message.offset + _HEADER.size
    fields = _RTMSG.unpack_from(data, start)
    table = fields[_RTMSG_INDEX["table"]]
    dst, gateway, multipath = "0.0.0.0", None, False
    offset, end = start + _RTMSG.size, message.offset + message.length
    while offset + _NLA.size <= end:
        length, nla_type = _NLA.unpack_from(data, offset)
        if length < _NLA.size:
            break
        nla_type &= _NLA_TYPE_MASK
        value = offset + _NLA.size
        if nla_type == RTA_DST:
            dst = socket.inet_ntoa(data[value : value + 4])
        elif nla_type == RTA_GATEWAY:
            gateway = socket.inet_ntoa(data[value : value + 4])
        elif nla_type == RTA_TABLE:
            table = _U32.unpack_from(data, value)[0]
        elif nla_type == RTA_MULTIPATH:
            multipath = True
        offset += (length + 3) & ~3
    prefix = f"{dst}/{fields[_RTMSG_INDEX['dst_len']]}"
    return table, fields[_RTMSG_INDEX["proto"]], _route(prefix, fields[_RTMSG_INDEX["type"]],
                                                        gateway, multipath)


def _route(prefix: str, route_type: int, gateway: str | None, multipath: bool) -> KernelRoute:
    if route_type == _UNREACHABLE:
        return KernelRoute(prefix, None, "unreachable")
    if route_type == _UNICAST and gateway is not None and not multipath:
        return KernelRoute(prefix, gateway, "unicast")
    return KernelRoute(prefix, None, "unicast")  # ours by protocol, but not a shape we make
