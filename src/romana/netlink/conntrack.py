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
the entry's own original tuple, zone and id, so only that entry goes. The kernel walks
every bucket of its hash table for each dump, whatever this namespace tracks: ~14 ms per
dump here (262,144 buckets), ~42 ms at 100,000 entries (``benchmarks/conntrack_bench.py``).
For a burst of releases on a host that tracks few flows, one unfiltered dump matched here
costs less than two filtered dumps per address: :func:`one_walk_cheaper` chooses.
:func:`sweep_flows` is the agent's start-up sweep: one walk of the whole table that
deletes the flows of every address a predicate condemns and reports every address seen,
so that afterwards the agent knows which addresses can have flows at all and skips the
dumps of the others (:mod:`romana.agent.policy`).

Messages are built and read with :mod:`romana.netlink.nfmsg`; a socket per call, in the
caller's network namespace, so any thread may call :func:`forget_flows`.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

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
SIDES = (CTA_TUPLE_ORIG, CTA_TUPLE_REPLY)
FILTER_FLAGS = {CTA_TUPLE_ORIG: CTA_FILTER_ORIG_FLAGS, CTA_TUPLE_REPLY: CTA_FILTER_REPLY_FLAGS}


def forget_flows(ips: Iterable[str], one_walk: bool | None = None) -> int:
    """Delete every tracked flow an address of ``ips`` started or was sent (IPv4);
    returns how many went. OSError if the kernel refuses (entries already gone are not
    an error). ``one_walk``: read the namespace's whole table once and match here,
    instead of two filtered dumps per address (None: whichever :func:`one_walk_cheaper`
    says)."""
    wanted = sorted({ipaddress.IPv4Address(ip).packed for ip in ips})
    if not wanted:
        return 0
    if one_walk is None:
        one_walk = one_walk_cheaper(len(wanted), *_table_size())
    with _Socket() as sock:
        entries: dict[bytes, bytes] = {}  # raw id (or tuple) -> the delete request's attributes
        if one_walk:
            entries.update(sock.matching(set(wanted), None))
        else:
            for address in wanted:
                for side in SIDES:
                    entries.update(sock.matching({address}, side))
        return sock.delete(list(entries.values()))


@dataclass(frozen=True)
class Swept:
    """What one walk of the table found: ``seen``, every address that was the original or
    the reply source of an entry (the two sides :func:`forget_flows` matches); ``deleted``,
    the entries deleted; ``failed``, addresses with an entry the kernel refused to delete."""

    seen: frozenset[str]
    deleted: int
    failed: frozenset[str]


def sweep_flows(condemned: Callable[[str], bool]) -> Swept:
    """Read every IPv4 entry of this namespace's table once and delete those whose original
    or reply source is an address ``condemned`` says yes to (asked once per address).
    OSError if the walk itself fails; a refused delete only lands its addresses in
    ``failed`` (the caller must then still treat them as tracked)."""
    verdicts: dict[bytes, bool] = {}
    requests: list[bytes] = []
    doomed: list[frozenset[bytes]] = []  # per request: the condemned addresses it carries
    with _Socket() as sock:
        for attrs in sock.entries(b""):
            sources = {s for s in (_source(attrs.get(side, b"")) for side in SIDES) if s}
            hit = set()
            for address in sources:
                verdict = verdicts.get(address)
                if verdict is None:
                    verdict = verdicts[address] = condemned(_text(address))
                if verdict:
                    hit.add(address)
            request = _delete_request(attrs) if hit else None
            if request is not None:
                requests.append(request)
                doomed.append(frozenset(hit))
        refused: list[int] = []
        deleted = sock.delete(requests, refused)
    failed = {_text(a) for i in refused for a in doomed[i]}
    return Swept(frozenset(_text(a) for a in verdicts), deleted, frozenset(failed))


def _text(address: bytes) -> str:
    return str(ipaddress.IPv4Address(address))


# What a dump costs here (kernel 6.18, 262,144 buckets, docs/benchmarks.md): the kernel
# walks every hash bucket of every namespace for each dump; a filtered dump then costs
# little per entry, an unfiltered one mostly the Python that reads each entry.
WALK_PER_BUCKET = 55e-9  # seconds
FILTERED_PER_ENTRY = 0.4e-6
READ_PER_ENTRY = 14e-6


def one_walk_cheaper(addresses: int, tracked: int, buckets: int) -> bool:
    """Whether one unfiltered dump (matched here) beats two filtered dumps per address:
    for a burst of releases on a host tracking few flows."""
    walk = buckets * WALK_PER_BUCKET
    return walk + tracked * READ_PER_ENTRY < addresses * 2 * (walk + tracked * FILTERED_PER_ENTRY)


def _table_size() -> tuple[int, int]:
    """(entries this namespace tracks, the kernel's hash buckets); unknown: a large table."""
    try:
        with open("/proc/sys/net/netfilter/nf_conntrack_count") as count:
            tracked = int(count.read())
        with open("/proc/sys/net/netfilter/nf_conntrack_buckets") as buckets:
            return tracked, int(buckets.read())
    except (OSError, ValueError):
        return 1 << 30, 1


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

    def entries(self, attrs_filter: bytes) -> Iterator[dict[int, bytes]]:
        """Every IPv4 entry the kernel sends for one dump (``attrs_filter``: CTA_FILTER, or
        nothing for the whole table), as its attributes."""
        seq, request = self._message(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, attrs_filter)
        self.sock.send(request)
        for kind, payload in self._replies(seq):
            if kind == NLMSG_DONE:
                return
            yield attributes(payload[NFGEN.size :])

    def matching(self, addresses: set[bytes], side: int | None) -> Iterator[tuple[bytes, bytes]]:
        """Entries whose ``side`` tuple's source is one of ``addresses`` (one address:
        filtered in the kernel), or, with ``side`` None, whose original or reply source
        is (the whole table read): (identity, what deletes it)."""
        attrs_filter = b""
        if side is not None:
            (address,) = addresses
            flags = struct.pack("=I", CTA_FILTER_FLAG_IP_SRC)
            attrs_filter = nested(side, nested(CTA_TUPLE_IP, attribute(CTA_IP_V4_SRC, address)))
            attrs_filter += nested(CTA_FILTER, attribute(FILTER_FLAGS[side], flags))
        sides = SIDES if side is None else (side,)
        for attrs in self.entries(attrs_filter):
            # Matched here too: a kernel without CTA_FILTER sends every entry.
            if not any(_source(attrs.get(s, b"")) in addresses for s in sides):
                continue
            delete = _delete_request(attrs)
            if delete is not None:
                yield attrs.get(CTA_ID, attrs[CTA_TUPLE_ORIG]), delete

    def delete(self, requests: list[bytes], refused: list[int] | None = None) -> int:
        """Send the deletes; how many went. A refusal (other than the entry being gone
        already) raises OSError, or with ``refused`` given is listed there by index."""
        deleted = 0
        for start in range(0, len(requests), WINDOW):
            window = [
                self._message(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, attrs)
                for attrs in requests[start : start + WINDOW]
            ]
            self.sock.send(b"".join(message for _, message in window))
            pending = {seq: start + i for i, (seq, _) in enumerate(window)}
            while pending:
                for seq, code in self._acks():
                    index = pending.pop(seq, None)
                    if index is None:
                        continue
                    if code == 0:
                        deleted += 1
                    elif code == -errno.ENOENT:  # gone meanwhile (it timed out, or closed)
                        continue
                    elif refused is not None:
                        refused.append(index)
                    else:
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


def _delete_request(attrs: dict[int, bytes]) -> bytes | None:
    """What deletes this very entry: its original tuple, zone and id."""
    orig = attrs.get(CTA_TUPLE_ORIG)
    if orig is None:
        return None
    delete = nested(CTA_TUPLE_ORIG, orig)
    for extra in (CTA_ZONE, CTA_ID):  # only this very entry, in its zone
        if extra in attrs:
            delete += attribute(extra, attrs[extra])
    return delete


def _source(tuple_bytes: bytes) -> bytes | None:
    ip = attributes(tuple_bytes).get(CTA_TUPLE_IP)
    return None if ip is None else attributes(ip).get(CTA_IP_V4_SRC)


__all__ = ["Swept", "forget_flows", "sweep_flows"]
