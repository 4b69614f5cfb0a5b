"""The CNI plugin's parts without namespaces: the protocol, the installed executable,
configuration, results, the leak verdicts and the romanad client (against real sockets and
servers)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from romana.cni import config, leaks, result, shim
from romana.cni.install import install
from romana.cni.lean_client import LeanRomanadClient, Unreachable
from romana.cni.podmsg import Link
from romana.cni.server import ProtocolError, decode
from romana.errors import CniError, RomanaError

from .daemon import running
from .test_cni_plugin import build_plugin


# -- the plugin's protocol (the shim is its reference; tests/test_cni_plugin.py runs both) ------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"cniVersion": "1.0.0", "agent_socket": "/run/a.sock"}', b"/run/a.sock"),
        ('{"cniVersion":"1.0.0","ipam":{"type":"romana-ipam","agent_socket" :\n "/x"}}', b"/x"),
        ('{"agent_socket": "/with \\"quote\\".sock"}', b'/with "quote".sock'),
        ('{"ipam": {"agent_socket": "/e\\u0073c\\u00e9"}}', "/esc\u00e9".encode()),
        ('{"type": "agent_socket", "name": "n"}', None),  # the key only as a value
        ('{"type": "agent_socket", "agent_socket": "/later"}', b"/later"),
        ('{"cniVersion": "1.0.0"}', None),
        ('{"agent_socket": 5}', None),
        ('{"agent_socket": "/bad\\escape"}', None),
        ('{"agent_socket": "/unterminated', None),
    ],
)
def test_shim_finds_the_agent_socket_without_a_json_parser(
    text: str, expected: bytes | None
) -> None:
    assert shim.string_field(text.encode(), "agent_socket") == expected


def test_shim_error_objects_are_json_with_any_message() -> None:
    raw = shim.error_object(
        b"1.0.0", 11, b'agent "down"\\', "line\nbreak\ttab \u00e9".encode() + b"\xff"
    )
    assert json.loads(raw) == {
        "cniVersion": "1.0.0",
        "code": 11,
        "msg": 'agent "down"\\',
        "details": "line\nbreak\ttab \u00e9\ufffd",
    }


def shim_request(mode: str, env: dict[str, str], stdin: bytes) -> bytes:
    """The bytes the plugin sends (built the way ``shim.run`` builds them)."""
    block = b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())
    return shim.MAGIC + mode.encode() + b"\0" + block + b"\0" + stdin


def test_the_agent_decodes_what_the_shim_sends() -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_ARGS": "K8S_POD_NAMESPACE=a;X=b=c", "CNI_IFNAME": "eth0"}
    stdin = b'{"cniVersion": "1.0.0"}\x00 binary tail'
    assert decode(shim_request("ipam", env, stdin)) == ("ipam", env, stdin)
    assert decode(shim_request("full", {}, b"")) == ("full", {}, b"")
    for bad in (b"GET / HTTP/1.1\r\n", shim.MAGIC + b"other\0\0", shim.MAGIC + b"full\0A=b"):
        with pytest.raises(ProtocolError):
            decode(bad)


@pytest.fixture(scope="module")
def executable() -> Path:
    return build_plugin()


@pytest.fixture
def agent_stub(tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
    """A Unix socket answering every request with exit code 0 and '{}' (records requests)."""
    path = tmp_path / "stub.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                seen.append(data)
                conn.sendall(b"0\n{}\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, seen
    server.close()


def run_plugin(plugin: Path, env: dict[str, str], stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(plugin)], input=stdin, env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_installed_plugin_forwards_under_both_names(
    tmp_path: Path, executable: Path, agent_stub: tuple[Path, list[bytes]]
) -> None:
    path, seen = agent_stub
    installed = install(tmp_path / "bin")
    assert [p.name for p in installed] == ["romana", "romana-ipam"]
    assert all(os.access(p, os.X_OK) for p in installed)
    assert all(p.read_bytes() == executable.read_bytes() for p in installed)
    config_text = json.dumps({"cniVersion": "1.0.0", "name": "n", "agent_socket": str(path)})
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "HOME": "/nowhere"}
    for mode, plugin in (("ipam", "romana-ipam"), ("full", "romana")):
        answer = run_plugin(tmp_path / "bin" / plugin, env, config_text)
        assert (answer.returncode, answer.stdout) == (0, "{}\n")
        assert seen[-1] == shim_request(
            mode, {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1"}, config_text.encode()
        )  # HOME is not forwarded


def test_shim_imports_nothing_heavy(tmp_path: Path, agent_stub: tuple[Path, list[bytes]]) -> None:
    """The reference (and the console scripts' fast path) imports the shim and ``_socket``
    beyond a bare interpreter, nothing else (``time`` only while waiting for an agent)."""
    path, _ = agent_stub
    config_text = json.dumps({"cniVersion": "1.0.0", "name": "n", "agent_socket": str(path)})
    baseline = subprocess.run(
        [sys.executable, "-IS", "-X", "importtime", "-c", "pass"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    launcher = tmp_path / "launcher.py"
    launcher.write_text(
        f"import posix, sys\nsys.path.append({str(Path(shim.__file__).parent)!r})\n"
        "import shim\nposix._exit(shim.run('full'))\n"
    )
    traced = subprocess.run(
        [sys.executable, "-IS", "-X", "importtime", str(launcher)],
        input=config_text,
        env={"CNI_COMMAND": "ADD"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert traced.returncode == 0, traced.stderr

    def modules(trace: str) -> set[str]:
        return {
            line.rsplit("|", 1)[-1].strip()
            for line in trace.splitlines()
            if line.startswith("import time:") and "|" in line
        } - {"imported package"}

    assert modules(traced.stderr) - modules(baseline) == {"shim", "_socket"}


def test_plugin_answers_version_and_unreachable_agent_by_itself(
    tmp_path: Path, executable: Path
) -> None:
    install(tmp_path)
    plugin = tmp_path / "romana"
    conf = json.dumps(
        {
            "cniVersion": "0.4.0",
            "agent_socket": str(tmp_path / "none.sock"),
            "agent_wait_seconds": 0,
        }
    )
    version = run_plugin(plugin, {"CNI_COMMAND": "VERSION"}, conf)
    assert version.returncode == 0
    assert json.loads(version.stdout) == {
        "cniVersion": "0.4.0",
        "supportedVersions": list(config.SUPPORTED_VERSIONS),
    }
    assert shim.SUPPORTED_VERSIONS == config.SUPPORTED_VERSIONS
    for command, code in (("ADD", 11), ("DEL", 11), ("STATUS", 50), ("", 4)):
        answer = run_plugin(plugin, {"CNI_COMMAND": command}, conf)
        error = json.loads(answer.stdout)
        assert answer.returncode == 1 and error["code"] == code, answer.stdout
        assert error["cniVersion"] == "0.4.0"


# -- configuration ----------------------------------------------------------------------------
ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "abc123",
    "CNI_NETNS": "/var/run/netns/p",
    "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;junk",
}


def parse(
    document: dict[str, Any] | bytes, mode: config.Mode = "full", **env: str
) -> config.Invocation:
    stdin = document if isinstance(document, bytes) else json.dumps(document).encode()
    return config.parse(mode, {**ENV, **env}, stdin)


def code_of(document: dict[str, Any] | bytes, mode: config.Mode = "full", **env: str) -> int:
    with pytest.raises(CniError) as caught:
        parse(document, mode, **env)
    return caught.value.cni_code


def test_configuration_defaults_and_names() -> None:
    inv = parse({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "romana"})
    assert inv.address_name == "k8s-pod-network:abc123:eth0"
    assert inv.tenant == "shop" and inv.args["IgnoreUnknown"] == "1"
    assert (inv.conf.mtu, inv.conf.segment_label) == (1500, "romana.io/segment")
    assert len(inv.host_ifname) == 14 and inv.host_ifname.startswith("rmn")
    other = parse({"cniVersion": "1.0.0", "name": "k8s-pod-network"}, CNI_IFNAME="net1")
    assert other.host_ifname != inv.host_ifname  # per attachment, not per container
    assert config.split_address_name(inv.address_name) == ("k8s-pod-network", "abc123", "eth0")
    assert config.split_address_name("pod-1") is None
    assert config.split_address_name("a:b:c:d") is None


def test_configuration_errors_carry_the_specs_codes() -> None:
    good = {"cniVersion": "1.0.0", "name": "net"}
    assert code_of({**good, "cniVersion": "0.2.0"}) == 1
    assert code_of(b"[1, 2]") == 6 and code_of(b"\xff{") == 6
    assert code_of({**good, "name": "bad name"}) == 7
    assert code_of({**good, "mtu": True}) == 7 and code_of({**good, "mtu": 40}) == 7
    assert code_of({**good, "use_policy": "yes"}) == 7
    assert code_of({**good, "agent_socket": 1}) == 7
    assert code_of(good, CNI_COMMAND="ATTACH") == 4
    assert code_of(good, CNI_IFNAME="eth0:1") == 4 and code_of(good, CNI_IFNAME="x" * 16) == 4
    assert code_of(good, CNI_CONTAINERID="-leading-dash") == 4
    assert code_of(good, CNI_NETNS="") == 4
    assert parse(good, CNI_COMMAND="DEL", CNI_NETNS="").netns == ""  # DEL may omit it
    assert code_of({**good, "name": "n" * 250}) == 7  # the address name would be too long
    assert code_of({**good, "prevResult": []}, CNI_COMMAND="CHECK") == 7


def test_gc_needs_the_attachment_list() -> None:
    good = {"cniVersion": "1.1.0", "name": "net"}
    assert code_of(good, CNI_COMMAND="GC") == 7
    inv = parse(
        {**good, "cni.dev/attachments": [{"containerID": "c", "ifname": "eth0"}]}, CNI_COMMAND="GC"
    )
    assert inv.conf.valid_attachments == {("c", "eth0")}
    assert code_of({**good, "cni.dev/valid-attachments": [{"id": "c"}]}, CNI_COMMAND="GC") == 7


def test_ipam_mode_reads_its_section() -> None:
    bridge = {
        "cniVersion": "1.0.0",
        "name": "br",
        "type": "bridge",
        "bridge": "cbr0",
        "mtu": 9000,
        "ipam": {"type": "romana-ipam"},
    }
    conf = parse(bridge, "ipam").conf
    assert (conf.mtu, conf.host_route_dev) == (1500, "cbr0")
    assert conf.routes == ({"dst": "0.0.0.0/0"},)
    ptp = {
        **bridge,
        "type": "ptp",
        "ipam": {"routes": [{"dst": "10.0.0.0/8", "gw": "10.1.1.1"}], "host_route_dev": ""},
    }
    conf = parse(ptp, "ipam").conf
    assert conf.host_route_dev is None
    assert conf.routes == ({"dst": "10.0.0.0/8", "gw": "10.1.1.1"},)
    assert code_of({**ptp, "ipam": {"routes": [{"dst": "nowhere"}]}}, "ipam") == 7


# -- results ----------------------------------------------------------------------------------
def test_results_follow_the_requested_version() -> None:
    host = Link("rmn0123456789a", 7, "aa:bb:cc:00:00:01", True)
    pod = Link("eth0", 2, "aa:bb:cc:00:00:02", True)
    old = result.add_result("0.3.1", "10.1.0.5", host, pod, "/var/run/netns/p", 1500)
    assert old["ips"] == [
        {"address": "10.1.0.5/32", "version": "4", "gateway": "169.254.1.1", "interface": 1}
    ]
    assert "mtu" not in old["interfaces"][1]
    new = result.add_result("1.1.0", "10.1.0.5", host, pod, "/var/run/netns/p", 1450)
    assert "version" not in new["ips"][0]
    assert new["interfaces"][1] == {
        "name": "eth0",
        "mac": pod.mac,
        "sandbox": "/var/run/netns/p",
        "mtu": 1450,
    }
    assert result.ipam_result("1.0.0", "10.1.0.5", ({"dst": "0.0.0.0/0"},)) == {
        "cniVersion": "1.0.0",
        "ips": [{"address": "10.1.0.5/32"}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {},
    }
    assert result.previous_ip(new) == "10.1.0.5"
    assert result.previous_mac(new, "eth0", "/var/run/netns/p") == pod.mac
    assert result.previous_mac(new, "eth0", "/var/run/netns/other") is None


# -- leak verdicts ----------------------------------------------------------------------------
def test_leak_verdicts_need_both_witnesses() -> None:
    addresses = [
        {"name": "net:gone:eth0", "ip": "10.1.0.1"},  # nowhere, not listed -> leaked
        {"name": "net:alive:eth0", "ip": "10.1.0.2"},  # configured and listed -> fine
        {"name": "net:forgot:eth0", "ip": "10.1.0.3"},  # configured, not listed -> stale
        {"name": "net:adding:eth0", "ip": "10.1.0.4"},  # listed, nowhere -> unconfigured
        {"name": "other:gone:eth0", "ip": "10.1.0.5"},  # another network
        {"name": "manual-pod", "ip": "10.1.0.6"},  # not made by the plugin
    ]
    live = {"10.1.0.2", "10.1.0.3"}
    valid = {("alive", "eth0"), ("adding", "eth0")}
    checked, found = leaks.classify(addresses, live, valid, network="net")
    assert checked == 4
    assert {(f.verdict, f.container_id) for f in found} == {
        ("leaked", "gone"),
        ("stale", "forgot"),
        ("unconfigured", "adding"),
    }
    checked, found = leaks.classify(addresses, live, None)  # no list: the kernel decides
    assert checked == 5
    assert {(f.verdict, f.name) for f in found} == {
        ("leaked", "net:gone:eth0"),
        ("leaked", "net:adding:eth0"),
        ("leaked", "other:gone:eth0"),
    }
    assert leaks.read_valid_attachments(
        '{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}'
    ) == {("a", "eth0")}
    with pytest.raises(ValueError):
        leaks.read_valid_attachments('[{"containerID": "a"}]')


# -- the romanad client -------------------------------------------------------------------------
@pytest.mark.daemons
def test_romanad_client_against_romanad(tmp_path: Path) -> None:
    topology = tmp_path / "topology.json"
    topology.write_text(
        json.dumps(
            {
                "networks": [{"name": "n", "cidr": "10.9.0.0/16", "block_mask": 29}],
                "topologies": [{"networks": ["n"], "map": [{"name": "g", "groups": []}]}],
            }
        )
    )
    sock = tmp_path / "romanad.sock"
    with running(tmp_path / "data", "--topology", str(topology), "--listen", f"unix:{sock}"):

        async def scenario() -> None:
            client = LeanRomanadClient(f"unix:{sock}")
            await client.call("POST", "/hosts", {"name": "h", "ip": "192.168.0.1", "tags": {}})
            first = await client.allocate("net:c1:eth0", "h", "tenant-a")
            assert first["ip"] == "10.9.0.0" and first["tenant"] == "tenant-a"
            assert (await client.address("net:c1:eth0"))["ip"] == "10.9.0.0"  # type: ignore[index]
            assert [a["name"] for a in await client.addresses("h")] == ["net:c1:eth0"]
            with pytest.raises(RomanaError) as refused:
                await client.allocate("net:c1:eth0", "h")
            assert refused.value.code == "conflict" and refused.value.http_status == 409
            assert (await client.release("net:c1:eth0"))["ip"] == "10.9.0.0"  # type: ignore[index]
            assert await client.release("net:c1:eth0") is None
            assert await client.address("net:c1:eth0") is None
            await client.close()
            with pytest.raises(Unreachable):
                await LeanRomanadClient(f"unix:{tmp_path / 'absent.sock'}").host("h")

        asyncio.run(scenario())


def test_romanad_client_retries_a_connection_closed_while_idle() -> None:
    """A server that closes every keep-alive connection after one answer (as uvicorn does
    after 5 idle seconds): each later request finds its pooled connection dead, and must
    go through on a new one, without being sent twice."""

    async def scenario() -> None:
        requests: list[bytes] = []

        async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            requests.append(head.split(b"\r\n")[0] + await reader.readexactly(length))
            body = json.dumps({"n": len(requests)}).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer_once, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = LeanRomanadClient(f"http://127.0.0.1:{port}", token="t0ken")
        answers = [await client.call("POST", "/address", {"i": i}) for i in range(3)]
        assert answers == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert requests == [b'POST /address HTTP/1.1{"i": %d}' % i for i in range(3)]
        await client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("key", "flag"),
    [
        ("romanad_url", "--url"),
        ("token_file", "--token-file"),
        ("log_file", "--cni-request-log"),
        ("host", "--host"),
    ],
)
def test_what_the_agent_reads_contacts_or_writes_is_not_the_network_configs_choice(
    key: str, flag: str
) -> None:
    """Whoever writes a network configuration (a Multus attachment, say) must not make the
    root agent read a file, send its token to a URL, append to a path or act as another
    node: those are refused with code 7, naming the agent's option."""
    base = {"cniVersion": "1.0.0", "name": "net", "type": "romana"}
    for document, mode in (
        ({**base, key: "/etc/shadow"}, "full"),
        ({**base, "ipam": {"type": "romana-ipam", key: "x"}}, "ipam"),
    ):
        with pytest.raises(CniError) as caught:
            parse(document, mode)  # type: ignore[arg-type]
        assert caught.value.cni_code == 7
        assert key in caught.value.msg and flag in str(caught.value.cni_details)


def test_lengths_are_blamed_on_the_field_that_is_too_long() -> None:
    base = {"cniVersion": "1.0.0", "name": "net", "type": "romana"}
    with pytest.raises(CniError) as caught:
        parse(base, CNI_CONTAINERID="c" * 300)
    assert caught.value.cni_code == 4 and "CNI_CONTAINERID" in caught.value.msg
    with pytest.raises(CniError) as caught:
        parse({**base, "name": "n" * 100})
    assert caught.value.cni_code == 7 and "network name is too long" in caught.value.msg


def test_the_plugin_refuses_an_oversized_configuration_as_invalid(
    tmp_path: Path, executable: Path
) -> None:
    install(tmp_path)
    huge = json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "net",
            "pad": "x" * (5 << 20),
            "agent_socket": str(tmp_path / "none.sock"),
        }
    )
    answer = run_plugin(tmp_path / "romana", {"CNI_COMMAND": "ADD"}, huge)
    error = json.loads(answer.stdout)
    assert answer.returncode == 1 and error["code"] == 7, answer.stdout  # not 11: no retry
    assert "bytes" in error["msg"]


def test_agent_wait_seconds_is_checked_by_the_agent() -> None:
    good = {"cniVersion": "1.0.0", "name": "net"}
    assert parse({**good, "agent_wait_seconds": 0}).conf.network == "net"
    assert parse({**good, "ipam": {"agent_wait_seconds": 600}}, "ipam").conf.network == "net"
    for bad in (-1, 601, 1.5, "60", True, None):
        assert code_of({**good, "agent_wait_seconds": bad}) == 7, bad


def test_host_install_copies_the_executable_writes_the_conflist_and_uninstalls(
    tmp_path: Path, executable: Path
) -> None:
    """As the agent DaemonSet installs onto a node: the static executable under both names
    and the conflist; uninstall leaves nothing, the old Python launcher's dir included."""
    from romana.cni.install import main as install_main

    bin_dir, conf_dir = tmp_path / "opt-cni-bin", tmp_path / "net.d"
    host = ["--host-root", "/", "--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir)]
    (bin_dir / "romana.d").mkdir(parents=True)  # what versions before the executable left
    (bin_dir / "romana.d" / "shim.py").write_text("# old\n")
    assert install_main(["install", *host]) == 0
    for name in ("romana", "romana-ipam"):
        assert (bin_dir / name).read_bytes() == executable.read_bytes()
    conf = json.loads((conf_dir / "10-romana.conflist").read_text())
    assert conf["plugins"] == [{"type": "romana", "agent_socket": "/run/romana/cni.sock"}]
    done = subprocess.run(
        [str(bin_dir / "romana")],
        input=b'{"cniVersion": "1.0.0", "name": "x", "type": "romana"}',
        env={"CNI_COMMAND": "VERSION"},
        capture_output=True,
        timeout=10,
    )
    assert done.returncode == 0 and b"supportedVersions" in done.stdout, done.stderr
    # Reinstalling replaces the files; an old manifest's --python is accepted, ignored.
    assert install_main(["install", *host, "--python", "/usr/bin/python3"]) == 0
    assert (bin_dir / "romana").read_bytes() == executable.read_bytes()
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.startswith(".")]
    assert leftovers == [], "no temporary file of the atomic writes is left"
    assert install_main(["uninstall", *host]) == 0
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert not (bin_dir / "romana.d").exists()
    assert install_main(["uninstall", *host]) == 0, "uninstall is idempotent"
