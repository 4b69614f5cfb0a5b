"""Validation reports every problem at once, each with its JSON path and a hint."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from romana.errors import InvalidTopology
from romana.topology import Topology, check, json_schema, parse_text, validate

from .conftest import racks_topology


def errors(doc: Any, **kw: Any) -> list[str]:
    return [str(p) for p in validate(doc, **kw) if p.severity == "error"]


def test_valid_map_has_no_problems() -> None:
    assert validate(racks_topology()) == []


def test_every_problem_is_reported_in_one_pass() -> None:
    doc = {
        "networks": [
            {"name": "a", "cidr": "10.1.0.1/16", "block_mask": 29},
            {"name": "a", "cidr": "10.2.0.0/16", "blok_mask": 29},
        ],
        "topologies": [
            {"networks": ["a", "nope"], "map": [{"name": "x", "hosts": [], "groups": []}]}
        ],
    }
    found = errors(doc)
    assert found == [
        'networks[0].cidr: "10.1.0.1/16" has host bits set; did you mean "10.1.0.0/16"?',
        'networks[1].blok_mask: unknown field "blok_mask"; did you mean "block_mask"?',
        'networks[1].name: duplicate network name "a"; already used by networks[0]; '
        "names must be unique",
        'topologies[0].networks[1]: network "nope" is not defined; define it under networks',
        'topologies[0].map[0]: both "hosts" and "groups" given; a host group has one or the other',
    ]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.pop("networks"), "networks: required field missing"),
        (lambda d: d.update(networks=[]), "networks: must not be empty"),
        (lambda d: d.update(topologies=[]), "topologies: must not be empty"),
        (lambda d: d["networks"][0].pop("name"), "networks[0].name: required field missing"),
        (lambda d: d["networks"][0].update(name=""), "networks[0].name: must not be empty"),
        (
            lambda d: d["networks"][0].update(cidr="10.1.0.0/33"),
            'networks[0].cidr: "10.1.0.0/33" is not an IPv4 CIDR',
        ),
        (
            lambda d: d["networks"][0].update(cidr="fd00::/64"),
            'networks[0].cidr: "fd00::/64" is not an IPv4 CIDR',
        ),
        (
            lambda d: d["networks"][0].update(block_mask=16),
            "networks[0].block_mask: block_mask 16 is not in (16, 32]",
        ),
        (
            lambda d: d["networks"][0].update(block_mask=33),
            "networks[0].block_mask: block_mask 33 is not in (16, 32]",
        ),
        (
            lambda d: d["networks"][0].update(block_mask="29"),
            "networks[0].block_mask: expected an integer, got a string",
        ),
        (lambda d: d["topologies"][0].update(map=[]), "topologies[0].map: must not be empty"),
        (
            lambda d: d["topologies"][0]["map"][0].pop("groups"),
            'topologies[0].map[0]: neither "hosts" nor "groups" given',
        ),
        (
            lambda d: d["topologies"][0]["map"][1].update(name="rack-1"),
            'topologies[0].map[1].name: duplicate group name "rack-1" among siblings',
        ),
        (
            lambda d: d["topologies"][0]["map"][0].update(assignment={"rack": 1}),
            "topologies[0].map[0].assignment.rack: expected a string label value",
        ),
        (
            lambda d: d["topologies"][0]["map"][0].update(routng="x"),
            'topologies[0].map[0].routng: unknown field "routng"; did you mean "routing"?',
        ),
        (
            lambda d: d["topologies"][0]["map"][0].update(routing=5),
            "topologies[0].map[0].routing: expected a string",
        ),
        (
            lambda d: d["networks"][0].update(tenants=[]),
            "networks[0].tenants: expected a non-empty list of tenant names",
        ),
        (lambda d: d.update(extra=1), 'extra: unknown field "extra"'),
    ],
)
def test_single_problem(mutate: Any, expected: str) -> None:
    doc = racks_topology()
    mutate(doc)
    found = errors(doc)
    assert found[0].startswith(expected), found
    # The only other report allowed is the consequence: the network can no longer be found.
    assert all("is not defined" in f for f in found[1:]), found


def test_overlapping_networks() -> None:
    doc = racks_topology()
    doc["networks"].append({"name": "b", "cidr": "10.1.128.0/17"})
    doc["topologies"][0]["networks"].append("b")
    assert errors(doc) == [
        "networks[1].cidr: 10.1.128.0/17 overlaps 10.1.0.0/16 of networks[0]; "
        "network CIDRs must not overlap"
    ]


def test_network_in_two_topologies_and_in_none() -> None:
    doc = racks_topology()
    doc["networks"].append({"name": "spare", "cidr": "10.9.0.0/16"})
    doc["topologies"].append(copy.deepcopy(doc["topologies"][0]))
    problems = validate(doc)
    assert [str(p) for p in problems] == [
        'topologies[1].networks[0]: network "net" is already used by topologies[0].networks[0]; '
        "a network belongs to exactly one topology",
        'warning: networks[1]: network "spare" is in no topology; no host can get addresses '
        "from it",
    ]


def test_hosts_duplicate_names_ips_and_bad_ip() -> None:
    doc = racks_topology()
    doc["topologies"][0]["map"][0] = {
        "name": "rack-1",
        "hosts": [
            {"name": "a", "ip": "192.168.0.1"},
            {"name": "a", "ip": "192.168.0.2"},
            {"name": "b", "ip": "192.168.0.1"},
            {"name": "c", "ip": "192.168.0.3/24"},
            {"name": "d", "ip": "10.1.0.5"},
            {"name": "e"},
        ],
    }
    base = "topologies[0].map[0].hosts"
    assert errors(doc) == [
        f'{base}[1].name: duplicate host name "a"; already listed at {base}[0]',
        f'{base}[2].ip: duplicate host IP 192.168.0.1; already used by host "a" at {base}[0]',
        f'{base}[3].ip: "192.168.0.3/24" is not an IPv4 address; write it like "192.168.1.10" '
        "(no prefix length)",
        f'{base}[4].ip: host IP 10.1.0.5 lies inside pod network "net" (10.1.0.0/16); '
        "host and pod ranges must differ",
        f"{base}[5].ip: required field missing",
    ]


def test_leaf_group_smaller_than_a_block() -> None:
    doc = racks_topology(racks=5, cidr="10.1.0.0/24", block_mask=26)
    # 5 racks pad to 8: each gets a /27, smaller than one /26 block.
    assert errors(doc) == [
        'topologies[0].map[0]: leaf group gets a /27 of network "net" (10.1.0.0/24), smaller '
        "than one /26 block; use a larger network CIDR, fewer groups, or a longer block_mask"
    ]
    assert errors(racks_topology(racks=4, cidr="10.1.0.0/24", block_mask=26)) == []


def test_service_cidr_overlap() -> None:
    assert errors(racks_topology(), service_cidr="10.1.200.0/24") == [
        "networks[0].cidr: 10.1.0.0/16 overlaps the service CIDR 10.1.200.0/24; pick a pod "
        "CIDR outside the Kubernetes service range"
    ]
    assert errors(racks_topology(), service_cidr="10.96.0.0/12") == []


def test_default_block_mask() -> None:
    doc = racks_topology()
    del doc["networks"][0]["block_mask"]
    topo, _ = check(doc)
    assert topo.networks[0].effective_block_mask == 29
    small = {
        "networks": [{"name": "n", "cidr": "10.1.0.0/30"}],
        "topologies": [{"networks": ["n"], "map": [{"groups": []}]}],
    }
    topo, _ = check(small)
    assert topo.networks[0].effective_block_mask == 30


def test_check_raises_with_all_problems() -> None:
    doc = racks_topology()
    doc["networks"][0]["cidr"] = "bogus"
    doc["topologies"][0]["map"][0]["hosts"] = []
    with pytest.raises(InvalidTopology) as info:
        check(doc)
    assert len(info.value.problems) == 2
    assert "networks[0].cidr" in info.value.message


def test_yaml_and_json_parse_to_the_same_document() -> None:
    yaml_text = """
networks:
  - {name: net, cidr: 10.1.0.0/16, block_mask: 29}
topologies:
  - networks: [net]
    map:
      - {name: rack-1, assignment: {rack: rack-1}, groups: []}
"""
    assert parse_text(yaml_text) == parse_text(
        '{"networks":[{"name":"net","cidr":"10.1.0.0/16","block_mask":29}],"topologies":'
        '[{"networks":["net"],"map":[{"name":"rack-1","assignment":{"rack":"rack-1"},'
        '"groups":[]}]}]}'
    )


def test_parse_errors_name_the_position() -> None:
    with pytest.raises(InvalidTopology, match="invalid JSON at line 1 column 2"):
        parse_text("{,}")
    with pytest.raises(InvalidTopology, match="invalid YAML at line 2"):
        parse_text("a: [1\nb: {")


def test_non_object_documents() -> None:
    assert errors([]) == ["expected an object, got a list"]
    assert errors({"networks": "x", "topologies": {}}) == [
        "networks: expected a list of network definitions, got a string",
        "topologies: expected a list of topology mappings, got an object",
    ]


def test_schema_describes_the_format_and_extensions() -> None:
    schema = json_schema()
    defs = schema["$defs"]
    assert set(defs["Network"]["properties"]) == {
        "name",
        "cidr",
        "block_mask",
        "tenants",
        "nat_outgoing",
    }
    assert set(schema["properties"]) == {"networks", "topologies", "cluster_ranges"}
    assert set(defs["HostGroup"]["properties"]) == {
        "name",
        "hosts",
        "groups",
        "assignment",
        "routing",
    }
    assert defs["Host"]["additionalProperties"] is False
    assert schema["required"] == ["networks", "topologies"]


def test_every_valid_document_builds_the_typed_model(example: Any) -> None:
    for name in ("flat.json", "datacenter-4-racks.json", "spine-leaf.yaml"):
        doc = example(name)
        assert validate(doc) == []
        assert Topology.model_validate(doc).to_json()["networks"][0]["name"]
