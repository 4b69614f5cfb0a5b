"""Pod interfaces in the kernel, over :mod:`romana.netlink` (the CNI plugin's side).

What a pod gets (the routed model of docs/cni.md)::

    host ns:  rmnXXXXXXXXXXX (veth, up, proxy_arp=1, proxy_delay=0)
              IP/32 dev rmnXXXXXXXXXXX scope link proto P      (main table)
    pod ns:   IFNAME (veth peer, up), IP/32
              169.254.1.1 dev IFNAME scope link; default via 169.254.1.1 dev IFNAME

Speed is the point of this module (a pod's ADD is on the critical path of its start):

* no processes: no ``ip``, no helper process per namespace. The veth is created from the
  host namespace with its peer born inside the pod's (``IFLA_NET_NS_FD`` on the peer), and
  the pod side is configured through a ``Channel`` opened in the pod's namespace (by fd);
* no generic encoder or decoder on the ADD/DEL path: each request shape is encoded once by
  pyroute2's ``ifinfmsg``/``ifaddrmsg``/``rtmsg`` and then rendered from that template, and
  link replies are read at the offsets of ``ifinfmsg``'s layout (numbers below, at the
  templates). The pod side's three requests go out in one ``send()``. Measured: a pod's
  whole setup takes ~1.8 ms this way, ~6.4 ms through pyroute2's ``IPRoute`` (its generic
  request path costs ~0.5 ms per request). CHECK's dumps use pyroute2's classes both ways;
* ``prepare`` (everything without the address) runs while romanad allocates;
  ``configure`` then needs one datagram in the pod and one request on the host;
* ``DEL`` is one request (set the host end down: the kernel drops IPv4 routes through a
  down device at once). Deleting a veth costs ~16 ms of RCU grace periods inside the
  kernel, so :meth:`PodNetwork.delete_link` is meant to run after the runtime has its
  answer (the pair would also go with the pod's namespace).

Thread safety: each thread (workers, and the event loop's own) gets its own netlink socket
in the host namespace; a ``Plumbing``'s pod socket is used by one command at a time.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from romana.cni.config import GATEWAY
from romana.netlink import (
    IFF_UP,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    Channel,
    Message,
    Template,
    asciiz,
    build,
    ifaddrmsg,
    ifinfmsg,
    layout,
    make,
    nla_type,
    open_netns,
    rt_scope,
    rt_type,
    rtmsg,
    u32,
)

__all__ = ["Link", "Plumbing", "PodNetwork", "open_netns"]

MAIN_TABLE = 254
RTEXT_FILTER_SKIP_STATS = 1 << 3  # linux/rtnetlink.h: link replies without counters
NETNS_DIR = Path("/var/run/netns")
SCOPE_LINK, SCOPE_UNIVERSE = rt_scope["link"], rt_scope["universe"]
UNICAST = rt_type["unicast"]
_ACK = NLM_F_REQUEST | NLM_F_ACK
_CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
_REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
_DUMP = NLM_F_REQUEST | NLM_F_DUMP


@dataclass(frozen=True, slots=True)
class Link:
    name: str
    index: int
    mac: str
    up: bool


@dataclass(frozen=True, slots=True)
class Plumbing:
    """A pod's veth, ready for its address: both links and a socket in the pod's netns."""

    host_link: Link
    pod_link: Link
    pod: Channel

    def close(self) -> None:
        self.pod.close()


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
def _veth(host_length: int, peer_length: int) -> Template:
    """The pair, host end up, the peer (down) born in the pod's namespace (by fd)."""
    peer = {"attrs": [("IFLA_IFNAME", "p" * peer_length), ("IFLA_MTU", 0),
                      ("IFLA_NET_NS_FD", 0)]}
    info = {"attrs": [("IFLA_INFO_KIND", "veth"),
                      ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]})]}
    msg = make(ifinfmsg, [("IFLA_IFNAME", "h" * host_length), ("IFLA_MTU", 0),
                          ("IFLA_LINKINFO", info)], flags=IFF_UP, change=IFF_UP)
    return Template(msg, RTM_NEWLINK, _CREATE, "IFLA_IFNAME", "IFLA_MTU",
                    (*_PEER, "IFLA_IFNAME"), (*_PEER, "IFLA_MTU"), (*_PEER, "IFLA_NET_NS_FD"))


@functools.cache
def _by_name(msg_type: int, flags: int, length: int, up: bool | None = None) -> Template:
    """A link request naming the link (``up``: set it up/down; None: leave it)."""
    attrs: list[tuple[str, object]] = [("IFLA_IFNAME", "n" * length)]
    if msg_type == RTM_GETLINK:
        attrs.append(("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS))
    state = {} if up is None else {"flags": IFF_UP if up else 0, "change": IFF_UP}
    return Template(make(ifinfmsg, attrs, **state), msg_type, flags, "IFLA_IFNAME")


@functools.cache
def _set_up() -> Template:
    return Template(make(ifinfmsg, flags=IFF_UP, change=IFF_UP), RTM_NEWLINK, _ACK, "index")


@functools.cache
def _address() -> Template:
    msg = make(ifaddrmsg, [("IFA_LOCAL", "0.0.0.0"), ("IFA_ADDRESS", "0.0.0.0")],
               family=socket.AF_INET, prefixlen=32)
    return Template(msg, RTM_NEWADDR, _CREATE, "index", "IFA_LOCAL", "IFA_ADDRESS")


@functools.cache
def _route(msg_type: int, flags: int, protocol: int, scope: int, length: int,
           gateway: str | None = None, oif: bool = True) -> Template:
    """A main-table route; slots: its destination unless default (length 0), its oif if
    ``oif``. ``gateway`` is fixed in the shape."""
    attrs: list[tuple[str, object]] = [("RTA_DST", "0.0.0.0")] if length else []
    if gateway is not None:
        attrs.append(("RTA_GATEWAY", gateway))
    if oif:
        attrs.append(("RTA_OIF", 0))
    msg = make(rtmsg, attrs, family=socket.AF_INET, dst_len=length, table=MAIN_TABLE,
               proto=protocol, scope=scope, type=UNICAST)
    slots = (["RTA_DST"] if length else []) + (["RTA_OIF"] if oif else [])
    return Template(msg, msg_type, flags, *slots)


def _name_request(msg_type: int, flags: int, name: str, up: bool | None = None) -> bytearray:
    value = asciiz(name)
    return _by_name(msg_type, flags, len(value) - 1, up).render(value)


def _link(message: Message) -> Link:
    """Read at the offsets of ``ifinfmsg``'s layout (see ``Message.attributes``): two link
    replies per ADD."""
    (*_, index, flags, _change), attrs = message.attributes(_IFINFO)
    return Link(attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(), index,
                ":".join(f"{b:02x}" for b in attrs.get(IFLA_ADDRESS, b"")),
                bool(flags & IFF_UP))


def _addresses(found: Sequence[Message]) -> list[tuple[int, str, int]]:
    """(interface index, address, prefix length) of RTM_NEWADDR messages (IPv4)."""
    addresses = []
    for message in found:
        msg: ifaddrmsg = message.decode(ifaddrmsg)
        address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if msg["family"] == socket.AF_INET and address:
            addresses.append((msg["index"], address, msg["prefixlen"]))
    return addresses


def _routes(found: Sequence[Message]) -> list[tuple[str, str | None, int | None, int]]:
    """(prefix, gateway, oif, scope) of RTM_NEWROUTE messages of the main table."""
    routes = []
    for message in found:
        msg: rtmsg = message.decode(rtmsg)
        table = msg.get_attr("RTA_TABLE")
        if (msg["table"] if table is None else table) != MAIN_TABLE:
            continue
        routes.append((f"{msg.get_attr('RTA_DST') or '0.0.0.0'}/{msg['dst_len']}",
                       msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_OIF"), msg["scope"]))
    return routes


# -- the operations ---------------------------------------------------------------------------
class PodNetwork:
    """Pod veths, addresses and routes; ``protocol`` marks every route it makes."""

    def __init__(self, protocol: int) -> None:
        if not 0 < protocol < 256:
            raise ValueError(f"route protocol {protocol}: must be 1..255")
        self.protocol = protocol
        self._local = threading.local()
        self._forwarding_checked = False

    def _host(self) -> Channel:
        channel: Channel | None = getattr(self._local, "channel", None)
        if channel is None:
            channel = self._local.channel = Channel()
        return channel

    # ADD --------------------------------------------------------------------------------
    def prepare(self, host_name: str, netns_fd: int, ifname: str, mtu: int) -> Plumbing:
        """Everything that needs no address: the veth, both ends up, sysctls. Runs while
        romanad allocates; :meth:`configure` finishes once the address is known."""
        self._create_veth(host_name, netns_fd, ifname, mtu)
        pod: Channel | None = None
        try:
            pod = Channel(netns_fd)
            pod_link = self._get_link(pod, ifname)
            pod.call(_set_up().render(u32(pod_link.index)))
            host = self._get_link(self._host(), host_name)
            self._proxy_arp(host_name)
        except BaseException:
            if pod is not None:
                pod.close()
            with contextlib.suppress(OSError):  # the caller only undoes what it got back
                self.delete_link(host_name)
            raise
        return Plumbing(host, replace(pod_link, up=True), pod)

    def _create_veth(self, host_name: str, netns_fd: int, ifname: str, mtu: int) -> None:
        """The pair, host end up, the peer born (down) in the pod's namespace as ``ifname``.

        The peer cannot be created up (the kernel answers ENOTCONN). EEXIST means either
        end's name is taken: if it is the host end, a veth of an earlier attempt for the
        same attachment is left over and is replaced.
        """
        host, peer = asciiz(host_name), asciiz(ifname)
        request = _veth(len(host) - 1, len(peer) - 1).render(host, u32(mtu), peer, u32(mtu),
                                                             u32(netns_fd))
        try:
            self._host().call(request)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            if self.link(host_name) is None:
                raise OSError(errno.EEXIST, f"the pod already has an interface {ifname}"
                              ) from None
            self.delete_link(host_name)
            self._host().call(request)

    def configure(self, plumbing: Plumbing, ip: str) -> tuple[Link, Link]:
        """The address and the pod's routes (one datagram), then the host's route to it;
        returns the (host, pod) links."""
        oif, address = u32(plumbing.pod_link.index), socket.inet_aton(ip)
        plumbing.pod.call(
            _address().render(oif, address, address),
            _route(RTM_NEWROUTE, _CREATE, self.protocol, SCOPE_LINK, 32).render(
                socket.inet_aton(GATEWAY), oif),
            _route(RTM_NEWROUTE, _CREATE, self.protocol, SCOPE_UNIVERSE, 0, GATEWAY).render(oif),
        )
        self._host().call(_route(RTM_NEWROUTE, _REPLACE, self.protocol, SCOPE_LINK, 32).render(
            address, u32(plumbing.host_link.index)))
        return plumbing.host_link, plumbing.pod_link

    def add_host_route(self, ip: str, device: str) -> None:
        """IPAM mode: route the pod's /32 to the main plugin's device (e.g. its bridge)."""
        link = self._get_link(self._host(), device)
        self._host().call(_route(RTM_NEWROUTE, _REPLACE, self.protocol, SCOPE_LINK, 32).render(
            socket.inet_aton(ip), u32(link.index)))
        self._proxy_arp(device)

    def _proxy_arp(self, device: str) -> None:
        """The host end answers the pod's ARP for 169.254.1.1 (and anything it routes),
        at once: proxy_delay defaults to up to 0.8 s of random delay per answer."""
        _sysctl(f"ipv4/conf/{device}/proxy_arp", "1")
        _sysctl(f"ipv4/neigh/{device}/proxy_delay", "0")
        if not self._forwarding_checked:  # pods are routed: the host must forward
            if _sysctl_read("ipv4/ip_forward") != "1":
                _sysctl("ipv4/ip_forward", "1")
            self._forwarding_checked = True

    # DEL --------------------------------------------------------------------------------
    def detach(self, host_name: str) -> bool:
        """Cut the pod off at once: set the host end down, which drops its routes.

        Returns False when the veth is already gone (e.g. with the pod's namespace).
        """
        try:
            self._host().call(_name_request(RTM_NEWLINK, _ACK, host_name, up=False))
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return False
            raise
        return True

    def delete_link(self, name: str) -> bool:
        """Delete a veth (both ends); False if already gone. Slow: ~16 ms in the kernel."""
        try:
            self._host().call(_name_request(RTM_DELLINK, _ACK, name))
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return False
            raise
        return True

    def delete_host_route(self, ip: str) -> None:
        """Remove our /32 route to ``ip`` from the main table, if there is one."""
        try:
            self._host().call(_route(RTM_DELROUTE, _ACK, self.protocol, rt_scope["nowhere"], 32,
                                     oif=False).render(socket.inet_aton(ip)))
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise

    # CHECK ------------------------------------------------------------------------------
    def link(self, name: str) -> Link | None:
        """A link of the host namespace by name, or None."""
        try:
            return self._get_link(self._host(), name)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise

    def inspect(self, host_name: str | None, netns: str, ifname: str, ip: str,
                host_device: str | None = None, mac: str | None = None) -> list[str]:
        """Everything that differs from what ADD set up, as sentences (empty: all good).

        ``host_name``: our veth's host end (None in IPAM mode). ``host_device``: where the
        host must route ``ip`` (our veth, or the IPAM-mode device). ``mac``: the pod
        interface's MAC as ADD reported it, if known.
        """
        problems: list[str] = []
        device = host_device or host_name
        if host_name is not None:
            host = self.link(host_name)
            if host is None:
                problems.append(f"host interface {host_name} is missing")
            elif not host.up:
                problems.append(f"host interface {host_name} is down")
            elif _sysctl_read(f"ipv4/conf/{host_name}/proxy_arp") != "1":
                problems.append(f"proxy_arp is off on {host_name}")
        if device is not None and (link := self.link(device)) is not None and not any(
                r[0] == f"{ip}/32" and r[2] == link.index for r in self.host_routes()):
            problems.append(f"the host has no route {ip}/32 dev {device}")
        try:
            fd = open_netns(netns)
        except OSError as exc:
            return [*problems, f"cannot open the pod's namespace {netns}: {exc.strerror}"]
        try:
            problems += self._inspect_pod(fd, ifname, ip, host_name is not None, mac)
        finally:
            os.close(fd)
        return problems

    def _inspect_pod(self, netns_fd: int, ifname: str, ip: str, check_routes: bool,
                     mac: str | None) -> list[str]:
        with Channel(netns_fd) as pod:
            try:
                link = self._get_link(pod, ifname)
            except OSError as exc:
                if exc.errno != errno.ENODEV:
                    raise
                return [f"interface {ifname} is missing in the pod's namespace"]
            problems = [] if link.up else [f"interface {ifname} is down in the pod"]
            if mac and link.mac != mac.lower():
                problems.append(f"{ifname} has MAC {link.mac}, ADD reported {mac}")
            addresses = _addresses(pod.dump(build(ifaddrmsg, RTM_GETADDR, _DUMP,
                                                  family=socket.AF_INET, index=link.index)))
            if (link.index, ip, 32) not in addresses:
                problems.append(f"{ifname} does not have {ip}/32 in the pod")
            if check_routes:
                routes = _routes(pod.dump(build(rtmsg, RTM_GETROUTE, _DUMP,
                                                family=socket.AF_INET, table=MAIN_TABLE)))
                if not any(r[0] == f"{GATEWAY}/32" and r[2] == link.index and
                           r[3] == SCOPE_LINK for r in routes):
                    problems.append(f"the pod has no route {GATEWAY} dev {ifname} scope link")
                if not any(r[0] == "0.0.0.0/0" and r[1] == GATEWAY for r in routes):
                    problems.append(f"the pod has no default route via {GATEWAY}")
        return problems

    def pod_link(self, netns: str, ifname: str) -> Link | None:
        """The pod's interface (None if it or the namespace is gone)."""
        try:
            fd = open_netns(netns)
        except OSError:
            return None
        try:
            with Channel(fd) as pod:
                return self._get_link(pod, ifname)
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.EINVAL):
                return None
            raise
        finally:
            os.close(fd)

    def host_routes(self) -> list[tuple[str, str | None, int | None, int]]:
        """Main-table IPv4 routes of the host namespace that carry our protocol."""
        return _routes(self._host().dump(build(rtmsg, RTM_GETROUTE, _DUMP, family=socket.AF_INET,
                                               table=MAIN_TABLE, proto=self.protocol)))

    # helpers ----------------------------------------------------------------------------
    @staticmethod
    def _get_link(channel: Channel, name: str) -> Link:
        return _link(channel.get(_name_request(RTM_GETLINK, NLM_F_REQUEST, name)))


def _sysctl(key: str, value: str) -> None:
    with open(f"/proc/sys/net/{key}", "w") as f:
        f.write(value)


def _sysctl_read(key: str) -> str:
    try:
        with open(f"/proc/sys/net/{key}") as f:
            return f.read().strip()
    except OSError:
        return ""


# -- every namespace of the machine (leak checks) ---------------------------------------------
def namespace_paths() -> list[str]:
    """One path per distinct network namespace: named ones, then those of processes."""
    seen: set[tuple[int, int]] = set()
    paths = []
    candidates = [str(p) for p in sorted(NETNS_DIR.glob("*"))] if NETNS_DIR.is_dir() else []
    candidates += [f"/proc/{pid}/ns/net" for pid in os.listdir("/proc") if pid.isdigit()]
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue  # the process ended, or not a namespace
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            paths.append(path)
    return paths


def live_addresses() -> tuple[set[str], int]:
    """Every IPv4 address configured in any network namespace of the machine, and how many
    namespaces were read."""
    found: set[str] = set()
    paths = namespace_paths()
    for path in paths:
        try:
            fd = open_netns(path)
        except OSError:
            continue
        try:
            with Channel(fd) as channel:
                addresses = _addresses(channel.dump(build(ifaddrmsg, RTM_GETADDR, _DUMP,
                                                          family=socket.AF_INET)))
            found.update(address for _, address, _ in addresses)
        except OSError:
            continue  # not a namespace (EINVAL) or it went away meanwhile
        finally:
            os.close(fd)
    return found, len(paths)
