"""Data written before host areas existed loads and keeps serving, in a real romanad.

``data/pre-areas.json`` was written by the release before areas (commit f256aa1): its fact
log and its version-1 snapshot for two racks, four hosts whose blocks interleave (that
release gave out the lowest free block of the group), three tenants, some releases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from romana.api.client import RomanaClient
from romana.store.sqlite import SqliteStore

from .daemon import running

OLD = json.loads((Path(__file__).parent / "data" / "pre-areas.json").read_text())


def old_addresses() -> dict[str, str]:
    return {name: ip for name, _, ip in OLD["snapshot"]["addresses"]}


def check_serving(client: RomanaClient) -> None:
    now = {a["name"]: a["ip"] for a in client.addresses()["addresses"]}
    assert now == old_addresses()  # every allocation kept, same IPs
    assert all(not h["groups"]["pods"]["areas"] for h in client.hosts()["hosts"])
    assert client.routes_verify()["ok"]
    # The interleaved old blocks keep a route each: nothing was moved.
    tor = client.routes(group="rack-1")["routes"]
    assert len(tor) > 2
    # New blocks go to areas carved from the free room; old blocks keep their routes.
    fresh = client.allocate("new", "h0", "t-new")
    areas = client.host("h0")["groups"]["pods"]["areas"]
    assert len(areas) == 1
    assert client.routes_verify()["ok"]
    assert fresh["block"] not in {b["cidr"] for b in OLD["snapshot"]["blocks"]}


@pytest.mark.parametrize("form", ["facts", "snapshot"])
def test_a_data_directory_from_before_areas_loads_and_serves(tmp_path: Path, form: str) -> None:
    data = tmp_path / "data"
    with SqliteStore(data) as store:
        facts: list[dict[str, Any]] = OLD["facts"]
        store.append(facts, 0)
        if form == "snapshot":  # a version-1 snapshot, and the facts before it compacted
            store.save_snapshot(len(facts), OLD["snapshot"])
            store.compact(len(facts))
    assert OLD["snapshot"]["version"] == 1
    with running(data) as daemon, RomanaClient(daemon.url) as client:
        assert client.health()["revision"] == len(OLD["facts"])
        check_serving(client)
