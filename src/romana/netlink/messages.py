"""Netlink messages: pyroute2's classes and constants, fast templates, reply parsing."""

from __future__ import annotations

import builtins
import contextlib
import os
import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple, TypeVar

from pyroute2.netlink import (
    nlmsg,
    nlmsgerr,
)

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
U32 = struct.Struct("=I")
SEQ_OFFSET = _field_offset(nlmsg.header, "sequence_number")


# -- messages ---------------------------------------------------------------------------------
def encode(msg: nlmsg, msg_type: int, flags: int) -> bytearray:
    """A pyroute2 message, encoded by pyroute2, as a request (sequence number stamped later)."""
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags
    msg.encode()
    return bytearray(msg.data)


def make(msg_class: type[M], attrs: Sequence[tuple[str, object]] = (), /, **fields: int) -> M:
    """A pyroute2 message: ``fields`` of its fixed part (e.g. ``rtmsg``'s ``dst_len``), then
    ``attrs`` (pyroute2 names and values; nested ones as ``{"attrs": [...]}``)."""
    msg: M = msg_class()
    for name, value in fields.items():
        msg[name] = value
    msg["attrs"] = list(attrs)
    return msg


def build(
    msg_class: type[nlmsg],
    msg_type: int,
    flags: int,
    attrs: Sequence[tuple[str, object]] = (),
    /,
    **fields: int,
) -> bytearray:
    """One request, made by :func:`make` and encoded by pyroute2."""
    return encode(make(msg_class, attrs, **fields), msg_type, flags)


def u32(value: int) -> bytes:
    """A 32-bit value as a template slot takes it (native byte order, like the kernel's)."""
    return U32.pack(value)


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

    def __init__(
        self, msg: nlmsg, msg_type: int, flags: int, *slots: str | tuple[str, ...]
    ) -> None:
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


def split_datagram(data: bytes | memoryview, size: int) -> Iterator[Message]:
    """The netlink messages in the first ``size`` bytes of a datagram."""
    offset = 0
    while offset + HEADER.size <= size:
        length, msg_type, flags, seq, _pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            return
        yield Message(data, offset, length, msg_type, flags, seq)
        offset += (length + 3) & ~3
