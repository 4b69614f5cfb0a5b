"""Prefix groups are carved exactly as docs/architecture.md says; hosts are placed by labels."""

from __future__ import annotations

from typing import Any

import pytest

from romana.errors import Conflict, InvalidRequest
from romana.ipam import Engine

from .conftest import racks_topology


def leaf_cidrs(engine: Engine, network: str) -> dict[str, str]:
    return {path: leaf.cidr for path, leaf in engine.state.trees[network].leaves.items()}


def test_four_racks_carve_the_documented_quarters(example: Any) -> None:
    engine = Engine()
    engine.apply_topology(example("datacenter-4-racks.json"))
    assert leaf_cidrs(engine, "romana-network") == {
        "rack-1": "10.1.0.0/18",
        "rack-2": "10.1.64.0/18",
        "rack-3": "10.1.128.0/18",
        "rack-4": "10.1.192.0/18",
    }


def test_flat_network_single_group_takes_everything(example: Any) -> None:
    engine = Engine()
    engine.apply_topology(example("flat.json"))
    assert leaf_cidrs(engine, "romana-network") == {"all-hosts": "10.1.0.0/16"}


def test_eight_placeholder_groups(example: Any) -> None:
    engine = Engine()
    engine.apply_topology(example("eight-host-groups.json"))
    cidrs = leaf_cidrs(engine, "romana-network")
    assert list(cidrs.values()) == [f"10.{112 + 2 * i}.0.0/15" for i in range(8)]
    # Unlabelled hosts are spread round-robin over the eight groups, in map order.
    for i in range(10):
        engine.add_host(f"n{i}", f"192.168.0.{i + 1}")
    placed = [engine.host(f"n{i}").groups["romana-network"]["group"] for i in range(10)]
    assert placed == [f"host-group-{i}" for i in range(1, 9)] + ["host-group-1", "host-group-2"]


def test_az_subgroups_follow_zone_labels(example: Any) -> None:
    engine = Engine()
    engine.apply_topology(example("aws-us-west-1.json"))
    cidrs = leaf_cidrs(engine, "romana-network")
    assert cidrs["us-west-1a/us-west-1a-1"] == "10.112.0.0/16"
    assert cidrs["us-west-1a/us-west-1a-8"] == "10.119.0.0/16"
    assert cidrs["us-west-1b/us-west-1b-1"] == "10.120.0.0/16"
    assert cidrs["us-west-1b/us-west-1b-8"] == "10.127.0.0/16"
    zone = "failure-domain.beta.kubernetes.io/zone"
    for i in range(3):
        engine.add_host(f"b{i}", f"192.168.1.{i + 1}", {zone: "us-west-1b"})
    groups = [engine.host(f"b{i}").groups["romana-network"]["group"] for i in range(3)]
    assert groups == [
        "us-west-1b/us-west-1b-1",
        "us-west-1b/us-west-1b-2",
        "us-west-1b/us-west-1b-3",
    ]
    with pytest.raises(InvalidRequest, match="fits no group"):
        engine.add_host("x", "192.168.9.9", {zone: "us-east-1a"})


def test_three_groups_pad_to_four_and_padding_gets_no_host() -> None:
    engine = Engine()
    engine.apply_topology(racks_topology(racks=3))
    assert list(leaf_cidrs(engine, "net").values()) == [
        "10.1.0.0/18",
        "10.1.64.0/18",
        "10.1.128.0/18",
    ]
    for i in range(12):
        engine.add_host(f"h{i}", f"192.168.0.{i + 1}", {"rack": f"rack-{i % 3 + 1}"})
    assert engine.state.trees["net"].leaf_containing(0x0A01C000) is None  # 10.1.192.0
    counts = [leaf.host_count for leaf in engine.state.trees["net"].leaves.values()]
    assert counts == [4, 4, 4]


def test_nested_groups_and_multiple_networks(example: Any) -> None:
    engine = Engine()
    engine.apply_topology(example("spine-leaf.yaml"))
    pods = leaf_cidrs(engine, "pods")
    assert pods == {
        "zone-a/rack-1": "10.1.0.0/18",
        "zone-a/rack-2": "10.1.64.0/18",
        "zone-b/rack-3": "10.1.128.0/19",
        "zone-b/rack-4": "10.1.160.0/19",
        "zone-b/rack-5": "10.1.192.0/19",
    }
    assert leaf_cidrs(engine, "kube-system-pods")["zone-b/rack-5"] == "10.2.12.0/23"
    # Pinned hosts were registered by the map itself, in both networks.
    a1 = engine.host("node-a1")
    assert a1.groups == {
        "pods": {"group": "zone-a/rack-1", "cidr": "10.1.0.0/18", "areas": []},
        "kube-system-pods": {"group": "zone-a/rack-1", "cidr": "10.2.0.0/22", "areas": []},
    }


def test_balanced_placement_descends_level_by_level() -> None:
    doc = {
        "networks": [{"name": "n", "cidr": "10.0.0.0/16"}],
        "topologies": [
            {
                "networks": ["n"],
                "map": [
                    {
                        "name": "a",
                        "groups": [
                            {"name": "a1", "groups": []},
                            {"name": "a2", "groups": []},
                            {"name": "a3", "groups": []},
                        ],
                    },
                    {"name": "b", "groups": [{"name": "b1", "groups": []}]},
                ],
            }
        ],
    }
    engine = Engine()
    engine.apply_topology(doc)
    for i in range(6):
        engine.add_host(f"h{i}", f"192.168.0.{i + 1}")
    order = [engine.host(f"h{i}").groups["n"]["group"] for i in range(6)]
    # Level by level: a/b alternate (fewest hosts in subtree), then a's children in turn.
    assert order == ["a/a1", "b/b1", "a/a2", "b/b1", "a/a3", "b/b1"]


def test_assignment_on_parent_and_child_must_both_match() -> None:
    doc = {
        "networks": [{"name": "n", "cidr": "10.0.0.0/16"}],
        "topologies": [
            {
                "networks": ["n"],
                "map": [
                    {
                        "name": "z",
                        "assignment": {"zone": "z"},
                        "groups": [
                            {"name": "r1", "assignment": {"rack": "1"}, "groups": []},
                            {"name": "r2", "assignment": {"rack": "2"}, "groups": []},
                        ],
                    },
                    {"name": "other", "assignment": {"zone": "other"}, "groups": []},
                ],
            }
        ],
    }
    engine = Engine()
    engine.apply_topology(doc)
    assert (
        engine.add_host("h", "192.168.0.1", {"zone": "z", "rack": "2", "x": "y"}).groups["n"][
            "group"
        ]
        == "z/r2"
    )
    with pytest.raises(InvalidRequest):
        engine.add_host("g", "192.168.0.2", {"rack": "2"})  # zone label missing


def test_label_update_refuses_to_move_but_allows_compatible_change(racks: Engine) -> None:
    with pytest.raises(Conflict, match="never moved silently") as info:
        racks.update_labels("h1", {"rack": "rack-3"})
    assert info.value.details == [
        "network \"net\" group \"rack-1\" requires labels {'rack': 'rack-1'}"
    ]
    assert racks.host("h1").groups["net"]["group"] == "rack-1"
    view = racks.update_labels("h1", {"rack": "rack-1", "role": "gpu"})
    assert view.labels == {"rack": "rack-1", "role": "gpu"}


def test_pinned_hosts_also_share_their_group_with_label_placed_ones() -> None:
    doc = racks_topology(racks=2)
    doc["topologies"][0]["map"][0] = {
        "name": "rack-1",
        "assignment": {"rack": "rack-1"},
        "hosts": [{"name": "p1", "ip": "192.168.5.1"}],
    }
    engine = Engine()
    engine.apply_topology(doc)
    assert engine.host("p1").groups["net"]["group"] == "rack-1"  # pinned despite no labels
    assert (
        engine.add_host("d1", "192.168.5.2", {"rack": "rack-1"}).groups["net"]["group"] == "rack-1"
    )
