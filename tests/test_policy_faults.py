"""Policies stay enforced when something goes wrong around them (issue 22's attacks, on
real agents, nft and conntrack in network namespaces; the lab of ``policy_lab.py``):

- the table removed or edited by another process is loaded again (the kernel's nftables
  notifications; the periodic check when notifications were dropped);
- a released IP's tracked flows do not open the policy to the pod that gets the IP next;
- a pod that forges another pod's source address is dropped, with ``rp_filter`` off;
- one huge policy neither multiplies into rules nor holds up another namespace's policy,
  and one past the size budget isolates its pods (allows nothing) and is reported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .lab import Netns, run
from .policy_lab import HOSTS, PolicyCluster, RunningPod, np, policy_cluster
from .wait import wait_until

pytestmark = [pytest.mark.root, pytest.mark.daemons]

FLOW_PROBE = Path(__file__).with_name("flow_probe.py")
LISTEN_PORT = 9999
POLICY_MAX_SIZE = 20_000  # the agents' --policy-max-size here


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyCluster]:
    workdir = tmp_path_factory.mktemp("faults")
    with policy_cluster(workdir, policy_max_size=POLICY_MAX_SIZE) as c:
        for host in c.hosts.values():  # the kernel's default (systemd sets 2)
            for key in ("all", "default"):
                host.sysctl(f"net.ipv4.conf.{key}.rp_filter", "0")
        yield c


@pytest.fixture
def lab(cluster: PolicyCluster) -> Iterator[PolicyCluster]:
    cluster.clear_policies()
    cluster.converged()
    yield cluster
    cluster.clear_policies()
    for key in [k for k in cluster.pods if k.startswith("f/")]:
        cluster.remove_pod(key)


class Listener:
    """``flow_probe.py listen`` in a pod: every datagram that reached it, as it arrives."""

    def __init__(self, netns: Netns) -> None:
        argv = ["ip", "netns", "exec", netns.name, sys.executable, str(FLOW_PROBE)]
        self.proc = subprocess.Popen(
            [*argv, "listen", str(LISTEN_PORT)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.seen.append(line.strip())

    def payloads(self) -> list[str]:
        return [line.split(" ", 2)[2] for line in self.seen]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def send(pod: RunningPod, dst: str, sport: int, payload: str) -> str:
    done = pod.netns.exec(
        sys.executable, str(FLOW_PROBE), "send", dst, str(LISTEN_PORT), str(sport), payload
    )
    return done.stdout.strip()


def spoof(pod: RunningPod, src: str, dst: str, payload: str) -> None:
    pod.netns.exec(
        sys.executable, str(FLOW_PROBE), "spoof", src, dst, str(LISTEN_PORT), "40100", payload
    )


def only_clients_to_db() -> dict[str, Any]:
    return np(
        "f",
        "db-in",
        {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                    "ports": [{"port": LISTEN_PORT, "protocol": "UDP"}],
                }
            ],
        },
    )


def policy_health(c: PolicyCluster, host: str) -> dict[str, Any]:
    return dict(c.agent_health(host)["policy"])


def table_listed(c: PolicyCluster, host: str) -> bool:
    shown = c.hosts[host].exec("nft", "list", "table", "inet", "romana", check=False)
    return shown.returncode == 0 and "ingress_of" in shown.stdout


# -- F2: tracked flows of a released IP --------------------------------------------------------
@pytest.mark.parametrize("client_host", ["h2", "h1"])  # db is on h1: remote, then local
def test_a_released_ips_flows_do_not_open_the_policy_to_its_next_holder(
    lab: PolicyCluster, client_host: str
) -> None:
    c = lab
    db = c.add_pod("f", "db", "h1", {"app": "db"})
    listener = Listener(db.netns)
    try:
        c.client.put_network_policy(only_clients_to_db())
        client = c.add_pod("f", "client", client_host, {"app": "client"})
        c.converged()
        # The client's flow from port 40000 is answered: the kernels track it both ways.
        assert send(client, db.pod.ip, 40000, "client") == "echo"
        deleted_before = policy_health(c, "h1").get("flows_deleted", 0)
        old_ip = client.pod.ip
        c.remove_pod("f/client")
        evil = c.add_pod("f", "evil", client_host, {"app": "evil"})
        assert evil.pod.ip == old_ip  # romanad hands out the lowest free address
        c.converged()
        # Neither a new flow nor the old pod's flow reaches db from the new holder.
        assert send(evil, db.pod.ip, 40001, "evil-new") == "none"
        assert send(evil, db.pod.ip, 40000, "evil-old") == "none"
        assert listener.payloads() == ["client"], listener.seen
        assert policy_health(c, "h1")["flows_deleted"] > deleted_before
    finally:
        listener.stop()


# -- R1: forged source addresses -----------------------------------------------------------
def test_a_forged_source_address_is_dropped_with_rp_filter_off(lab: PolicyCluster) -> None:
    c = lab
    db = c.add_pod("f", "db", "h1", {"app": "db"})
    listener = Listener(db.netns)
    try:
        c.client.put_network_policy(only_clients_to_db())
        remote = c.add_pod("f", "client", "h2", {"app": "client"})
        local = c.add_pod("f", "client2", "h1", {"app": "client"})
        evil_h2 = c.add_pod("f", "evil", "h2", {"app": "evil"})
        evil_h1 = c.add_pod("f", "evil2", "h1", {"app": "evil"})
        c.converged()
        for host in HOSTS:
            assert (
                c.hosts[host].exec("sysctl", "-n", "net.ipv4.conf.all.rp_filter").stdout.strip()
                == "0"
            )
        for evil in (evil_h2, evil_h1):
            for victim in (remote, local):
                spoof(evil, victim.pod.ip, db.pod.ip, f"forged-{evil.pod.name}-{victim.pod.name}")
        # A genuine datagram from each client arrives (and, being later, after the forged
        # ones would have).
        assert send(remote, db.pod.ip, 40002, "genuine-remote") == "echo"
        assert send(local, db.pod.ip, 40003, "genuine-local") == "echo"
        assert sorted(listener.payloads()) == ["genuine-local", "genuine-remote"], listener.seen
    finally:
        listener.stop()


# -- F1: the table changed by someone else -------------------------------------------------
def test_the_table_is_loaded_again_when_another_process_flushes_or_edits_it(
    lab: PolicyCluster,
) -> None:
    c = lab
    c.client.put_network_policy(np("x", "deny", {"policyTypes": ["Ingress"]}))
    c.converged()
    h1 = c.hosts["h1"]
    before = policy_health(c, "h1").get("table", {}).get("repairs", 0)
    # What restarting a host's nftables service does with Debian's default configuration.
    h1.exec("nft", "flush", "ruleset")
    wait_until(lambda: table_listed(c, "h1"), 15, what="the table loaded again")
    c.assert_matches([np("x", "deny", {"policyTypes": ["Ingress"]})])
    table = policy_health(c, "h1")["table"]
    assert table["repairs"] == before + 1 and table["intact"], table
    assert table["last_repairs"][-1]["found_by"] == "notification", table
    assert "(nft)" in table["last_repairs"][-1]["reason"]
    # One rule deleted by hand: put back too.
    listed = h1.exec("nft", "-a", "list", "chain", "inet", "romana", "ingress").stdout
    handle = next(line.split("# handle ")[1] for line in listed.splitlines() if "vmap" in line)
    h1.exec("nft", "delete", "rule", "inet", "romana", "ingress", "handle", handle)
    wait_until(lambda: policy_health(c, "h1")["table"]["repairs"] > before + 1, 15, what="repair")
    assert "vmap @ingress_of" in h1.exec("nft", "list", "chain", "inet", "romana", "ingress").stdout
    c.assert_matches([np("x", "deny", {"policyTypes": ["Ingress"]})])


def test_a_change_hidden_by_dropped_notifications_is_found_by_the_check(
    lab: PolicyCluster,
) -> None:
    """The agent is paused while another process deletes its table among 200,000 other
    changes: the notifications overflow its socket, so the kernel drops them and says so,
    and the agent compares the kernel's table with its own at once."""
    c = lab
    c.client.put_network_policy(np("x", "deny", {"policyTypes": ["Ingress"]}))
    c.converged()
    h1 = c.hosts["h1"]
    before = policy_health(c, "h1").get("table", {"repairs": 0, "checks": 0})
    agent = agent_pid(c, "h1")
    # ~60 bytes of notification each: 200,000 overflow even the 8 MiB a socket may get.
    elements = ", ".join(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i in range(200_000))
    script = (
        "table inet noise {\n  set s {\n    type ipv4_addr\n  }\n}\n"
        f"add element inet noise s {{ {elements} }}\n"
        "delete table inet romana\n"
    )
    os.kill(agent, signal.SIGSTOP)
    try:
        loaded = subprocess.run(
            ["ip", "netns", "exec", h1.name, "nft", "-f", "-"],
            input=script,
            text=True,
            capture_output=True,
        )
        assert loaded.returncode == 0, loaded.stderr[:500]
    finally:
        os.kill(agent, signal.SIGCONT)
    try:
        wait_until(lambda: table_listed(c, "h1"), 15, what="the table loaded again")
        table = policy_health(c, "h1")["table"]
        assert table["repairs"] == before["repairs"] + 1, table
        assert table["last_repairs"][-1]["found_by"] == "check", table
        assert "missing" in table["last_repairs"][-1]["reason"]
        assert table_listed(c, "h1") and table["checks"] > before["checks"]
    finally:
        h1.exec("nft", "delete", "table", "inet", "noise", check=False)


def agent_pid(c: PolicyCluster, host: str) -> int:
    """The romana-agent process inside ``host``'s namespace."""
    for pid in run("ip", "netns", "pids", c.hosts[host].name).stdout.split():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b"romana-agent") for part in cmdline[:2]):
            return int(pid)
    raise AssertionError(f"no romana-agent in {host}")


# -- F5: a huge policy -----------------------------------------------------------------------
def wide_policy(n: int) -> dict[str, Any]:
    """n ipBlocks x n ports in one rule: 10.78.0.0/24 (the lab's pods, ports 80 and 81
    among them) and n - 1 blocks elsewhere."""
    blocks = [{"ipBlock": {"cidr": "10.78.0.0/16"}}]
    # every other /24, so that no two blocks merge into one interval
    blocks += [
        {"ipBlock": {"cidr": f"172.{16 + i // 125}.{2 * (i % 125)}.0/24"}} for i in range(n - 1)
    ]
    ports = [{"port": 80 + 2 * i, "protocol": "TCP"} for i in range(n)]
    ports[1] = {"port": 81, "protocol": "UDP"}
    return np(
        "x",
        "wide",
        {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": blocks, "ports": ports}],
        },
    )


def test_a_policy_of_a_thousand_blocks_by_a_thousand_ports_costs_one_rule(
    lab: PolicyCluster,
) -> None:
    c = lab
    wide = wide_policy(1000)
    c.client.put_network_policy(wide)
    deny_y = np("y", "deny", {"policyTypes": ["Ingress"]})
    c.client.put_network_policy(deny_y)
    c.converged()
    h1 = policy_health(c, "h1")  # x/a is on h1
    assert h1["refused_policies"] == {}
    assert h1["rules"] < 50, h1  # not 1,000,000
    assert 2000 <= h1["elements"] < 2100, h1
    c.assert_matches([wide, deny_y])


def test_a_policy_past_the_size_budget_isolates_its_pods_and_is_reported(
    lab: PolicyCluster,
) -> None:
    c = lab
    ports = [{"port": 2 * i + 1, "protocol": "TCP"} for i in range(POLICY_MAX_SIZE)]
    huge = np(
        "x",
        "huge",
        {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": ports}]},
    )
    deny_y = np("y", "deny", {"policyTypes": ["Ingress"]})
    c.client.put_network_policy(huge)
    c.client.put_network_policy(deny_y)
    c.converged()
    refused = policy_health(c, "h1")["refused_policies"]
    assert list(refused) == ["k8s:x:huge"] and "--policy-max-size" in refused["k8s:x:huge"]
    # Fail closed: x/a allows nothing (as a policy with no ingress rule would); y is denied.
    c.assert_matches([np("x", "huge", {"podSelector": {"matchLabels": {"pod": "a"}}}), deny_y])
