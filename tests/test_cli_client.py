"""The `romana` commands that talk to romanad, run as the console script against a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from romana.api.client import RomanaClient
from romana.errors import Conflict, InvalidRequest, InvalidTopology, NotFound, RomanaError

from .conftest import EXAMPLES
from .daemon import Daemon, free_port, running

pytestmark = pytest.mark.daemons

ROMANA = Path(sys.executable).parent / "romana"
RACKS = EXAMPLES / "datacenter-4-racks.json"
NET = "romana-network"

Cli = Callable[..., subprocess.CompletedProcess[str]]


def romana(*args: str, input: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the console script with a clean connection environment plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in {"ROMANA_URL", "ROMANA_TOKEN"}}
    # A wide terminal keeps table rows on one line, so assertions can look at single lines.
    base["COLUMNS"] = "200"
    return subprocess.run(
        [str(ROMANA), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**base, **env},
        input=input,
    )


def line_with(text: str, output: str) -> str:
    lines = [line for line in output.splitlines() if text in line]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    data = tmp_path_factory.mktemp("cli-client") / "data"
    with running(data, "--topology", str(RACKS)) as d:
        yield d


@pytest.fixture
def cli(daemon: Daemon) -> Cli:
    """`romana` pointed at the module's daemon through ROMANA_URL."""

    def run(*args: str, input: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        return romana(*args, input=input, ROMANA_URL=daemon.url, **env)

    return run


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


# Each test owns its hosts (and the rack they sit in where exact addresses are asserted),
# so any test can run alone while they share one daemon.


def test_host_add_and_first_allocation_on_rack_2(cli: Cli) -> None:
    out = ok(cli("host", "add", "r2-a", "192.168.2.1", "--label", "my-location-tag=rack-2"))
    row = line_with("r2-a", out)
    assert "192.168.2.1" in row and "rack-2" in row and "10.1.64.0/18" in row

    out = ok(cli("ip", "allocate", "pod-a", "--host", "r2-a"))
    row = line_with("pod-a", out)
    assert row.split()[:3] == ["pod-a", "10.1.64.0", "r2-a"]
    assert "10.1.64.0/29" in row

    shown = json.loads(ok(cli("ip", "show", "pod-a", "--json")))
    assert shown == {
        "name": "pod-a",
        "ip": "10.1.64.0",
        "network": NET,
        "host": "r2-a",
        "tenant": "",
        "segment": "",
        "block": "10.1.64.0/29",
    }
    listed = json.loads(ok(cli("ip", "list", "--host", "r2-a", "--json")))
    assert listed["addresses"] == [shown] and isinstance(listed["revision"], int)

    host = json.loads(ok(cli("host", "show", "r2-a", "--json")))
    assert host["groups"] == {
        NET: {"group": "rack-2", "cidr": "10.1.64.0/18", "areas": ["10.1.64.0/18"]}
    }
    assert host["block_count"] == 1
    hosts = json.loads(ok(cli("host", "list", "--json")))["hosts"]
    assert host in hosts


def test_allocate_json_tenant_segment_and_duplicate_name(cli: Cli) -> None:
    ok(cli("host", "add", "r1-a", "192.168.1.1", "-l", "my-location-tag=rack-1"))
    address = json.loads(
        ok(
            cli(
                "ip",
                "allocate",
                "web-1",
                "--host",
                "r1-a",
                "--tenant",
                "t1",
                "--segment",
                "front",
                "--json",
            )
        )
    )
    assert address["ip"] == "10.1.0.0" and (address["tenant"], address["segment"]) == (
        "t1",
        "front",
    )
    assert [
        a["name"]
        for a in json.loads(ok(cli("ip", "list", "--tenant", "t1", "--json")))["addresses"]
    ] == ["web-1"]

    # The same request again (a retry) answers the address it holds; another is refused.
    retry = ["ip", "allocate", "web-1", "--host", "r1-a", "--tenant", "t1", "--segment", "front"]
    assert json.loads(ok(cli(*retry, "--json"))) == address
    again = cli("ip", "allocate", "web-1", "--host", "r1-a")
    assert again.returncode == 1 and again.stdout == ""
    first, *details = again.stderr.splitlines()
    assert first == (
        'error: address name "web-1" is already allocated (10.1.0.0) with other parameters: '
        "tenant '' (it has 't1'), segment '' (it has 'front')"
    )
    assert details == ["  release it first, or use another name"]

    missing = cli("ip", "allocate", "web-2", "--host", "nope")
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == ['error: host "nope" not found']


def test_release_by_ip_frees_the_block(cli: Cli) -> None:
    ok(cli("host", "add", "r3-a", "192.168.3.1", "-l", "my-location-tag=rack-3"))
    address = json.loads(ok(cli("ip", "allocate", "pod-r", "--host", "r3-a", "--json")))
    assert address["ip"] == "10.1.128.0"

    assert ok(cli("ip", "release", "10.1.128.0")).strip() == "released pod-r (10.1.128.0)"
    gone = cli("ip", "show", "pod-r")
    assert gone.returncode == 1 and 'address "pod-r" not found' in gone.stderr
    blocks = json.loads(ok(cli("block", "list", "--json")))["blocks"]
    assert "10.1.128.0/29" not in [b["cidr"] for b in blocks]
    again = cli("ip", "release", "10.1.128.0")
    assert again.returncode == 1
    assert 'no address named or numbered "10.1.128.0"' in again.stderr


def test_block_and_network_list(cli: Cli) -> None:
    ok(cli("host", "add", "r4-a", "192.168.4.1", "-l", "my-location-tag=rack-4"))
    ok(cli("ip", "allocate", "blk-1", "--host", "r4-a"))
    ok(cli("ip", "allocate", "blk-2", "--host", "r4-a"))

    row = line_with("10.1.192.0/29", ok(cli("block", "list")))
    assert row.split() == ["10.1.192.0/29", NET, "rack-4", "r4-a", "-", "-", "2"]
    blocks = json.loads(ok(cli("block", "list", "--network", NET, "--json")))["blocks"]
    assert {
        "cidr": "10.1.192.0/29",
        "network": NET,
        "group": "rack-4",
        "host": "r4-a",
        "tenant": "",
        "segment": "",
        "allocated_ip_count": 2,
    } in blocks
    unknown = cli("block", "list", "--network", "nope")
    assert unknown.returncode == 1 and 'network "nope" not found' in unknown.stderr

    row = line_with(NET, ok(cli("network", "list")))
    assert row.split()[:3] == [NET, "10.1.0.0/16", "/29"]
    (network,) = json.loads(ok(cli("network", "list", "--json")))
    assert network["name"] == NET and network["allocated"] >= 2


def test_blackout_add_list_remove(cli: Cli) -> None:
    assert ok(cli("blackout", "add", NET, "10.1.250.0/24")).split() == ["10.1.250.0/24"]
    assert json.loads(ok(cli("blackout", "list", NET, "--json"))) == {
        "network": NET,
        "blackouts": ["10.1.250.0/24"],
    }
    ok(cli("host", "add", "r4-b", "192.168.4.2", "-l", "my-location-tag=rack-4"))
    blocked = cli("ip", "allocate", "bo-1", "--host", "r4-b", "--ip", "10.1.250.9")
    assert blocked.returncode == 1
    assert "10.1.250.9 is blacked out in network romana-network" in blocked.stderr

    assert ok(cli("blackout", "remove", NET, "10.1.250.0/24")).strip() == (
        f"no blackouts in network {NET}"
    )
    assert json.loads(ok(cli("blackout", "list", NET, "--json")))["blackouts"] == []
    again = cli("blackout", "remove", NET, "10.1.250.0/24")
    assert again.returncode == 1 and "is not blacked out" in again.stderr
    outside = cli("blackout", "add", NET, "10.9.0.0/24")
    assert outside.returncode == 1 and "is not inside network" in outside.stderr


def test_host_label_and_remove(cli: Cli) -> None:
    ok(cli("host", "add", "r1-l", "192.168.1.50", "-l", "my-location-tag=rack-1"))
    host = json.loads(
        ok(cli("host", "label", "r1-l", "my-location-tag=rack-1", "zone=a", "--json"))
    )
    assert host["labels"] == {"my-location-tag": "rack-1", "zone": "a"}
    assert "my-location-tag=rack-1, zone=a" in line_with("r1-l", ok(cli("host", "list")))

    moved = cli("host", "label", "r1-l", "my-location-tag=rack-2")
    assert moved.returncode == 1
    assert (
        'new labels of host "r1-l" do not fit its current groups' in (moved.stderr.splitlines()[0])
    )

    ok(cli("ip", "allocate", "lbl-1", "--host", "r1-l"))
    assert ok(cli("host", "remove", "r1-l")).strip() == "removed host r1-l (192.168.1.50)"
    assert cli("host", "show", "r1-l").returncode == 1
    assert cli("ip", "show", "lbl-1").returncode == 1  # released with its host


def test_topology_get(cli: Cli) -> None:
    doc = json.loads(ok(cli("topology", "get", "--json")))
    groups = doc["topologies"][0]["map"]
    assert [(g["name"], g["cidr"]) for g in groups] == [
        ("rack-1", "10.1.0.0/18"),
        ("rack-2", "10.1.64.0/18"),
        ("rack-3", "10.1.128.0/18"),
        ("rack-4", "10.1.192.0/18"),
    ]
    assert "rack-3 10.1.128.0/18 (16384 addresses)" in ok(cli("topology", "get"))


def test_url_flag_and_unreachable_daemon(daemon: Daemon) -> None:
    assert ok(romana("network", "list", "--url", daemon.url)).startswith("NAME")
    url = f"http://127.0.0.1:{free_port()}"
    for result in (romana("host", "list", "--url", url), romana("ip", "list", ROMANA_URL=url)):
        assert result.returncode == 1
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"error: cannot reach romanad at {url}: ")


def test_bearer_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("guess")
    with running(tmp_path / "data", "--token-file", str(token)) as d:
        denied = romana("topology", "apply", str(RACKS), "--url", d.url)
        assert denied.returncode == 1
        assert denied.stderr.splitlines() == [
            "error: missing or wrong bearer token",
            "  set $ROMANA_TOKEN or pass --token-file",
        ]
        assert (
            romana(
                "host", "add", "h", "192.168.9.1", "--url", d.url, "--token-file", str(wrong)
            ).returncode
            == 1
        )
        # Reads need no token.
        empty = romana("topology", "get", "--url", d.url)
        assert empty.returncode == 1 and "no topology applied yet" in empty.stderr

        out = ok(romana("topology", "apply", str(RACKS), "--url", d.url, ROMANA_TOKEN="s3cret"))
        assert "rack-2 10.1.64.0/18" in out and "applied" in out
        host = json.loads(
            ok(
                romana(
                    "host",
                    "add",
                    "h",
                    "192.168.9.1",
                    "-l",
                    "my-location-tag=rack-2",
                    "--json",
                    "--url",
                    d.url,
                    "--token-file",
                    str(token),
                )
            )
        )
        assert host["groups"][NET]["cidr"] == "10.1.64.0/18"
        unreadable = romana(
            "host", "remove", "h", "--url", d.url, "--token-file", str(tmp_path / "absent")
        )
        assert unreadable.returncode == 1 and "cannot read token file" in unreadable.stderr


def test_topology_apply_json_and_invalid_map(cli: Cli, tmp_path: Path) -> None:
    applied = json.loads(ok(cli("topology", "apply", str(RACKS), "--json")))
    assert applied["topology"]["topologies"][0]["map"][1]["cidr"] == "10.1.64.0/18"
    bad = tmp_path / "bad.yaml"
    bad.write_text("networks: []\ntopologies: []\n")
    result = cli("topology", "apply", str(bad))
    assert result.returncode == 1
    assert "networks: must not be empty" in result.stderr


def test_usage_errors_and_completion() -> None:
    assert romana("ip", "allocate", "pod").returncode == 2  # --host is required
    assert romana("host", "add", "h", "10.0.0.1", "--label", "novalue").returncode == 2
    assert romana("host", "label", "h").returncode == 2  # neither labels nor --clear
    assert romana("blackout", "add", NET).returncode == 2
    assert romana("bogus").returncode == 2
    assert "--install-completion" in romana("--help").stdout


def test_client_raises_the_server_errors(daemon: Daemon) -> None:
    with RomanaClient(daemon.url) as client:
        with pytest.raises(NotFound, match='host "ghost" not found'):
            client.host("ghost")
        client.add_host("cl-1", "192.168.7.1", {"my-location-tag": "rack-3"})
        with pytest.raises(Conflict) as conflict:
            client.add_host("cl-2", "192.168.7.1", {"my-location-tag": "rack-3"})
        assert conflict.value.http_status == 409
        with pytest.raises(InvalidRequest, match="not a valid IPv4 CIDR"):
            client.add_blackout(NET, "nonsense/99")
        with pytest.raises(InvalidTopology) as invalid:
            client.apply_topology({"networks": [], "topologies": []})
        assert any("must not be empty" in str(p) for p in invalid.value.problems)
        assert client.health()["status"] == "ok"
        assert client.remove_host("cl-1")["name"] == "cl-1"
    with pytest.raises(RomanaError, match="cannot reach romanad"):
        RomanaClient(f"127.0.0.1:{free_port()}").health()


POLICY_YAML = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: red}}}]
    ports: [{port: http}]
---
{"id": "ssh", "direction": "ingress", "applied_to": [{"tenant_id": "shop"}],
 "ingress": [{"peers": [{"peer": "any"}], "rules": [{"protocol": "tcp", "ports": [22]}]}]}
"""


def test_policy_tenant_and_endpoint_labels(cli: Cli, tmp_path: Path) -> None:
    ok(cli("host", "add", "pol-a", "192.168.4.77", "-l", "my-location-tag=rack-4"))
    source = tmp_path / "policies.yaml"
    source.write_text(POLICY_YAML)
    out = ok(cli("policy", "add", str(source)))
    assert "k8s:shop:web" in line_with("k8s:shop:web", out) and "app=web" in out
    assert "ingress" in line_with("ssh", out)
    # A duplicate Romana id is refused (exit 1, the server's message).
    again = cli("policy", "add", "-", input=POLICY_YAML.split("---\n")[1])
    assert again.returncode == 1 and 'policy "ssh" exists' in again.stderr
    listed = json.loads(ok(cli("policy", "list", "--json")))
    assert sorted(p["id"] for p in listed) == ["k8s:shop:web", "ssh"]
    shown = json.loads(ok(cli("policy", "show", "k8s:shop:web")))
    assert shown["policy"]["ingress"][0]["ports"] == [{"protocol": "tcp", "name": "http"}]
    assert shown["source"]["metadata"] == {"name": "web", "namespace": "shop"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": "x", "direction": "up", "applied_to": [], "ingress": []}')
    refused = cli("policy", "add", str(bad))
    assert refused.returncode == 1 and "direction" in refused.stderr

    tenant = json.loads(ok(cli("tenant", "label", "shop", "team=red", "--json")))
    assert tenant["effective_labels"] == {"team": "red", "kubernetes.io/metadata.name": "shop"}
    assert "team=red" in line_with("shop", ok(cli("tenant", "list")))

    ok(
        cli(
            "ip",
            "allocate",
            "shop-web-1",
            "--host",
            "pol-a",
            "--tenant",
            "shop",
            "-l",
            "app=web",
            "--port",
            "http=8080",
        )
    )
    out = ok(cli("ip", "label", "shop-web-1", "app=web", "tier=front", "--port", "http=8081/TCP"))
    assert out.strip() == "shop-web-1: app=web, tier=front http=8081/tcp"
    address = json.loads(ok(cli("ip", "show", "shop-web-1", "--json")))
    assert address["labels"] == {"app": "web", "tier": "front"}
    assert address["ports"] == [{"name": "http", "port": 8081, "protocol": "tcp"}]
    assert cli("ip", "label", "shop-web-1", "--port", "http").returncode == 2  # usage error

    assert "removed ssh" in ok(cli("policy", "remove", "ssh"))
    assert cli("policy", "show", "ssh").returncode == 1
    ok(cli("policy", "remove", "k8s:shop:web"))
