"""Validation and application cannot disagree: the map is parsed once into canonical values.

The property: for generated maps with odd spacing, netmask notation, leading zeros, case in
routing modes and numbers in the wrong type, ``validate(doc)`` reporting no error implies
that applying the map raises nothing but a ``RomanaError`` (and that the stored map carries
canonical CIDRs and IPs); a map with errors is refused with ``InvalidTopology``.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from romana.errors import InvalidTopology, RomanaError
from romana.ipam import Engine
from romana.topology import validate
from romana.topology.model import canonical_cidr, canonical_ip

PAD = st.sampled_from(["", " ", "  ", "\t", "\n", " \t"])


def padded(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(PAD, inner, PAD).map("".join)


def _octet_text(value: int, zero_pad: bool) -> str:
    return f"0{value}" if zero_pad else str(value)


@st.composite
def ip_texts(draw: st.DrawFn, first: int | None = None) -> str:
    octets = [first if first is not None else draw(st.integers(0, 255))]
    octets += [draw(st.integers(0, 255)) for _ in range(3)]
    zero_pad = draw(st.integers(0, 9)) == 0
    return ".".join(_octet_text(o, zero_pad and i == 1) for i, o in enumerate(octets))


@st.composite
def cidr_texts(draw: st.DrawFn) -> str:
    prefix = draw(st.integers(12, 28))
    second = draw(st.sampled_from([0, 16, 32, 64, 128]))
    host_bits = draw(st.integers(0, 7)) == 0
    last = draw(st.integers(1, 255)) if host_bits else 0
    address = f"10.{second}.0.{last}"
    if draw(st.booleans()):
        mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
        netmask = ".".join(str((mask >> s) & 0xFF) for s in (24, 16, 8, 0))
        return f"{address}/{netmask}"
    return f"{address}/{prefix}"


BLOCK_MASKS = st.one_of(
    st.none(), st.integers(0, 34), st.sampled_from(["29", 29.0, True, "", None])
)
ROUTING = st.lists(
    st.sampled_from(
        [
            "block-host-routes",
            "Block-Host-Routes",
            "prefix-announce-bgp",
            "L3-TO-HOST",
            "l2-to-host",
            " prefix-announce-ospf ",
            "bogus",
            "",
        ]
    ),
    max_size=3,
).map(",".join)
NAMES = st.text(alphabet="aZ09-_. /", min_size=0, max_size=6)
LABELS = st.dictionaries(
    st.sampled_from(["rack", "zone", "Rack", ""]),
    st.one_of(st.sampled_from(["1", "a", " a "]), st.integers(0, 3)),
    max_size=2,
)


@st.composite
def hosts(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(0, 3))
    return [
        {
            "name": draw(padded(st.sampled_from(["h1", "h2", "h3"]))),
            "ip": draw(padded(ip_texts(first=draw(st.sampled_from([10, 192]))))),
        }
        for _ in range(count)
    ]


@st.composite
def groups(draw: st.DrawFn, depth: int = 0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        group: dict[str, Any] = {}
        if draw(st.booleans()):
            group["name"] = draw(NAMES)
        if draw(st.integers(0, 3)) == 0:
            group["assignment"] = draw(LABELS)
        if draw(st.integers(0, 3)) == 0:
            group["routing"] = draw(ROUTING)
        kinds = ["hosts", "leaf", "parent"] if depth < 2 else ["hosts", "leaf"]
        kind = draw(st.sampled_from(kinds))
        if kind == "hosts":
            group["hosts"] = draw(hosts())
        elif kind == "leaf":
            group["groups"] = []
        else:
            group["groups"] = draw(groups(depth + 1))
        out.append(group)
    return out


@st.composite
def topology_maps(draw: st.DrawFn) -> dict[str, Any]:
    networks = []
    for i in range(draw(st.integers(1, 2))):
        net: dict[str, Any] = {"name": f"net{i}", "cidr": draw(padded(cidr_texts()))}
        mask = draw(BLOCK_MASKS)
        if mask is not None or draw(st.booleans()):
            net["block_mask"] = mask
        networks.append(net)
    return {
        "networks": networks,
        "topologies": [{"networks": [n["name"] for n in networks], "map": draw(groups())}],
    }


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=topology_maps())
def test_a_map_that_validates_applies_and_one_that_does_not_is_refused(
    doc: dict[str, Any],
) -> None:
    errors = [p for p in validate(doc) if p.severity == "error"]
    engine = Engine()
    try:
        engine.apply_topology(doc)
    except InvalidTopology:
        assert errors, "the validator passed a map that application refused"
        return
    except RomanaError:
        assert not errors
        return
    assert not errors, f"a map with errors was applied: {errors}"
    stored = engine.topology
    assert stored is not None
    for net in stored.networks:
        assert net.cidr == canonical_cidr(net.cidr) and " " not in net.cidr
    document = engine.topology_document()
    assert document is not None
    for group in _all_groups(document):
        for host in group.get("hosts", []):
            assert host["ip"] == canonical_ip(host["ip"])
            assert engine.host(host["name"]).ip == host["ip"]


def _all_groups(document: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    todo = [g for topo in document["topologies"] for g in topo["map"]]
    while todo:
        group = todo.pop()
        out.append(group)
        todo.extend(group.get("groups") or [])
    return out


def test_spaced_cidr_and_pinned_ip_are_stored_canonical() -> None:
    doc = {
        "networks": [{"name": "n", "cidr": " 10.1.0.0/255.255.0.0 "}],
        "topologies": [
            {
                "networks": ["n"],
                "map": [
                    {"name": "r1", "hosts": [{"name": "h1", "ip": " 192.168.0.1\t"}]},
                    {"name": "r2", "groups": []},
                ],
            }
        ],
    }
    assert [p for p in validate(doc) if p.severity == "error"] == []
    engine = Engine()
    engine.apply_topology(doc)
    assert engine.topology is not None
    assert engine.topology.networks[0].cidr == "10.1.0.0/16"
    assert engine.host("h1").ip == "192.168.0.1"
    # The pinned IP, stored canonical, is caught as a duplicate of the same IP written plainly.
    try:
        engine.add_host("other", "192.168.0.1", {})
    except RomanaError as exc:
        assert "already used" in str(exc)
    else:
        raise AssertionError("a second host got the pinned host's IP")


def test_duplicate_pinned_ips_differing_only_in_spacing_are_one_error() -> None:
    doc = {
        "networks": [{"name": "n", "cidr": "10.1.0.0/16"}],
        "topologies": [
            {
                "networks": ["n"],
                "map": [
                    {
                        "name": "r1",
                        "hosts": [
                            {"name": "h1", "ip": "192.168.0.1"},
                            {"name": "h2", "ip": " 192.168.0.1"},
                        ],
                    }
                ],
            }
        ],
    }
    found = [str(p) for p in validate(doc) if p.severity == "error"]
    assert found == [
        "topologies[0].map[0].hosts[1].ip: duplicate host IP 192.168.0.1; "
        'already used by host "h1" at topologies[0].map[0].hosts[0]'
    ]


def test_canonical_helpers_refuse_what_ipaddress_refuses() -> None:
    assert canonical_ip(" 1.2.3.4 ") == "1.2.3.4"
    for bad in ("1.2.3", "01.2.3.4", "1.2.3.4/32", ""):
        try:
            canonical_ip(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")
