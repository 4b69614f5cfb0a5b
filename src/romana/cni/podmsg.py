"""The netlink messages of pod plumbing: request templates and reply parsing.

ADD and DEL (the critical path) render templates encoded once per shape by pyroute2, and
read link replies at the offsets of ifinfmsg's layout; :mod:`romana.cni.podnet` sends them.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from romana.netlink import (
    IFF_UP,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    Message,
    Template,
    asciiz,
    ifaddrmsg,
    ifinfmsg,
    layout,
    make,
    nla_type,
    rt_scope,
    rt_type,
    rtmsg,
)

MAIN_TABLE = 254
RTEXT_FILTER_SKIP_STATS = 1 << 3  # linux/rtnetlink.h: link replies without counters
NETNS_DIR = Path("/var/run/netns")
SCOPE_LINK, SCOPE_UNIVERSE = rt_scope["link"], rt_scope["universe"]
UNICAST = rt_type["unicast"]
ACK = NLM_F_REQUEST | NLM_F_ACK
CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
DUMP = NLM_F_REQUEST | NLM_F_DUMP


@dataclass(frozen=True, slots=True)
class Link:
    name: str
    index: int
    mac: str
    up: bool


# -- messages ---------------------------------------------------------------------------------
# ADD and DEL (the critical path) render templates encoded once per shape by pyroute2, and
# read link replies at the offsets of ifinfmsg's layout. Encoding and decoding each message
# with pyroute2 measured ~160 us per request (8 per ADD) and ~400 us per link reply (2 per
# ADD): the agent's ADD p50 went 4.2 -> 7.3 ms, benchmarks/cni_bench.py's ADD ratio 1.42 ->
# 1.65. CHECK's dumps are rare: ``build`` and pyroute2's decoder.
_PEER = ("IFLA_LINKINFO", "IFLA_INFO_DATA", "VETH_INFO_PEER")
_IFINFO = layout(ifinfmsg.fields)
IFLA_ADDRESS = nla_type(ifinfmsg, "IFLA_ADDRESS")
IFLA_IFNAME = nla_type(ifinfmsg, "IFLA_IFNAME")


@functools.cache
def veth_template(host_length: int, peer_length: int) -> Template:
    """The pair, host end up, the peer (down) born in the pod's namespace (by fd)."""
    peer = {"attrs": [("IFLA_IFNAME", "p" * peer_length), ("IFLA_MTU", 0), ("IFLA_NET_NS_FD", 0)]}
    info = {
        "attrs": [
            ("IFLA_INFO_KIND", "veth"),
            ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]}),
        ]
    }
    msg = make(
        ifinfmsg,
        [("IFLA_IFNAME", "h" * host_length), ("IFLA_MTU", 0), ("IFLA_LINKINFO", info)],
        flags=IFF_UP,
        change=IFF_UP,
    )
    return Template(
        msg,
        RTM_NEWLINK,
        CREATE,
        "IFLA_IFNAME",
        "IFLA_MTU",
        (*_PEER, "IFLA_IFNAME"),
        (*_PEER, "IFLA_MTU"),
        (*_PEER, "IFLA_NET_NS_FD"),
    )


@functools.cache
def _by_name(msg_type: int, flags: int, length: int, up: bool | None = None) -> Template:
    """A link request naming the link (``up``: set it up/down; None: leave it)."""
    attrs: list[tuple[str, object]] = [("IFLA_IFNAME", "n" * length)]
    if msg_type == RTM_GETLINK:
        attrs.append(("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS))
    state = {} if up is None else {"flags": IFF_UP if up else 0, "change": IFF_UP}
    return Template(make(ifinfmsg, attrs, **state), msg_type, flags, "IFLA_IFNAME")


@functools.cache
def set_up_template() -> Template:
    return Template(make(ifinfmsg, flags=IFF_UP, change=IFF_UP), RTM_NEWLINK, ACK, "index")


@functools.cache
def address_template() -> Template:
    msg = make(
        ifaddrmsg,
        [("IFA_LOCAL", "0.0.0.0"), ("IFA_ADDRESS", "0.0.0.0")],
        family=socket.AF_INET,
        prefixlen=32,
    )
    return Template(msg, RTM_NEWADDR, CREATE, "index", "IFA_LOCAL", "IFA_ADDRESS")


@functools.cache
def route_template(
    msg_type: int,
    flags: int,
    protocol: int,
    scope: int,
    length: int,
    gateway: str | None = None,
    oif: bool = True,
) -> Template:
    """A main-table route; slots: its destination unless default (length 0), its oif if
    ``oif``. ``gateway`` is fixed in the shape."""
    attrs: list[tuple[str, object]] = [("RTA_DST", "0.0.0.0")] if length else []
    if gateway is not None:
        attrs.append(("RTA_GATEWAY", gateway))
    if oif:
        attrs.append(("RTA_OIF", 0))
    msg = make(
        rtmsg,
        attrs,
        family=socket.AF_INET,
        dst_len=length,
        table=MAIN_TABLE,
        proto=protocol,
        scope=scope,
        type=UNICAST,
    )
    slots = (["RTA_DST"] if length else []) + (["RTA_OIF"] if oif else [])
    return Template(msg, msg_type, flags, *slots)


def name_request(msg_type: int, flags: int, name: str, up: bool | None = None) -> bytearray:
    value = asciiz(name)
    return _by_name(msg_type, flags, len(value) - 1, up).render(value)


def parse_link(message: Message) -> Link:
    """Read at the offsets of ``ifinfmsg``'s layout (see ``Message.attributes``): two link
    replies per ADD."""
    (*_, index, flags, _change), attrs = message.attributes(_IFINFO)
    return Link(
        attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(),
        index,
        ":".join(f"{b:02x}" for b in attrs.get(IFLA_ADDRESS, b"")),
        bool(flags & IFF_UP),
    )


def parse_addresses(found: Sequence[Message]) -> list[tuple[int, str, int]]:
    """(interface index, address, prefix length) of RTM_NEWADDR messages (IPv4)."""
    addresses = []
    for message in found:
        msg: ifaddrmsg = message.decode(ifaddrmsg)
        address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if msg["family"] == socket.AF_INET and address:
            addresses.append((msg["index"], address, msg["prefixlen"]))
    return addresses


def parse_routes(found: Sequence[Message]) -> list[tuple[str, str | None, int | None, int]]:
    """(prefix, gateway, oif, scope) of RTM_NEWROUTE messages of the main table."""
    routes = []
    for message in found:
        msg: rtmsg = message.decode(rtmsg)
        table = msg.get_attr("RTA_TABLE")
        if (msg["table"] if table is None else table) != MAIN_TABLE:
            continue
        routes.append(
            (
                f"{msg.get_attr('RTA_DST') or '0.0.0.0'}/{msg['dst_len']}",
                msg.get_attr("RTA_GATEWAY"),
                msg.get_attr("RTA_OIF"),
                msg["scope"],
            )
        )
    return routes
