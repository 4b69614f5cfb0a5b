"""The offline `romana topology` commands, run as the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import EXAMPLES, racks_topology

ROMANA = Path(sys.executable).parent / "romana"


def romana(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROMANA), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_validate_valid_file() -> None:
    result = romana("topology", "validate", str(EXAMPLES / "datacenter-4-racks.json"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("datacenter-4-racks.json: valid")


def test_validate_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    doc = racks_topology()
    doc["networks"][0]["cidr"] = "10.1.0.7/16"
    doc["topologies"][0]["map"][1]["hosts"] = [{"name": "x", "ip": "nope"}]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    result = romana("topology", "validate", str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        'networks[0].cidr: "10.1.0.7/16" has host bits set; did you mean "10.1.0.0/16"?',
        'topologies[0].map[1]: both "hosts" and "groups" given; a host group has one or the other',
        'topologies[0].map[1].hosts[0].ip: "nope" is not an IPv4 address; write it like '
        '"192.168.1.10" (no prefix length)',
        f"{path}: 3 error(s)",
    ]
    as_json = json.loads(romana("topology", "validate", "--json", str(path)).stdout)
    assert as_json["valid"] is False and len(as_json["problems"]) == 3


def test_validate_service_cidr_and_yaml(tmp_path: Path) -> None:
    result = romana(
        "topology", "validate", "--service-cidr", "10.1.0.0/24", str(EXAMPLES / "spine-leaf.yaml")
    )
    assert result.returncode == 1
    assert "overlaps the service CIDR 10.1.0.0/24" in result.stderr
    bad = romana(
        "topology", "validate", "--service-cidr", "nonsense", str(EXAMPLES / "spine-leaf.yaml")
    )
    assert bad.returncode == 1 and "--service-cidr" in bad.stderr


def test_show_json_annotates_every_group() -> None:
    result = romana("topology", "show", "--json", str(EXAMPLES / "spine-leaf.yaml"))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    zone_a = doc["topologies"][0]["map"][0]
    assert zone_a["cidr"] == {"pods": "10.1.0.0/17", "kube-system-pods": "10.2.0.0/21"}
    rack1 = zone_a["groups"][0]
    assert rack1["hosts"] == [
        {"name": "node-a1", "ip": "192.168.1.11"},
        {"name": "node-a2", "ip": "192.168.1.12"},
    ]
    assert doc["networks"][1]["block_mask"] == 29  # the default, filled in


def test_show_tree_for_people() -> None:
    result = romana("topology", "show", str(EXAMPLES / "datacenter-4-racks.json"))
    assert result.returncode == 0
    assert "rack-3 10.1.128.0/18 (16384 addresses)" in result.stdout
    assert "labels my-location-tag=rack-3" in result.stdout


def test_show_invalid_file_and_missing_file(tmp_path: Path) -> None:
    missing = romana("topology", "show", str(tmp_path / "nope.json"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    path = tmp_path / "bad.yaml"
    path.write_text("networks: []\ntopologies: []\n")
    bad = romana("topology", "show", str(path))
    assert bad.returncode == 1 and "networks: must not be empty" in bad.stderr


def test_schema_and_usage_errors() -> None:
    schema = json.loads(romana("topology", "schema").stdout)
    assert "HostGroup" in schema["$defs"]
    assert romana("topology", "bogus").returncode == 2
    assert romana("topology", "validate").returncode == 2
