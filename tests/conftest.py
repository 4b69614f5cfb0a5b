"""Shared fixtures: example maps and small topology builders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from romana.ipam import Engine

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def racks_topology(
    racks: int = 4, cidr: str = "10.1.0.0/16", block_mask: int = 29, label: str = "rack"
) -> dict[str, Any]:
    return {
        "networks": [{"name": "net", "cidr": cidr, "block_mask": block_mask}],
        "topologies": [
            {
                "networks": ["net"],
                "map": [
                    {"name": f"rack-{r}", "assignment": {label: f"rack-{r}"}, "groups": []}
                    for r in range(1, racks + 1)
                ],
            }
        ],
    }


@pytest.fixture
def example() -> Any:
    def load(name: str) -> dict[str, Any]:
        from romana.topology import read_file

        return read_file(EXAMPLES / name)  # type: ignore[no-any-return]

    return load


@pytest.fixture
def racks() -> Engine:
    """4 racks of 10.1.0.0/16 with /29 blocks; hosts h1..h8, two per rack."""
    engine = Engine()
    engine.apply_topology(racks_topology())
    for i in range(1, 9):
        engine.add_host(f"h{i}", f"192.168.0.{i}", {"rack": f"rack-{(i - 1) // 2 + 1}"})
    return engine


def dump(data: Any) -> str:
    return json.dumps(data, indent=2)
