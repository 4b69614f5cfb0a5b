"""Fuzz romanad from its own OpenAPI spec: bad input never produces a 5xx.

Every operation of ``/openapi.json`` gets hypothesis-generated requests (schemathesis
strategies, valid and invalid bodies, paths and queries) against a real daemon. The
schemathesis pytest plugin does not work with pytest 9 yet, so operations are driven
directly with ``hypothesis.given``.
"""

from __future__ import annotations

from pathlib import Path

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from .conftest import EXAMPLES
from .daemon import running

EXAMPLES_PER_OPERATION = 40


def test_no_input_makes_the_server_fail(tmp_path: Path) -> None:
    topology = str(EXAMPLES / "datacenter-4-racks.json")
    with running(tmp_path / "data", "--topology", topology) as daemon:
        with daemon.client() as c:
            c.post("/hosts", json={"name": "h1", "ip": "192.168.0.1",
                                   "tags": {"my-location-tag": "rack-1"}})
        schema = schemathesis.openapi.from_url(f"{daemon.url}/openapi.json")
        failures: list[str] = []
        operations = 0
        for result in schema.get_all_operations():
            operation = result.ok()
            operations += 1

            @given(case=operation.as_strategy())
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck),
                      phases=[Phase.explicit, Phase.generate])
            def fuzz(case: schemathesis.Case) -> None:
                if case.path == "/watch" and isinstance(case.query, dict):
                    case.query["timeout"] = 0.05  # a long poll may legitimately wait 300 s
                try:
                    response = case.call(base_url=daemon.url, timeout=10)
                except requests.RequestException as exc:
                    failures.append(f"{case.method} {case.formatted_path}: {exc}")
                    return
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} "
                                    f"{case.body!r} -> {response.status_code} {response.text}")

            fuzz()
        assert operations >= 18, "every endpoint should be in the spec"
        assert not failures, "\n".join(failures[:10])
        with daemon.client() as c:
            assert c.get("/healthz").json()["status"] == "ok"
