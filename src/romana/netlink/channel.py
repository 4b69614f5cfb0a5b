"""A NETLINK_ROUTE socket in any network namespace, with pipelined requests and dumps."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from pyroute2.netlink import (
    NETLINK_EXT_ACK,
    NETLINK_GET_STRICT_CHK,
    NETLINK_ROUTE,
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOL_NETLINK,
)

from romana.netlink.messages import SEQ_OFFSET, U32, DumpInterrupted, Message, split_datagram

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl: the CLONE_NEW* type of a namespace fd (Linux 4.11)
NETNS_DIR = "/var/run/netns"  # where ``ip netns`` keeps named namespaces
RCVBUF = 1 << 20  # asked for; the kernel caps it at net.core.rmem_max (and doubles it)
ACK_COST = 2048  # receive-buffer bytes one queued acknowledgement may take (measured ~832)
WINDOW_MAX = 1024  # requests per send(); beyond this the kernel's work dominates anyway
RECV_SIZE = 1 << 18  # one datagram; kernel dump datagrams stay below 32 KiB
REPLY_TIMEOUT = 5.0  # seconds to wait for the kernel's answer to a window
DUMP_ATTEMPTS = 5  # a dump interrupted by a concurrent change is retried this often


# -- namespaces -------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def open_netns(path: str) -> int:
    """An fd for a network namespace path (``/proc/PID/ns/net`` or a bind mount).

    The path comes from the runtime (``CNI_NETNS``) and may be anything: it is opened
    without blocking (a plain open of a FIFO waits for a writer, and the caller is often an
    event loop) and without becoming a controlling terminal, then asked for its namespace
    type. Anything but a network namespace raises ``OSError(EINVAL)``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        os.close(fd)
        raise OSError(errno.EINVAL, "not a network namespace", path) from None
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise OSError(errno.EINVAL, "a namespace, but not a network namespace", path)
    return fd


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
        self.datagrams_sent = 0  # requests are pipelined: far fewer datagrams than requests

    def close(self) -> None:
        self._view.release()
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _stamp(self, message: bytearray) -> int:
        self._seq = self._seq % 0xFFFFFFFF + 1  # 1 .. 2**32-1; 0 is what notifications use
        U32.pack_into(message, SEQ_OFFSET, self._seq)
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
            self.datagrams_sent += 1
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
                self._give_up(
                    pending,
                    results,
                    errno.ENOBUFS,
                    "reply lost (receive buffer overrun): state unknown",
                )
            else:
                self._match(self._view, size, pending, results)

    @staticmethod
    def _match(
        data: memoryview, size: int, pending: dict[int, int], results: list[tuple[int, str]]
    ) -> None:
        for message in split_datagram(data, size):
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
    def _give_up(
        pending: dict[int, int], results: list[tuple[int, str]], code: int, text: str
    ) -> None:
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
        self.datagrams_sent += 1
        found: list[Message] = []
        interrupted = False
        while True:
            size = self.sock.recv_into(self._buffer)
            data = bytes(self._view[:size])
            for message in split_datagram(data, size):
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
