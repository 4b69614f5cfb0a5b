"""The agent's netlink module against the real kernel, plus its pure diff logic.

Every kernel test runs in a network namespace of its own (named after this process and a
counter), with a veth pair where a connected subnet is needed; the fixture deletes the
namespace even when the test fails. Results are checked with iproute2 (`ip -j ...`), not with
the module under test.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from romana.agent.reconcile import (
    KernelRoute,
    RouteDiff,
    SkippedRoute,
    diff_routes,
    from_route_set,
)
from romana.agent.route_table import RouteTable

pytestmark = pytest.mark.root

_names = itertools.count()
GW_NET = "192.168.1"  # veth0 in every test namespace holds 192.168.1.1/24


def ip(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=check)


def ip_json(netns: str, *args: str) -> Any:
    return json.loads(ip(netns, "-j", *args).stdout or "[]")


def kernel_routes(netns: str, table: int = 10, proto: str = "82") -> dict[str, dict[str, Any]]:
    """`ip -j route show table T proto P`, keyed by prefix with its length always spelled."""
    routes = ip_json(netns, "route", "show", "table", str(table), "proto", proto)
    return {r["dst"] if "/" in r["dst"] else f"{r['dst']}/32": r for r in routes}


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"rmn-nl-{os.getpid()}-{next(_names)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip(name, "link", "set", "lo", "up")
        ip(name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        ip(name, "link", "set", "veth0", "up")
        ip(name, "link", "set", "veth1", "up")
        ip(name, "addr", "add", f"{GW_NET}.1/24", "dev", "veth0")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def table(netns: str) -> Iterator[RouteTable]:
    with RouteTable(table=10, protocol=82, netns=netns) as rt:
        yield rt


def unicast(prefix: str, host: int) -> KernelRoute:
    return KernelRoute(prefix, f"{GW_NET}.{host}", "unicast")


def unreachable(prefix: str) -> KernelRoute:
    return KernelRoute(prefix, None, "unreachable")


def by_prefix(*routes: KernelRoute) -> dict[str, KernelRoute]:
    return {r.prefix: r for r in routes}


FIVE = by_prefix(
    unicast("10.1.0.8/29", 12),
    unicast("10.1.0.16/29", 13),
    unicast("10.1.1.0/24", 14),
    unreachable("10.1.0.0/29"),
    unreachable("10.1.0.24/29"),
)


def many(count: int) -> dict[str, KernelRoute]:
    """`count` distinct /29s; every fifth unreachable, the rest via one of 50 neighbours."""
    routes = {}
    for i in range(count):
        base = socket.inet_ntoa((0x0A000000 + 8 * i).to_bytes(4, "big"))
        prefix = f"{base}/29"
        routes[prefix] = unreachable(prefix) if i % 5 == 0 else unicast(prefix, 2 + i % 50)
    return routes


# -- routes ------------------------------------------------------------------------------


def test_apply_adds_unicast_and_unreachable_routes(netns: str, table: RouteTable) -> None:
    result = table.apply(diff_routes(FIVE, {}))

    assert (result.added, result.replaced, result.deleted, result.failures) == (5, 0, 0, ())
    seen = kernel_routes(netns)
    assert set(seen) == set(FIVE)
    for prefix, route in FIVE.items():
        if route.kind == "unicast":
            assert seen[prefix].get("type", "unicast") == "unicast"
            assert seen[prefix]["gateway"] == route.gateway
            assert seen[prefix]["dev"] == "veth0"
        else:
            assert seen[prefix]["type"] == "unreachable"
            assert "gateway" not in seen[prefix]
    assert table.dump() == FIVE
    assert kernel_routes(netns, table=254) == {}  # nothing leaked into main


def test_throw_routes_round_trip_and_send_lookups_on_to_main(netns: str, table: RouteTable) -> None:
    ip(netns, "route", "add", "default", "via", f"{GW_NET}.254")
    desired = by_prefix(unreachable("10.1.0.0/24"), KernelRoute("10.1.0.8/29", None, "throw"))
    assert table.apply(diff_routes(desired, {})).ok
    assert table.dump() == desired
    assert diff_routes(desired, table.dump()).empty
    table.ensure_rules(["10.1.0.0/16"])
    hole, area = route_get(netns, "10.1.0.9"), route_get(netns, "10.1.0.17")
    assert isinstance(hole, dict) and hole["gateway"] == f"{GW_NET}.254"  # main's default
    assert area == "RTNETLINK answers: No route to host"


def test_replace_changes_gateway_and_kind(netns: str, table: RouteTable) -> None:
    table.apply(diff_routes(FIVE, {}))
    desired = dict(FIVE)
    desired["10.1.0.8/29"] = unicast("10.1.0.8/29", 99)
    desired["10.1.0.24/29"] = unicast("10.1.0.24/29", 98)  # unreachable -> unicast

    diff = diff_routes(desired, table.dump())
    assert [r.prefix for r in diff.replace] == ["10.1.0.8/29", "10.1.0.24/29"]
    result = table.apply(diff)

    assert (result.replaced, result.added, result.deleted, result.ok) == (2, 0, 0, True)
    seen = kernel_routes(netns)
    assert seen["10.1.0.8/29"]["gateway"] == f"{GW_NET}.99"
    assert seen["10.1.0.24/29"]["gateway"] == f"{GW_NET}.98"
    assert len(seen) == 5  # replaced in place, not added next to the old route
    assert table.dump() == desired


def test_delete_removes_only_what_is_no_longer_desired(netns: str, table: RouteTable) -> None:
    table.apply(diff_routes(FIVE, {}))
    desired = {p: r for p, r in FIVE.items() if p not in ("10.1.1.0/24", "10.1.0.0/29")}

    result = table.apply(diff_routes(desired, table.dump()))

    assert (result.deleted, result.added, result.replaced, result.ok) == (2, 0, 0, True)
    assert set(kernel_routes(netns)) == set(desired)
    assert diff_routes(desired, table.dump()).empty


def test_deleting_a_route_that_is_already_gone_succeeds(netns: str, table: RouteTable) -> None:
    table.apply(diff_routes(FIVE, {}))
    stale = table.dump()
    ip(netns, "route", "del", "10.1.0.8/29", "table", "10")  # someone beat us to it

    result = table.apply(diff_routes({}, stale))

    assert (result.deleted, result.failures) == (5, ())
    assert kernel_routes(netns) == {}


def test_bad_routes_fail_alone_and_are_reported(netns: str, table: RouteTable) -> None:
    desired = dict(FIVE)
    desired["10.1.2.0/24"] = KernelRoute("10.1.2.0/24", "172.31.0.1", "unicast")  # no subnet
    desired["10.1.3.0/24"] = KernelRoute("10.1.3.0/24", None, "unicast")  # nothing to send
    desired["10.1.4.1/24"] = unicast("10.1.4.1/24", 14)  # host bits set: not normalised

    result = table.apply(diff_routes(desired, {}))

    assert result.added == 5
    assert sorted((f.op, f.prefix, f.errno) for f in result.failures) == [
        ("add", "10.1.2.0/24", errno.ENETUNREACH),
        ("add", "10.1.3.0/24", errno.EINVAL),
        ("add", "10.1.4.1/24", errno.EINVAL),
    ]
    unreachable_gw = next(f for f in result.failures if f.errno == errno.ENETUNREACH)
    assert "gateway" in unreachable_gw.message  # the kernel's extended-ack text
    assert str(unreachable_gw).startswith("add 10.1.2.0/24: [ENETUNREACH]")
    assert set(kernel_routes(netns)) == set(FIVE)


def test_foreign_routes_in_our_table_are_never_touched(netns: str, table: RouteTable) -> None:
    ip(
        netns,
        "route",
        "add",
        "10.1.0.8/29",
        "via",
        f"{GW_NET}.50",
        "table",
        "10",
        "proto",
        "static",
    )
    ip(
        netns,
        "route",
        "add",
        "10.9.0.0/16",
        "via",
        f"{GW_NET}.51",
        "table",
        "10",
        "proto",
        "static",
    )
    before = ip_json(netns, "route", "show", "table", "10", "proto", "static")

    assert table.dump() == {}
    assert table.foreign() == ["10.1.0.8/29", "10.9.0.0/16"]
    result = table.apply(diff_routes(FIVE, table.dump()))  # wants 10.1.0.8/29 too
    assert result.added == 4
    assert [(f.prefix, f.errno) for f in result.failures] == [("10.1.0.8/29", errno.EEXIST)]
    # A delete aimed at a foreign prefix: the kernel matches our protocol and finds nothing.
    forced = RouteDiff(add=(), replace=(), delete=(unicast("10.9.0.0/16", 51),))
    assert table.apply(forced).ok
    assert table.flush() == 4

    assert ip_json(netns, "route", "show", "table", "10", "proto", "static") == before
    assert kernel_routes(netns) == {}
    assert table.foreign() == ["10.1.0.8/29", "10.9.0.0/16"]


def test_routes_of_our_protocol_in_other_tables_are_not_ours(netns: str) -> None:
    ip(netns, "route", "add", "10.7.0.0/16", "via", f"{GW_NET}.7", "proto", "82")  # main
    with RouteTable(table=1000, netns=netns) as big, RouteTable(table=10, netns=netns) as ten:
        assert big.apply(diff_routes(FIVE, {})).added == 5  # ids above 255 use RTA_TABLE
        assert set(kernel_routes(netns, table=1000)) == set(FIVE)
        assert big.dump() == FIVE
        assert ten.dump() == {}
        assert ten.flush() == 0
        assert big.flush() == 5
    assert set(kernel_routes(netns, table=254)) == {"10.7.0.0/16"}


def test_a_route_of_ours_in_an_unexpected_shape_is_reconciled(
    netns: str, table: RouteTable
) -> None:
    ip(netns, "route", "add", "blackhole", "10.1.0.8/29", "table", "10", "proto", "82")
    ip(netns, "route", "add", "10.1.0.16/29", "dev", "veth0", "table", "10", "proto", "82")

    assert table.dump() == by_prefix(
        KernelRoute("10.1.0.8/29", None, "unicast"), KernelRoute("10.1.0.16/29", None, "unicast")
    )
    result = table.apply(diff_routes(FIVE, table.dump()))

    assert (result.replaced, result.added, result.ok) == (2, 3, True)
    assert table.dump() == FIVE
    assert kernel_routes(netns)["10.1.0.8/29"]["gateway"] == f"{GW_NET}.12"


def test_ten_thousand_routes_round_trip_in_windows(netns: str, table: RouteTable) -> None:
    """Pipelined, not one round trip per route (speed: benchmarks/agent_bench.py)."""
    desired = many(10_000)
    channel = table._channel
    sent = channel.datagrams_sent

    result = table.apply(diff_routes(desired, {}))
    windows = channel.datagrams_sent - sent
    dumped = table.dump()

    assert (result.added, result.failures) == (10_000, ())
    assert dumped == desired
    assert len(ip(netns, "route", "show", "table", "10").stdout.splitlines()) == 10_000
    assert windows <= -(-10_000 // channel.window) + 1, (windows, channel.window)
    assert channel.window >= 64  # a receive buffer too small to pipeline would show here

    changed = {
        p: (unicast(p, 200) if i % 10 == 1 else r)
        for i, (p, r) in enumerate(desired.items())
        if i % 10 != 2
    }
    result = table.apply(diff_routes(changed, dumped))
    assert (result.replaced, result.deleted, result.added, result.ok) == (1000, 1000, 0, True)
    assert table.dump() == changed


def test_lost_acknowledgements_are_reported_not_misattributed(
    netns: str, table: RouteTable
) -> None:
    # Shrink the receive buffer far below what the window needs: the kernel drops ACKs
    # (ENOBUFS). Those routes must be reported as "state unknown", never as done.
    channel = table._channel
    channel.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    channel.window = 1024

    result = table.apply(diff_routes(many(1024), {}))

    lost = [f for f in result.failures if f.errno == errno.ENOBUFS]
    assert lost and len(lost) == len(result.failures)
    assert result.added + len(lost) == 1024
    assert len(table.dump()) == 1024  # the kernel did program them all
    channel.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    assert table.apply(diff_routes(FIVE, table.dump())).ok  # the socket is usable again


def test_missing_namespace_is_an_error_not_created() -> None:
    name = f"rmn-nl-missing-{os.getpid()}"
    with pytest.raises(FileNotFoundError):
        RouteTable(netns=name)
    assert (
        name
        not in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout
    )


def test_reserved_tables_and_bad_protocols_are_refused() -> None:
    for bad in ({"table": 254}, {"table": 255}, {"table": 0}, {"protocol": 0}, {"protocol": 256}):
        with pytest.raises(ValueError):
            RouteTable(**bad)  # type: ignore[arg-type]


# -- policy rules -------------------------------------------------------------------------


def our_rules(netns: str) -> list[tuple[int, str, str, int | None]]:
    rules = ip_json(netns, "rule", "show")
    return sorted(
        (r["priority"], f"{r['dst']}/{r['dstlen']}", str(r["table"]), r.get("suppress_prefixlen"))
        for r in rules
        if r.get("protocol") == "82"
    )


def test_ensure_rules_installs_idempotently_and_reconciles(netns: str, table: RouteTable) -> None:
    ip(netns, "rule", "add", "priority", "1001", "to", "10.3.0.0/16", "lookup", "10")
    foreign = [r for r in ip_json(netns, "rule", "show") if r.get("dst") == "10.3.0.0"]

    table.ensure_rules(["10.1.0.0/16", "10.2.0.0/16"])
    first = our_rules(netns)
    table.ensure_rules(["10.2.0.0/16", "10.1.0.0/16"])

    assert (
        our_rules(netns)
        == first
        == [
            (1000, "10.1.0.0/16", "main", 0),
            (1000, "10.2.0.0/16", "main", 0),
            (1001, "10.1.0.0/16", "10", None),
            (1001, "10.2.0.0/16", "10", None),
        ]
    )
    table.ensure_rules(["10.1.0.0/16"])
    assert our_rules(netns) == [(1000, "10.1.0.0/16", "main", 0), (1001, "10.1.0.0/16", "10", None)]
    table.ensure_rules(["10.1.0.0/16"], priority=2000)  # moved: old priority goes
    assert our_rules(netns) == [(2000, "10.1.0.0/16", "main", 0), (2001, "10.1.0.0/16", "10", None)]
    with pytest.raises(ValueError):
        table.ensure_rules(["10.1.0.0/16"], priority=32765)  # would follow main's rule
    table.remove_rules()
    assert our_rules(netns) == []
    assert [r for r in ip_json(netns, "rule", "show") if r.get("dst") == "10.3.0.0"] == foreign


def route_get(netns: str, address: str) -> dict[str, Any] | str:
    """`ip route get`: the chosen route, or the kernel's error text."""
    done = ip(netns, "-j", "route", "get", address, check=False)
    if done.returncode:
        return done.stderr.strip()
    return json.loads(done.stdout)[0]  # type: ignore[no-any-return]


def test_rules_let_main_pod_routes_and_our_neighbour_routes_win(
    netns: str, table: RouteTable
) -> None:
    ip(netns, "route", "add", "default", "via", f"{GW_NET}.254")
    ip(netns, "route", "add", "10.1.0.3/32", "dev", "veth1", "scope", "link")  # a pod (CNI)
    table.apply(diff_routes(by_prefix(unreachable("10.1.0.0/29"), unicast("10.1.0.8/29", 12)), {}))

    without = route_get(netns, "10.1.0.9")
    assert isinstance(without, dict) and without["gateway"] == f"{GW_NET}.254"  # rules matter

    table.ensure_rules(["10.1.0.0/16"])
    pod, unused, neighbour, outside = (
        route_get(netns, a) for a in ("10.1.0.3", "10.1.0.4", "10.1.0.9", "10.2.0.1")
    )
    assert isinstance(pod, dict) and pod["dev"] == "veth1" and "gateway" not in pod
    assert unused == "RTNETLINK answers: No route to host"  # our unreachable block
    assert isinstance(neighbour, dict) and neighbour["gateway"] == f"{GW_NET}.12"
    assert isinstance(outside, dict) and outside["gateway"] == f"{GW_NET}.254"


# -- pure diff logic ----------------------------------------------------------------------


def test_diff_routes_sorts_by_address_and_classifies() -> None:
    actual = by_prefix(
        unicast("10.1.0.16/29", 1),
        unicast("10.1.0.8/29", 2),
        unreachable("10.1.0.0/29"),
        unicast("10.10.0.0/29", 3),
    )
    desired = by_prefix(
        unicast("10.1.0.8/29", 2),
        unicast("10.1.0.16/29", 9),
        unicast("10.2.0.0/29", 4),
        unicast("10.1.1.0/29", 5),
        unreachable("10.0.0.0/29"),
    )

    diff = diff_routes(desired, actual)

    assert [r.prefix for r in diff.add] == ["10.0.0.0/29", "10.1.1.0/29", "10.2.0.0/29"]
    assert diff.replace == (unicast("10.1.0.16/29", 9),)
    assert [r.prefix for r in diff.delete] == ["10.1.0.0/29", "10.10.0.0/29"]
    assert len(diff) == 6 and not diff.empty
    assert diff_routes(desired, desired).empty


def test_kernel_route_rejects_inconsistent_values() -> None:
    with pytest.raises(ValueError):
        KernelRoute("10.1.0.0/29", "192.168.1.1", "unreachable")
    with pytest.raises(ValueError):
        KernelRoute("10.1.0.0/29", None, "blackhole")  # type: ignore[arg-type]


def test_from_route_set_translates_and_reports_skipped_routes() -> None:
    wire = {
        "vantage": "host:h1",
        "default": "group:rack-1",
        "routes": [
            {"prefix": "10.1.0.0/29", "via": "local", "gateway": None},
            {"prefix": "10.1.0.8/29", "via": "host:h2", "gateway": "192.168.1.12"},
            {"prefix": "10.2.0.0/24", "via": "group:rack-2", "gateway": None},
            {"prefix": "10.1.0.9/29", "via": "host:h3", "gateway": "192.168.1.13"},
            {"prefix": "10.1.0.8/29", "via": "host:h4", "gateway": "192.168.1.14"},
        ],
    }

    desired, skipped = from_route_set(wire)

    # A route to a group's router (a hole in the host's area) leaves the table: ``throw``.
    assert desired == by_prefix(
        unreachable("10.1.0.0/29"),
        unicast("10.1.0.8/29", 12),
        KernelRoute("10.2.0.0/24", None, "throw"),
    )
    assert [(s.prefix, s.via) for s in skipped] == [
        ("10.1.0.9/29", "host:h3"),
        ("10.1.0.8/29", "host:h4"),
    ]
    assert all(isinstance(s, SkippedRoute) and s.reason for s in skipped)
    assert from_route_set({"vantage": "host:h9", "default": None, "routes": []}) == ({}, [])


def test_routing_drops_is_what_the_kernels_lookup_finds(netns: str) -> None:
    """The policy enforcer skips a conntrack dump only where routing drops an unheld
    address: an unreachable, blackhole or prohibit route, or none; a more specific route
    that forwards (a pod's /32) is not a drop."""
    ip(netns, "route", "add", "unreachable", "10.9.0.0/24")
    ip(netns, "route", "add", "blackhole", "10.9.1.0/24")
    ip(netns, "route", "add", "prohibit", "10.9.2.0/24")
    ip(netns, "route", "add", "10.9.0.7/32", "dev", "veth0", "scope", "link")
    asked = ["10.9.0.5", "10.9.0.7", "10.9.1.5", "10.9.2.5", f"{GW_NET}.9", "172.31.9.9"]
    script = (
        "import json, sys\nfrom romana.agent.route_table import routing_drops\n"
        "print(json.dumps([routing_drops(a) for a in sys.argv[1:]]))"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", script, *asked],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout) == [True, False, True, True, False, True]
