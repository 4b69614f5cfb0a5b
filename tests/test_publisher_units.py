"""The publisher's pure parts: template lookup and rendering, announce policy, router data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from romana.ipam import Engine
from romana.publisher import templates
from romana.publisher.announce import Placement, Policy, announced, collapse, sort_cidrs
from romana.publisher.defaults import ROUTER_BGP
from romana.publisher.router import (
    PeerSpec,
    RouterError,
    group_info,
    index_groups,
    pattern,
    router_data,
)

from .conftest import EXAMPLES, ROOT, racks_topology

# -- template lookup ----------------------------------------------------------------------


def test_lookup_order_host_then_subnet_then_generic(tmp_path: Path) -> None:
    t = tmp_path / "bird.conf"
    assert templates.candidates(t, "192.168.1.11", "192.168.1.0/24") == [
        tmp_path / "bird.conf.192.168.1.11",
        tmp_path / "bird.conf.192.168.1.0",
        t,
    ]
    # A subnet given as the host's address with its prefix still names the network.
    assert (
        templates.candidates(t, "192.168.1.11", "192.168.1.11/24")[1].name
        == "bird.conf.192.168.1.0"
    )
    assert templates.candidates(t) == [t]

    with pytest.raises(
        templates.TemplateError,
        match=r"bird\.conf\.192\.168\.1\.11.*"
        r"bird\.conf\.192\.168\.1\.0.*bird\.conf",
    ):
        templates.find(t, "192.168.1.11", "192.168.1.0/24")
    t.write_text("generic")
    assert templates.find(t, "192.168.1.11", "192.168.1.0/24") == t
    (tmp_path / "bird.conf.192.168.1.0").write_text("subnet")
    assert templates.find(t, "192.168.1.11", "192.168.1.0/24").name.endswith("1.0")
    assert templates.find(t, "192.168.2.5", "192.168.2.0/24") == t  # another subnet
    (tmp_path / "bird.conf.192.168.1.11").write_text("host")
    assert templates.find(t, "192.168.1.11", "192.168.1.0/24").name.endswith("1.11")
    assert templates.find(t, "192.168.1.12", "192.168.1.0/24").name.endswith("1.0")
    # Without a known subnet the subnet file is not guessed at.
    assert templates.find(t, "192.168.1.12") == t


def src(tmp_path: Path, text: str, name: str = "t.conf") -> templates.TemplateFile:
    path = tmp_path / name
    path.write_text(text)
    return templates.TemplateFile.read(path)


def test_render_is_strict_and_names_file_and_line(tmp_path: Path) -> None:
    ok = src(tmp_path, "{% for n in networks %}route {{ n }} blackhole;\n{% endfor %}")
    assert (
        templates.render(ok, {"networks": ["10.1.0.0/28", "10.1.0.16/29"]})
        == "route 10.1.0.0/28 blackhole;\nroute 10.1.0.16/29 blackhole;\n"
    )

    # A misspelt variable is an error, never an empty string (a silently dropped neighbour).
    typo = src(tmp_path, "router id 1.2.3.4;\nneighbor {{ neighbour_ip }} as 65000;\n")
    with pytest.raises(templates.TemplateError, match=r"t\.conf:2: .*neighbour_ip"):
        templates.render(typo, {"neighbor_ip": "10.0.0.1"})
    attr = src(tmp_path, "x\n\n{{ host.nmae }}\n")
    with pytest.raises(templates.TemplateError, match=r"t\.conf:3: .*nmae"):
        templates.render(attr, {"host": {"name": "h1"}})

    broken = src(tmp_path, "ok\n{% for n in networks %}\nroute {{ n }};\n")
    with pytest.raises(templates.TemplateError, match=r"t\.conf:\d+: template syntax error"):
        templates.render(broken, {"networks": []})

    # Optional variables: `is defined` and `default` work under StrictUndefined.
    opt = src(tmp_path, "{% if args.log is defined %}log;{% endif %}{{ args.hold | default(90) }}")
    assert templates.render(opt, {"args": {}}) == "90"
    assert templates.render(opt, {"args": {"log": "x", "hold": "3"}}) == "log;3"


def test_include_resolves_next_to_the_template(tmp_path: Path) -> None:
    (tmp_path / "common.inc").write_text("protocol device {}\n")
    main = src(tmp_path, '{% include "common.inc" %}router id {{ ip }};\n')
    assert templates.render(main, {"ip": "1.2.3.4"}) == "protocol device {}\nrouter id 1.2.3.4;\n"


# -- announce policy ----------------------------------------------------------------------

ONE = {"net": Placement("rack-1", "10.1.0.0/18")}


def test_collapse_merges_siblings_only() -> None:
    assert collapse(["10.1.0.8/29", "10.1.0.0/29"]) == ["10.1.0.0/28"]
    assert collapse(["10.1.0.0/29", "10.1.0.16/29"]) == ["10.1.0.0/29", "10.1.0.16/29"]
    assert collapse(["10.1.0.0/29", "10.1.0.8/29", "10.1.0.16/29", "10.1.0.24/29"]) == [
        "10.1.0.0/27"
    ]
    assert sort_cidrs(["10.1.0.16/29", "10.1.0.0/28", "10.1.0.0/28"]) == [
        "10.1.0.0/28",
        "10.1.0.16/29",
    ]


def test_blocks_policy_announces_own_blocks_sorted() -> None:
    local = ["10.1.0.16/29", "10.1.0.0/28"]
    assert announced(ONE, local, {"net": 1}, Policy.BLOCKS) == ["10.1.0.0/28", "10.1.0.16/29"]
    assert announced(ONE, [], {"net": 1}, Policy.BLOCKS) == []


def test_group_policy_only_while_alone_in_the_leaf() -> None:
    local = ["10.1.0.0/29"]
    # Alone: the whole leaf, even with no block yet, and never a block next to it.
    assert announced(ONE, local, {"net": 1}, Policy.GROUP) == ["10.1.0.0/18"]
    assert announced(ONE, [], {"net": 1}, Policy.GROUP) == ["10.1.0.0/18"]
    # A neighbour joined: back to the blocks (the leaf would attract its traffic).
    assert announced(ONE, local, {"net": 2}, Policy.GROUP) == local
    # Several networks: alone in one, shared in the other.
    two = {"pods": Placement("rack-1", "10.1.0.0/18"), "sys": Placement("rack-1", "10.2.0.0/22")}
    mixed = announced(two, ["10.1.0.0/28", "10.2.0.8/29"], {"pods": 1, "sys": 3}, Policy.GROUP)
    assert mixed == ["10.1.0.0/18", "10.2.0.8/29"]


# -- router data --------------------------------------------------------------------------


def annotated(
    document: dict[str, Any], hosts: list[tuple[str, str, dict[str, str]]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """romanad's annotated map and host objects for ``document`` with ``hosts`` added."""
    engine = Engine()
    engine.apply_topology(document)
    for name, ip, labels in hosts:
        engine.add_host(name, ip, labels)
    doc = engine.topology_document()
    assert doc is not None
    return doc, [engine.host(name).to_json() for name, _, _ in hosts]


def test_index_groups_on_a_two_network_spine_leaf_map(example: Any) -> None:
    doc, _ = annotated(example("spine-leaf.yaml"), [])
    groups = index_groups(doc)
    assert groups["/"].cidrs == {"pods": "10.1.0.0/16", "kube-system-pods": "10.2.0.0/20"}
    assert [c.path for c in groups["/"].children] == ["zone-a", "zone-b"]
    rack3 = group_info(doc, "zone-b/rack-3")
    assert rack3.leaf and rack3.cidrs == {
        "pods": "10.1.128.0/19",
        "kube-system-pods": "10.2.8.0/23",
    }
    zone_b = group_info(doc, "/zone-b/")  # slashes around a path are forgiven
    assert not zone_b.leaf
    assert [c.path for c in zone_b.children] == ["zone-b/rack-3", "zone-b/rack-4", "zone-b/rack-5"]
    with pytest.raises(RouterError, match='no group "zone-c"'):
        group_info(doc, "zone-c")


RACK_HOSTS = [
    ("h1", "192.168.1.11", {"rack": "rack-1"}),
    ("h2", "192.168.1.12", {"rack": "rack-1"}),
    ("h3", "192.168.2.13", {"rack": "rack-2"}),
]


def test_leaf_router_filters_each_host_to_its_group() -> None:
    doc, hosts = annotated(racks_topology(2), RACK_HOSTS)
    data = router_data(group_info(doc, "rack-1"), hosts, peer_as=65001)
    assert data.cidrs == ("10.1.0.0/17",)
    assert [(p.name, p.ip, p.asn, p.proto) for p in data.peers] == [
        ("h1", "192.168.1.11", 65001, "host_h1"),
        ("h2", "192.168.1.12", 65001, "host_h2"),
    ]
    # h3 is in another rack: not a neighbour of this router.
    assert all(p.allowed == ("10.1.0.0/17{17,32}",) for p in data.peers)


def test_strict_router_accepts_only_each_hosts_blocks() -> None:
    doc, hosts = annotated(racks_topology(2), RACK_HOSTS)
    routes = [  # romanad's route set of rack-1: per host, blocks collapsed
        {"prefix": "10.1.0.0/28", "via": "host:h1", "gateway": "192.168.1.11"},
        {"prefix": "10.1.0.32/29", "via": "host:h1", "gateway": "192.168.1.11"},
        {"prefix": "10.1.0.16/29", "via": "host:h2", "gateway": "192.168.1.12"},
    ]
    data = router_data(group_info(doc, "rack-1"), hosts, routes, strict=True)
    by_name = {p.name: p for p in data.peers}
    assert by_name["h1"].allowed == ("10.1.0.0/28{28,32}", "10.1.0.32/29{29,32}")
    assert by_name["h2"].allowed == ("10.1.0.16/29{29,32}",)
    # A host without blocks may announce nothing at all.
    no_blocks = router_data(group_info(doc, "rack-1"), hosts, routes[:2], strict=True)
    assert {p.name: p.allowed for p in no_blocks.peers}["h2"] == ()
    # Alone in its leaf, romanad routes the whole leaf to the host: accepted as a whole.
    alone = router_data(
        group_info(doc, "rack-2"),
        hosts,
        [{"prefix": "10.1.128.0/17", "via": "host:h3"}],
        strict=True,
    )
    assert alone.peers[0].allowed == ("10.1.128.0/17{17,32}",)


def test_parent_router_peers_with_children_given_by_the_operator() -> None:
    doc, hosts = annotated(racks_topology(4), RACK_HOSTS)
    peers = dict(PeerSpec.parse(p) for p in ["rack-1=172.16.1.1@65101", "rack-2=172.16.2.1"])
    data = router_data(group_info(doc, "/"), hosts, peers=peers, peer_as=65100)
    assert [(p.name, p.ip, p.asn, p.allowed) for p in data.peers] == [
        ("rack-1", "172.16.1.1", 65101, ("10.1.0.0/18{18,32}",)),
        ("rack-2", "172.16.2.1", 65100, ("10.1.64.0/18{18,32}",)),
    ]
    assert data.unpeered == ("rack-3", "rack-4")
    with pytest.raises(RouterError, match="NAME=IP"):
        PeerSpec.parse("172.16.1.1")
    with pytest.raises(RouterError, match="Octet 300"):
        PeerSpec.parse("rack-1=172.16.1.300")


def test_peer_names_are_unique_bird_identifiers() -> None:
    doc, hosts = annotated(
        racks_topology(1),
        [
            ("node-1.dc", "192.168.1.1", {"rack": "rack-1"}),
            ("node_1_dc", "192.168.1.2", {"rack": "rack-1"}),
        ],
    )
    names = [p.proto for p in router_data(group_info(doc, "rack-1"), hosts).peers]
    assert names == ["host_node_1_dc", "host_node_1_dc_2"]
    assert pattern("10.1.0.0/29") == "10.1.0.0/29{29,32}"


def test_builtin_router_template_is_the_shipped_example() -> None:
    assert (ROOT / "examples" / "bird" / "router-bgp.conf.j2").read_text() == ROUTER_BGP
    assert (EXAMPLES / "bird").is_dir()
