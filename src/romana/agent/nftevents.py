"""Who changes the agent's nftables table: the kernel's nftables notifications, read as
they happen, so that a table someone else removed or edited is put back at once.

Every nftables transaction is announced on the netlink group ``NFNLGRP_NFTABLES``: one
message per object it touched (table, chain, rule, set, element), each naming its table,
then one ``NEWGEN`` message with the new generation and the pid and name of the process
that made it. :class:`TableEvents` reads that group and reports each transaction that
touched ``inet romana`` and was not made by one of the agent's own ``nft`` processes.
``nft flush ruleset`` (what restarting a host's nftables service does with Debian's
default configuration) deletes the table: it is reported before the next packet has had
much chance to pass. When the kernel drops notifications because the socket's buffer
overflowed (a big load of our own announces every element), :meth:`TableEvents.next`
says so, and the caller checks the table against the kernel instead.

The few fields it needs are read with :mod:`romana.netlink.nfmsg`; nothing here writes
to the kernel.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Container
from dataclasses import dataclass

from romana.netlink.nfmsg import NETLINK_NETFILTER, NFGEN, attributes, messages

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFTA_GEN_PROC_PID = 2
NFTA_GEN_PROC_NAME = 3
NFPROTO_INET = 1
RCVBUF = 4 << 20  # asked for; the kernel caps it at net.core.rmem_max


@dataclass(frozen=True, slots=True)
class Change:
    """A transaction that touched the table, or notifications the kernel dropped."""

    pid: int  # 0 when unknown (``lost``)
    process: str
    lost: bool = False

    def __str__(self) -> str:
        if self.lost:
            return "nftables notifications were dropped (socket buffer full)"
        return f"changed by pid {self.pid} ({self.process or '?'})"


class TableEvents:
    """Foreign changes to table ``family name`` in the current network namespace."""

    def __init__(self, table: str, own_pids: Container[int], family: int = NFPROTO_INET) -> None:
        self.table = table.encode() + b"\0"
        self.family = family
        self.own_pids = own_pids
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self.sock.bind((0, 0))
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self._touched = False  # the transaction being read touched our table
        self._pending: list[Change] = []

    def close(self) -> None:
        self.sock.close()

    async def next(self) -> Change:
        """The next foreign change (waits for it)."""
        loop = asyncio.get_running_loop()
        while not self._pending:
            try:
                data = await loop.sock_recv(self.sock, 1 << 16)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._touched = False
                return Change(0, "", lost=True)
            self._pending += self.parse(data)
        return self._pending.pop(0)

    def parse(self, data: bytes) -> list[Change]:
        """The foreign changes whose ``NEWGEN`` is in ``data`` (one datagram)."""
        found = []
        for kind, _, body in messages(data):
            if kind >> 8 != NFNL_SUBSYS_NFTABLES or len(body) < NFGEN.size:
                continue
            attrs = attributes(body[NFGEN.size :])
            if kind & 0xFF == NFT_MSG_NEWGEN:
                pid = int.from_bytes(attrs.get(NFTA_GEN_PROC_PID, b"\0" * 4)[:4], "big")
                name = attrs.get(NFTA_GEN_PROC_NAME, b"").rstrip(b"\0").decode(errors="replace")
                if self._touched and pid not in self.own_pids:
                    found.append(Change(pid, name))
                self._touched = False
            elif body[0] == self.family and attrs.get(1) == self.table:
                self._touched = True  # attribute 1 names the table in every object message
        return found


__all__ = ["Change", "TableEvents"]
