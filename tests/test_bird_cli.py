"""`romana bird ...` (the typer sub-app) against a real romanad."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from romana.api.client import RomanaClient
from romana.cli.bird import app

from .conftest import ROOT, racks_topology
from .daemon import Daemon, running

pytestmark = [
    pytest.mark.daemons,
    pytest.mark.bird,
    pytest.mark.skipif(shutil.which("bird") is None, reason="needs bird2"),
]
HOST_TEMPLATE = ROOT / "examples" / "bird" / "host-bgp.conf.j2"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("bird-cli") / "data") as d:
        with RomanaClient(d.url) as client:
            client.apply_topology(racks_topology(2))
            client.add_host("h1", "192.168.1.11", {"rack": "rack-1"})
            client.add_host("h2", "192.168.1.12", {"rack": "rack-1"})
            client.allocate("a", "h1", "t", "a")
            client.allocate("b", "h1", "t", "b")
            client.allocate("c", "h2", "t", "a")
        yield d


def invoke(daemon: Daemon, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--url", daemon.url])
    return result.exit_code, result.output


def test_router_config_prints_a_neighbour_per_host_with_group_filters(daemon: Daemon) -> None:
    code, out = invoke(
        daemon, "router-config", "--group", "rack-1", "--local-as", "65101", "--peer-as", "65001"
    )
    assert code == 0, out
    assert "neighbor 192.168.1.11 as 65001;" in out and "neighbor 192.168.1.12 as 65001;" in out
    assert out.count("if net ~ [ 10.1.0.0/17{17,32} ] then accept;") == 2
    assert "upstream" not in out  # no --neighbor-ip: nothing announced upward


def test_strict_router_config_names_each_hosts_blocks(daemon: Daemon) -> None:
    code, out = invoke(
        daemon,
        "router-config",
        "--group",
        "rack-1",
        "--strict",
        "--local-as",
        "65101",
        "--peer-as",
        "65001",
    )
    assert code == 0, out
    assert "if net ~ [ 10.1.0.0/18{18,32} ] then accept;" in out  # h1's area (two blocks)
    assert "if net ~ [ 10.1.64.0/18{18,32} ] then accept;" in out  # h2's


def test_router_config_output_is_validated_and_written(daemon: Daemon, tmp_path: Path) -> None:
    out_file = tmp_path / "bird.conf"
    code, out = invoke(
        daemon,
        "router-config",
        "--group",
        "rack-1",
        "--local-as",
        "65101",
        "--output",
        str(out_file),
    )
    assert code == 0, out
    assert "written" in out and "protocol bgp host_h1" in out_file.read_text()
    code, out = invoke(
        daemon,
        "router-config",
        "--group",
        "rack-1",
        "--local-as",
        "65101",
        "--output",
        str(out_file),
    )
    assert code == 0 and "unchanged" in out
    # A template BIRD refuses: exit 1, file untouched.
    bad = tmp_path / "bad.j2"
    bad.write_text("protocol bgp {{ group }} {}\n")
    before = out_file.read_text()
    code, out = invoke(
        daemon,
        "router-config",
        "--group",
        "rack-1",
        "--template",
        str(bad),
        "--output",
        str(out_file),
    )
    assert code == 1 and "BIRD rejects" in out
    assert out_file.read_text() == before


def test_router_config_errors(daemon: Daemon) -> None:
    code, out = invoke(daemon, "router-config", "--group", "rack-9")
    assert code == 1 and 'no group "rack-9"' in out
    code, out = invoke(daemon, "router-config", "--group", "/", "--peer", "rack-1")
    assert code == 2 and "NAME=IP" in out
    code, out = invoke(
        daemon,
        "router-config",
        "--group",
        "/",
        "--local-as",
        "65000",
        "--peer",
        "rack-1=172.16.1.1@65101",
    )
    assert code == 0 and "neighbor 172.16.1.1 as 65101;" in out
    assert "child groups without --peer (not configured): rack-2" in out


def test_host_config_previews_what_the_publisher_writes(daemon: Daemon) -> None:
    code, out = invoke(
        daemon,
        "host-config",
        "--host",
        "h1",
        "--template",
        str(HOST_TEMPLATE),
        "--local-as",
        "65001",
        "--neighbor-ip",
        "192.168.1.1",
        "--neighbor-as",
        "65101",
    )
    assert code == 0, out
    assert "route 10.1.0.0/18 blackhole;" in out and "local 192.168.1.11 as 65001;" in out
    # A variable the template needs but nobody gave: a clear error naming it.
    code, out = invoke(daemon, "host-config", "--host", "h1", "--template", str(HOST_TEMPLATE))
    assert code == 1 and "local_as" in out and "is undefined" in out
