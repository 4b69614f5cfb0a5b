"""Forget the kernel's connection-tracking entries of addresses that changed hands.

Policies accept ``ct state established,related`` first, so a flow the kernel still tracks
for a released pod IP would carry on for the next pod given that IP, whatever the policies
say about the new pod (a UDP entry lives 30 s, 120 s once assured, and traffic keeps it
alive). When an address is released or handed out again, the entries that involve it go:

* ``orig src == IP``: flows the address started (masqueraded ones included);
* ``reply src == IP``: flows to the address (for a flow that was not NATed the reply's
  source is the original destination; for one sent to a Service VIP and DNATed to the
  pod, it is the pod).

Each is one dump filtered in the kernel (``CTA_FILTER``, Linux 5.11; an older kernel
ignores the filter and the match is made here) followed by one delete per entry, keyed by
the entry's own original tuple, zone and id, so only that entry goes. The kernel walks its
whole table for each dump: ~0.9 us per entry here, so ~90 ms per dump at 100,000 entries
(docs/benchmarks.md). Messages are built and read with :mod:`romana.netlink.nfmsg`; a
socket per call, in the caller's network namespace, so any thread may call
:func:`forget_flows`.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Iterator

from romana.netlink.nfmsg import (
    HEADER,
    NETLINK_NETFILTER,
    NFGEN,
    attribute,
    attributes,
    messages,
    nested,
)

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_ID, CTA_ZONE, CTA_FILTER = 1, 2, 12, 18, 25
CTA_TUPLE_IP, CTA_IP_V4_SRC = 1, 1
CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 1, 2
CTA_FILTER_FLAG_IP_SRC = 1 << 0
_ERROR = struct.Struct("=i")
RECV_SIZE = 1 << 16
WINDOW = 256  # deletes per send(); their acknowledgements must fit the receive buffer
SIDES = ((CTA_TUPLE_ORIG, CTA_FILTER_ORIG_FLAGS), (CTA_TUPLE_REPLY, CTA_FILTER_REPLY_FLAGS))


def forget_flows(ips: Iterable[str]) -> int:
    """Delete every tracked flow an address of ``ips`` started or was sent (IPv4);
    returns how many went. OSError if the kernel refuses (entries already gone are not
    an error)."""
    wanted = sorted({ipaddress.IPv4Address(ip).packed for ip in ips})
    if not wanted:
        return 0
    with _Socket() as sock:
        entries: dict[bytes, bytes] = {}  # raw id (or tuple) -> the delete request's attributes
        for address in wanted:
            for side, flags in SIDES:
                for key, request in sock.matching(address, side, flags):
                    entries.setdefault(key, request)
        return sock.delete(list(entries.values()))


class _Socket:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.seq = int.from_bytes(os.urandom(2), "big")

    def __enter__(self) -> _Socket:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def _message(self, kind: int, flags: int, attrs: bytes) -> tuple[int, bytes]:
        self.seq += 1
        body = NFGEN.pack(socket.AF_INET, 0, 0) + attrs
        kind = (NFNL_SUBSYS_CTNETLINK << 8) | kind
        return self.seq, HEADER.pack(HEADER.size + len(body), kind, flags, self.seq, 0) + body

    def matching(self, address: bytes, side: int, flags: int) -> Iterator[tuple[bytes, bytes]]:
        """Entries whose ``side`` tuple has source ``address``: (identity, what deletes it)."""
        filter_tuple = nested(side, nested(CTA_TUPLE_IP, attribute(CTA_IP_V4_SRC, address)))
        filter_flags = nested(
            CTA_FILTER, attribute(flags, struct.pack("=I", CTA_FILTER_FLAG_IP_SRC))
        )
        seq, request = self._message(
            IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, filter_tuple + filter_flags
        )
        self.sock.send(request)
        for kind, payload in self._replies(seq):
            if kind == NLMSG_DONE:
                return
            attrs = attributes(payload[NFGEN.size :])
            tuple_bytes = attrs.get(side, b"")
            if _source(tuple_bytes) != address:
                continue  # a kernel without CTA_FILTER sends every entry
            orig = attrs.get(CTA_TUPLE_ORIG)
            if orig is None:
                continue
            delete = nested(CTA_TUPLE_ORIG, orig)
            for extra in (CTA_ZONE, CTA_ID):  # only this very entry, in its zone
                if extra in attrs:
                    delete += attribute(extra, attrs[extra])
            yield attrs.get(CTA_ID, orig), delete

    def delete(self, requests: list[bytes]) -> int:
        deleted = 0
        for start in range(0, len(requests), WINDOW):
            window = [
                self._message(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, attrs)
                for attrs in requests[start : start + WINDOW]
            ]
            self.sock.send(b"".join(message for _, message in window))
            pending = {seq for seq, _ in window}
            while pending:
                for seq, code in self._acks():
                    if seq not in pending:
                        continue
                    pending.discard(seq)
                    if code == 0:
                        deleted += 1
                    elif code != -errno.ENOENT:  # gone meanwhile (it timed out, or closed)
                        raise OSError(-code, f"conntrack delete: {os.strerror(-code)}")
        return deleted

    def _replies(self, seq: int) -> Iterator[tuple[int, bytes]]:
        while True:
            data = self.sock.recv(RECV_SIZE)
            for kind, message_seq, payload in messages(data):
                if message_seq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    (code,) = _ERROR.unpack_from(payload)
                    if code:
                        raise OSError(-code, f"conntrack dump: {os.strerror(-code)}")
                    continue
                yield kind, payload
                if kind == NLMSG_DONE:
                    return

    def _acks(self) -> Iterator[tuple[int, int]]:
        data = self.sock.recv(RECV_SIZE)
        for kind, seq, payload in messages(data):
            if kind == NLMSG_ERROR:
                yield seq, _ERROR.unpack_from(payload)[0]


def _source(tuple_bytes: bytes) -> bytes | None:
    ip = attributes(tuple_bytes).get(CTA_TUPLE_IP)
    return None if ip is None else attributes(ip).get(CTA_IP_V4_SRC)


__all__ = ["forget_flows"]
