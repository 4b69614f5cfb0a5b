"""Netlink (NETLINK_ROUTE) for Romana: the only package that imports pyroute2.

Users: the agent's route table (:mod:`romana.agent.route_table`) and the CNI's pod plumbing
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

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
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

from romana.netlink.channel import Channel, open_netns
from romana.netlink.messages import (
    HEADER,
    NLA,
    NLA_TYPE_MASK,
    DumpInterrupted,
    Message,
    Template,
    asciiz,
    build,
    encode,
    layout,
    make,
    nla_type,
    u32,
)

__all__ = [
    "FR_ACT_TO_TBL",
    "HEADER",
    "IFF_UP",
    "NLA",
    "NLA_TYPE_MASK",
    "NLM_F_ACK",
    "NLM_F_CREATE",
    "NLM_F_DUMP",
    "NLM_F_EXCL",
    "NLM_F_REPLACE",
    "NLM_F_REQUEST",
    "RTM_DELLINK",
    "RTM_DELROUTE",
    "RTM_DELRULE",
    "RTM_GETADDR",
    "RTM_GETLINK",
    "RTM_GETROUTE",
    "RTM_GETRULE",
    "RTM_NEWADDR",
    "RTM_NEWLINK",
    "RTM_NEWROUTE",
    "RTM_NEWRULE",
    "Channel",
    "DumpInterrupted",
    "Message",
    "Template",
    "asciiz",
    "build",
    "encode",
    "fibmsg",
    "ifaddrmsg",
    "ifinfmsg",
    "layout",
    "make",
    "nla_type",
    "open_netns",
    "rt_scope",
    "rt_type",
    "rtmsg",
    "u32",
]
