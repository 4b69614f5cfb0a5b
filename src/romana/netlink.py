"""Netlink (NETLINK_ROUTE) for Romana: the only module that imports pyroute2.

Users: the agent's route table (:mod:`romana.agent.netlink`) and the CNI's pod plumbing
(:mod:`romana.cni.podnet`). They build and read messages with pyroute2's message classes
and the constants re-exported here, and talk to the kernel through :class:`Channel`:

* one socket, synchronous, no event loop: safe to call from a worker thread of an asyncio
  daemon; a channel is not safe for concurrent use by several threads;
* opened in the current network namespace, or in another one given by an fd or a name,
  without a process: a short-lived thread ``setns()``-es into the namespace and makes the
  socket there (a namespace switch is per thread, the socket stays bound to the namespace
  it was made in, and the thread, with its namespace, just ends). pyroute2's
  ``NetNS``/``create_socket(netns=...)`` fork a helper per namespace instead;
* pipelined requests: a window of requests goes out in one ``send()`` (the kernel processes
  every message of the datagram and acknowledges each one), then the acknowledgements are
  matched to their requests by sequence number, so one bad request fails alone. The window
  is sized from the socket's receive buffer, because acknowledgements that do not fit are
  dropped by the kernel (``ENOBUFS``);
* dumps with ``NETLINK_GET_STRICT_CHK`` (the kernel filters by the header's fields), retried
  when the kernel flags them ``NLM_F_DUMP_INTR`` (the data changed while being read);
* errors carry the kernel's extended-ack text, decoded by pyroute2's ``nlmsgerr``.

Why not pyroute2's ``IPRoute``: its generic request path costs ~240 us (routes) to ~500 us
(links) per request (one round trip, one asyncio turn, generic encoding and decoding).
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import NamedTuple, Self, TypeVar

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
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_GETRULE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    rt_scope,
    rt_type,
)
from pyroute2.netlink.rtnl.fibmsg import FR_ACT_TO_TBL, fibmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

__all__ = [
    "FR_ACT_TO_TBL", "HEADER", "IFF_UP", "NLA", "NLA_TYPE_MASK", "NLM_F_ACK", "NLM_F_CREATE",
    "NLM_F_DUMP", "NLM_F_EXCL", "NLM_F_REPLACE", "NLM_F_REQUEST", "RTM_DELLINK", "RTM_DELROUTE",
    "RTM_DELRULE", "RTM_GETADDR", "RTM_GETLINK", "RTM_GETROUTE", "RTM_GETRULE", "RTM_NEWADDR",
    "RTM_NEWLINK", "RTM_NEWROUTE", "RTM_NEWRULE", "Channel", "DumpInterrupted", "Message",
    "Template", "asciiz", "build", "encode", "fibmsg", "ifaddrmsg", "ifinfmsg", "layout", "make",
    "nla_type", "open_netns", "rt_scope", "rt_type", "rtmsg", "u32",
]

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"  # where ``ip netns`` keeps named namespaces
RCVBUF = 1 << 20  # asked for; the kernel caps it at net.core.rmem_max (and doubles it)
ACK_COST = 2048  # receive-buffer bytes one queued acknowledgement may take (measured ~832)
WINDOW_MAX = 1024  # requests per send(); beyond this the kernel's work dominates anyway
RECV_SIZE = 1 << 18  # one datagram; kernel dump datagrams stay below 32 KiB
REPLY_TIMEOUT = 5.0  # seconds to wait for the kernel's answer to a window
DUMP_ATTEMPTS = 5  # a dump interrupted by a concurrent change is retried this often

M = TypeVar("M", bound=nlmsg)


# -- layouts, as pyroute2's message classes declare them -----------------------------------
def layout(fields: Sequence[tuple[str, str]]) -> struct.Struct:
    """The struct of a pyroute2 field list such as ``rtmsg.fields`` (native byte order, like
    the kernel's structs)."""
    return struct.Struct("=" + "".join(fmt for _, fmt in fields))


def _field_offset(fields: Sequence[tuple[str, str]], name: str) -> int:
    names = [field for field, _ in fields]
    return layout(fields[: names.index(name)]).size


def nla_type(msg_class: type[nlmsg], name: str) -> int:
    """The numeric attribute type of ``name`` in a pyroute2 message class's NLA map."""
    for index, entry in enumerate(msg_class.nla_map):
        if entry[0] == name or (isinstance(entry[0], int) and entry[1] == name):
            return entry[0] if isinstance(entry[0], int) else index
    raise LookupError(f"{msg_class.__name__} has no attribute {name}")


HEADER = layout(nlmsg.header)
NLA = struct.Struct("=HH")
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
_I32 = struct.Struct("=i")
_U32 = struct.Struct("=I")
_SEQ_OFFSET = _field_offset(nlmsg.header, "sequence_number")


# -- messages ---------------------------------------------------------------------------------
def encode(msg: nlmsg, msg_type: int, flags: int) -> bytearray:
    """A pyroute2 message, encoded by pyroute2, as a request (sequence number stamped later)."""
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags
    msg.encode()
    return bytearray(msg.data)


def make(msg_class: type[M], attrs: Sequence[tuple[str, object]] = (), /,
         **fields: int) -> M:
    """A pyroute2 message: ``fields`` of its fixed part (e.g. ``rtmsg``'s ``dst_len``), then
    ``attrs`` (pyroute2 names and values; nested ones as ``{"attrs": [...]}``)."""
    msg: M = msg_class()
    for name, value in fields.items():
        msg[name] = value
    msg["attrs"] = list(attrs)
    return msg


def build(msg_class: type[nlmsg], msg_type: int, flags: int,
          attrs: Sequence[tuple[str, object]] = (), /, **fields: int) -> bytearray:
    """One request, made by :func:`make` and encoded by pyroute2."""
    return encode(make(msg_class, attrs, **fields), msg_type, flags)


def u32(value: int) -> bytes:
    """A 32-bit value as a template slot takes it (native byte order, like the kernel's)."""
    return _U32.pack(value)


def asciiz(name: str) -> bytes:
    """A name as a template slot takes it (NUL-terminated; the slot fixes its length)."""
    return name.encode() + b"\0"


class Template:
    """One request shape encoded once by pyroute2; each use stamps its values into a copy.

    pyroute2's generic encoder costs 30-140 us per request in a tight loop and measured
    ~160 us per request inside a CNI ADD; rendering a template costs 1-2 us. ``slots``
    name what varies: a field of the message's fixed part (``"index"``) or an attribute,
    nested ones by path (``("IFLA_LINKINFO", "IFLA_INFO_DATA", "VETH_INFO_PEER",
    "IFLA_IFNAME")``), at the offsets pyroute2's own decoder reports. Values are bytes of
    exactly the slot's size (:func:`u32`, :func:`asciiz`, ``socket.inet_aton``); a name's
    length is part of the shape, so a template serves names of the length it was built with.
    """

    __slots__ = ("data", "slots")

    def __init__(self, msg: nlmsg, msg_type: int, flags: int,
                 *slots: str | tuple[str, ...]) -> None:
        self.data = bytes(encode(msg, msg_type, flags))
        decoded = type(msg)(self.data)
        decoded.decode()
        formats = dict(msg.fields)
        self.slots: list[slice] = []
        for slot in slots:
            if isinstance(slot, str) and slot in formats:
                start = HEADER.size + _field_offset(msg.fields, slot)
                self.slots.append(slice(start, start + struct.calcsize("=" + formats[slot])))
                continue
            node = decoded
            for name in (slot,) if isinstance(slot, str) else slot:
                node = node.nla(name)
            start = node.offset + NLA.size
            self.slots.append(slice(start, node.offset + node.length))

    def render(self, *values: bytes) -> bytearray:
        out = bytearray(self.data)
        for where, value in zip(self.slots, values, strict=True):
            out[where] = value
        if len(out) != len(self.data):  # a value of the wrong size moved what follows it
            raise ValueError(f"values of the wrong size for this template: {values!r}")
        return out


class DumpInterrupted(OSError):
    """The kernel kept flagging a dump NLM_F_DUMP_INTR: the data changed while being read."""


class Message(NamedTuple):
    """Where one netlink message sits in a received datagram."""

    data: bytes | memoryview
    offset: int
    length: int
    type: int
    flags: int
    seq: int

    def raw(self) -> bytes:
        return bytes(self.data[self.offset : self.offset + self.length])

    def decode(self, msg_class: builtins.type[M]) -> M:
        """The message decoded by a pyroute2 message class."""
        msg: M = msg_class(self.raw())
        msg.decode()
        return msg

    def attributes(self, fixed: struct.Struct) -> tuple[tuple[int, ...], dict[int, bytes]]:
        """The fixed part (as ``layout(msg_class.fields)`` unpacks it) and the top-level
        attributes by type, undecoded: for replies on a hot path, where pyroute2's decoder
        is too slow (a veth's RTM_NEWLINK: ~120 us in a loop, ~400 us inside a CNI ADD;
        this: ~17 us)."""
        start, end = self.offset + HEADER.size, self.offset + self.length
        fields = fixed.unpack_from(self.data, start)
        found: dict[int, bytes] = {}
        offset = start + fixed.size
        while offset + NLA.size <= end:
            length, kind = NLA.unpack_from(self.data, offset)
            if length < NLA.size:
                break
            found[kind & NLA_TYPE_MASK] = bytes(self.data[offset + NLA.size : offset + length])
            offset += (length + 3) & ~3
        return fields, found

    def error(self) -> int:
        """errno of an NLMSG_ERROR (0: an acknowledgement) or of an NLMSG_DONE (0: success)."""
        if self.length < HEADER.size + _I32.size:
            return 0
        code: int = -_I32.unpack_from(self.data, self.offset + HEADER.size)[0]
        return code

    def error_text(self, code: int) -> str:
        """strerror plus the kernel's extended-ack message, decoded by pyroute2's nlmsgerr."""
        text = os.strerror(code)
        detail: str | None = None
        with contextlib.suppress(Exception):  # a malformed payload must not hide the errno
            detail = self.decode(nlmsgerr).get_attr("NLMSGERR_ATTR_MSG")
        return f"{text}: {detail}" if detail else text


def _messages(data: bytes | memoryview, size: int) -> Iterator[Message]:
    """The netlink messages in the first ``size`` bytes of a datagram."""
    offset = 0
    while offset + HEADER.size <= size:
        length, msg_type, flags, seq, _pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            return
        yield Message(data, offset, length, msg_type, flags, seq)
        offset += (length + 3) & ~3


# -- namespaces -------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def open_netns(path: str) -> int:
    """An fd for a namespace path (``/proc/PID/ns/net`` or a bind mount)."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)


def _socket_in(netns_fd: int) -> socket.socket:
    """A netlink socket inside another namespace, made by a thread that then ends."""
    made: list[socket.socket | BaseException] = []

    def enter_and_open() -> None:
        try:
            if _libc.setns(netns_fd, CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
            made.append(_socket())
        except BaseException as exc:
            made.append(exc)

    thread = threading.Thread(target=enter_and_open, name="netns-socket")
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


def _open_socket(netns: int | str | None) -> socket.socket:
    if netns is None:
        return _socket()
    if isinstance(netns, int):
        return _socket_in(netns)
    # A name is one of ``ip netns``; it must exist (never created here).
    fd = open_netns(netns if "/" in netns else f"{NETNS_DIR}/{netns}")
    try:
        return _socket_in(fd)
    finally:
        os.close(fd)


# -- the channel ------------------------------------------------------------------------------
class Channel:
    """One NETLINK_ROUTE socket used synchronously: pipelined requests, GETs and dumps.

    ``netns``: None for the current network namespace, an fd of a namespace, or a name
    (``/var/run/netns/NAME``) or path, which must exist.
    """

    def __init__(self, netns: int | str | None = None) -> None:
        sock = _open_socket(netns)
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _stamp(self, message: bytearray) -> int:
        self._seq = self._seq % 0xFFFFFFFF + 1  # 1 .. 2**32-1; 0 is what notifications use
        _U32.pack_into(message, _SEQ_OFFSET, self._seq)
        return self._seq

    # -- requests ----------------------------------------------------------------------------

    def call(self, *messages: bytearray) -> None:
        """Send requests (each asking for an ACK) together; raise the first one's error."""
        for code, text in self.transact(messages):
            if code:
                raise OSError(code, text)

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

    @staticmethod
    def _match(data: memoryview, size: int, pending: dict[int, int],
               results: list[tuple[int, str]]) -> None:
        for message in _messages(data, size):
            if message.type != NLMSG_ERROR:
                continue
            index = pending.pop(message.seq, None)
            if index is None:
                continue  # the late answer to a window given up on earlier
            code = message.error()
            if code:
                results[index] = (code, message.error_text(code))

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

    # -- queries -----------------------------------------------------------------------------

    def get(self, request: bytearray) -> Message:
        """The kernel's one answer to a GET request (not a dump); raises its error."""
        found = self._read(request, dump=False)
        if not found:
            raise OSError(errno.ENODATA, "no answer from the kernel")
        return found[0]

    def dump(self, request: bytearray) -> list[Message]:
        """Run one dump request; return its messages (before NLMSG_DONE), with copied data.

        A dump interrupted by a concurrent change is run again, up to DUMP_ATTEMPTS times.
        """
        attempt = 1
        while True:
            try:
                return self._read(request, dump=True)
            except DumpInterrupted:
                if attempt == DUMP_ATTEMPTS:
                    raise
                attempt += 1

    def _read(self, request: bytearray, dump: bool) -> list[Message]:
        seq = self._stamp(request)
        self.sock.send(request)
        found: list[Message] = []
        interrupted = False
        while True:
            size = self.sock.recv_into(self._buffer)
            data = bytes(self._view[:size])
            for message in _messages(data, size):
                if message.seq != seq:
                    continue
                interrupted = interrupted or bool(message.flags & NLM_F_DUMP_INTR)
                if message.type in (NLMSG_DONE, NLMSG_ERROR):
                    return self._finish(message, found, interrupted)
                found.append(message)
                if not dump:
                    return found

    @staticmethod
    def _finish(last: Message, found: list[Message], interrupted: bool) -> list[Message]:
        code = last.error()
        if code:
            raise OSError(code, last.error_text(code))
        if interrupted:
            raise DumpInterrupted(errno.EINTR, "dump interrupted by a concurrent change")
        return found
