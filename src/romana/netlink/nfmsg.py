"""Netfilter netlink framing (``NETLINK_NETFILTER``): a datagram split into messages, and a
message's attributes. Nothing here needs pyroute2: nftables notifications
(:mod:`romana.agent.nftevents`) and conntrack (:mod:`romana.netlink.conntrack`) read their
few fields with it, instead of a generic decoder per message."""

from __future__ import annotations

import struct
from collections.abc import Iterator

NETLINK_NETFILTER = 12
NLA_F_NESTED = 0x8000
HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big-endian)
_ATTR = struct.Struct("=HH")


def messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence, payload) of each message in one datagram; a truncated one ends it."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, _, seq, _ = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > len(data):
            return
        yield kind, seq, data[offset + HEADER.size : offset + length]
        offset += (length + 3) & ~3


def attributes(data: bytes) -> dict[int, bytes]:
    """Attribute type (nested flag cleared) -> value; the first of a repeated type wins."""
    found: dict[int, bytes] = {}
    offset = 0
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            break
        found.setdefault(kind & 0x3FFF, data[offset + _ATTR.size : offset + length])
        offset += (length + 3) & ~3
    return found


def attribute(kind: int, value: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    return _ATTR.pack(_ATTR.size + len(value), kind) + value + b"\0" * (-len(value) % 4)


def nested(kind: int, inner: bytes) -> bytes:
    return attribute(kind | NLA_F_NESTED, inner)


__all__ = ["HEADER", "NETLINK_NETFILTER", "NFGEN", "attribute", "attributes", "messages", "nested"]
