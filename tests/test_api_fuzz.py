"""Fuzz romanad from its own OpenAPI spec: bad input never produces a 5xx.

Every operation of ``/openapi.json`` gets hypothesis-generated requests (schemathesis
strategies, valid and invalid bodies, paths and queries) against a real daemon. The
schemathesis pytest plugin does not work with pytest 9 yet, so operations are driven
directly with ``hypothesis.given``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, example, given, settings

from romana.topology import validate

from .conftest import EXAMPLES
from .daemon import running
from .test_topology_canonical import topology_maps

pytestmark = pytest.mark.daemons

EXAMPLES_PER_OPERATION = 40


def test_no_input_makes_the_server_fail(tmp_path: Path) -> None:
    topology = str(EXAMPLES / "datacenter-4-racks.json")
    with running(tmp_path / "data", "--topology", topology) as daemon:
        with daemon.client() as c:
            c.post(
                "/hosts",
                json={"name": "h1", "ip": "192.168.0.1", "tags": {"my-location-tag": "rack-1"}},
            )
        schema = schemathesis.openapi.from_url(f"{daemon.url}/openapi.json")
        failures: list[str] = []
        operations = 0
        for result in schema.get_all_operations():
            operation = result.ok()
            operations += 1

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate],
            )
            def fuzz(case: schemathesis.Case) -> None:
                if case.path == "/watch" and isinstance(case.query, dict):
                    case.query["timeout"] = 0.05  # a long poll may legitimately wait 300 s
                try:
                    response = case.call(base_url=daemon.url, timeout=10)
                except requests.RequestException as exc:
                    failures.append(f"{case.method} {case.formatted_path}: {exc}")
                    return
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} "
                        f"{case.body!r} -> {response.status_code} {response.text}"
                    )

            fuzz()
        assert operations >= 18, "every endpoint should be in the spec"
        assert not failures, "\n".join(failures[:10])
        with daemon.client() as c:
            assert c.get("/healthz").json()["status"] == "ok"


ODD_BUT_VALID = {
    "networks": [{"name": "net0", "cidr": " 10.16.0.0/255.240.0.0\t", "block_mask": 29}],
    "topologies": [
        {"networks": ["net0"], "map": [{"name": "r1", "groups": [], "routing": " L2-TO-HOST "}]}
    ],
}


def test_odd_but_valid_maps_never_make_post_topology_fail(tmp_path: Path) -> None:
    """Maps with odd spacing, netmasks and types, posted to a real daemon: 2xx or 4xx only,
    and a map the validator accepts is applied (the daemon and the validator agree)."""
    outcomes: dict[str, int] = {"applied": 0, "refused": 0}
    with running(tmp_path / "data") as daemon, daemon.client() as c:
        # Generated maps are mostly invalid; one odd but valid map is always among them.
        @example(doc=ODD_BUT_VALID)
        @given(doc=topology_maps())
        @settings(
            max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def post(doc: dict[str, Any]) -> None:
            response = c.post("/topology", json=doc)
            assert response.status_code < 500, response.text
            has_errors = any(p.severity == "error" for p in validate(doc))
            if response.status_code == 200:
                assert not has_errors
                outcomes["applied"] += 1
            else:
                assert response.json()["error"]["code"], response.text
                outcomes["refused"] += 1

        post()
        assert c.get("/healthz").json()["status"] == "ok"
        assert c.get("/topology").status_code in (200, 404)
    assert outcomes["applied"] > 0 and outcomes["refused"] > 0, outcomes
