"""Network-policy benchmark (issue: network policies). Run as root. Prints JSON.

A synthetic cluster: ``--endpoints`` pods (default 5,000) over ``--namespaces`` namespaces
(default 50) and ``--hosts`` hosts (default 10; the measured host holds 1/hosts of the
pods), and ``--policies`` Kubernetes NetworkPolicies (default 1,000: 20 per namespace,
each selecting one app of the namespace and allowing a mix of pod, namespace and
namespace-and-pod peers, ipBlocks with except, numeric, ranged and named ports, egress).

Sections, all in one run:

* ``compile``: compile the measured host's ruleset (median of ``--repeat``), rules and set
  elements, script size.
* ``nft``: load the whole table with ``nft -f`` into a fresh namespace; then set updates
  (a new pod matching existing selectors: members updated, elements loaded, as the agent
  does) and whole reloads (one policy changed: compiled, table reloaded), p50/p95 of
  ``--changes`` changes each, ``nft`` process start included.
* ``iptables``: the same ruleset rendered for ``iptables-restore`` two ways, loaded into a
  fresh namespace: every peer set expanded to one rule per address (what iptables-restore
  alone can say), and with ``ipset restore`` sets plus ``-m set`` rules.
* ``end_to_end``: romanad and a real romana-agent (in a namespace); the policies and
  endpoints go in through the API, then ``--changes`` times a policy is changed, or a pod
  allocated, and the time until the agent reports the table at that revision is measured.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from ports import free_port
from romana.agent.nftables import NftTable
from romana.policy.compile import Ruleset, compile_host
from romana.policy.incremental import update_members
from romana.policy.inputs import Changed, PolicyInputs
from romana.policy.k8s import NetworkPolicy
from romana.policy.model import Endpoint, NamedPort
from romana.policy.nft import render_full

HOST = "h0"
BIN = Path(sys.executable).parent


# -- the synthetic cluster -------------------------------------------------------------------
def network_policy(rng: random.Random, ns: str, index: int, namespaces: int) -> dict[str, Any]:
    other = f"ns-{rng.randrange(namespaces)}"
    peers = [
        {"podSelector": {"matchLabels": {"app": f"app-{rng.randrange(10)}"}}},
        {"namespaceSelector": {"matchLabels": {"team": f"team-{rng.randrange(5)}"}}},
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": other}},
            "podSelector": {
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]
            },
        },
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": [f"10.{rng.randrange(256)}.0.0/16"]}},
    ]
    ports = [
        {"port": 80 + rng.randrange(20), "protocol": "TCP"},
        {"port": "http", "protocol": "TCP"},
        {"port": 8000, "endPort": 8000 + rng.randrange(100), "protocol": "TCP"},
        {"port": 53, "protocol": "UDP"},
    ]
    spec: dict[str, Any] = {
        # A namespace's policies cover every app: every pod ends up isolated.
        "podSelector": {"matchLabels": {"app": f"app-{(index // namespaces) % 10}"}},
        "ingress": [
            {"from": rng.sample(peers, 2), "ports": rng.sample(ports, 2)},
            {"from": [peers[0]]},
        ],
    }
    if index % 4 == 0:
        spec["policyTypes"] = ["Ingress", "Egress"]
        spec["egress"] = [{"to": [peers[1]], "ports": [ports[3]]}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"p-{index}", "namespace": ns},
        "spec": spec,
    }


def endpoint_labels(rng: random.Random) -> dict[str, str]:
    return {"app": f"app-{rng.randrange(10)}", "tier": rng.choice(["web", "api", "db"])}


def synthetic(args: argparse.Namespace) -> tuple[PolicyInputs, list[dict[str, Any]]]:
    rng = random.Random(args.seed)
    inputs = PolicyInputs()
    inputs.hosts = {f"h{i}": f"192.168.100.{i + 1}" for i in range(args.hosts)}
    inputs.tenants = {f"ns-{i}": {"team": f"team-{i % 5}"} for i in range(args.namespaces)}
    for i in range(args.endpoints):
        ns = f"ns-{i % args.namespaces}"
        ip = f"10.{1 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        inputs.endpoints[f"e{i}"] = Endpoint(
            f"e{i}",
            ip,
            f"h{rng.randrange(args.hosts)}",
            ns,
            "",
            endpoint_labels(rng),
            (NamedPort("http", 8080 + i % 3, "tcp"),),
        )
    documents = [
        network_policy(rng, f"ns-{i % args.namespaces}", i, args.namespaces)
        for i in range(args.policies)
    ]
    for document in documents:
        policy = NetworkPolicy.model_validate(document).translate()
        inputs.policies[policy.key] = policy
    return inputs, documents


# -- namespaces and timing -------------------------------------------------------------------
@contextmanager
def netns(purpose: str) -> Iterator[str]:
    name = f"romana-bench-{purpose}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def timed_run(argv: list[str], script: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, input=script.encode(), capture_output=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv[-3:]} failed: {done.stderr.decode()[:2000]}")
    return elapsed


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
        "n": len(ordered),
    }


# -- sections --------------------------------------------------------------------------------
def section_compile(
    inputs: PolicyInputs, args: argparse.Namespace
) -> tuple[dict[str, Any], Ruleset]:
    times = []
    ruleset = Ruleset()
    for _ in range(args.repeat):
        started = time.perf_counter()
        ruleset = compile_host(inputs, HOST)
        times.append(time.perf_counter() - started)
    text = render_full(ruleset)
    return {
        "compile_s": round(statistics.median(times), 4),
        "runs_s": [round(t, 4) for t in times],
        "local_endpoints": sum(1 for e in inputs.endpoints.values() if e.host == HOST),
        "isolated_local_endpoints": len(ruleset.isolated),
        "policies_with_local_targets": len(ruleset.policies),
        "rules": ruleset.rules,
        "set_elements": ruleset.elements,
        "sets": len(ruleset.sets),
        "chains": len(ruleset.chains),
        "script_bytes": len(text),
    }, ruleset


def section_nft(inputs: PolicyInputs, ruleset: Ruleset, args: argparse.Namespace) -> dict[str, Any]:
    """The agent's own loader (``NftTable``) into a fresh namespace, through a wrapper that
    runs nft there (the agent runs nft in its host's namespace the same way)."""
    rng = random.Random(args.seed + 1)
    with netns("nft") as ns, tempfile.TemporaryDirectory() as tmp:
        wrapper = Path(tmp) / "nft"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {ns} nft "$@"\n')
        wrapper.chmod(0o755)
        loads = [
            timed_run([str(wrapper), "-f", "-"], render_full(ruleset)) for _ in range(args.repeat)
        ]
        table = NftTable(str(wrapper))
        table.load(ruleset)
        current = ruleset

        def change(changed: Changed) -> tuple[float, str]:
            nonlocal current
            started = time.perf_counter()
            # As the agent does: members updated if that is all, else a compile; then
            # the smallest load (elements, chains, or whole).
            new = update_members(current, inputs, HOST, changed)
            new = new if new is not None else compile_host(inputs, HOST)
            loaded = table.load(new)
            current = new
            return time.perf_counter() - started, loaded.kind

        pod_changes, pod_kinds = [], {"update": 0, "chains": 0, "full": 0, "none": 0}
        for i in range(args.changes):
            # A new pod on this host whose labels match existing selectors.
            name = f"new-{i}"
            inputs.endpoints[name] = Endpoint(
                name, f"10.200.{i // 256}.{i % 256}", HOST, "ns-0", "", endpoint_labels(rng), ()
            )
            seconds, kind = change(Changed(endpoints={name}))
            pod_changes.append(seconds)
            pod_kinds[kind] += 1
        policy_changes, policy_kinds = [], {"update": 0, "chains": 0, "full": 0, "none": 0}
        for _ in range(args.changes):
            key = rng.choice(sorted(current.policies))  # one that protects a pod here
            old = inputs.policies[key]
            allows = old.ingress or ()
            changed = type(old)(old.key, old.applied_to, allows[1:] + allows[:1], old.egress)
            inputs.policies[key] = changed
            seconds, kind = change(Changed(structural=True))
            policy_changes.append(seconds)
            policy_kinds[kind] += 1
    return {
        "full_load_s": round(statistics.median(loads), 4),
        "full_load_runs_s": [round(t, 4) for t in loads],
        "new_pod_compile_and_load": {**quantiles(pod_changes), "loads": pod_kinds},
        "policy_change_compile_and_load": {**quantiles(policy_changes), "loads": policy_kinds},
    }


_PEER = re.compile(r"^ip (saddr|daddr) (@\w+|[0-9./-]+) ")
_INLINE_PORT = re.compile(r"meta l4proto (\w+)(?: th dport (\d+)(?:-(\d+))?)?(?= accept$)")
_PORT_SET = re.compile(r"meta l4proto \. th dport @(\w+)")
_NAMED = re.compile(r"ip daddr \. meta l4proto \. th dport @(\w+)")
_ICMP = re.compile(r"meta l4proto icmp(?: icmp type (\d+))?(?: icmp code (\d+))?")
_FLAG = {"saddr": "-s", "daddr": "-d"}


def _span(text: str) -> str:
    return text.replace("-", ":")


def _cidrs(element: str) -> list[str]:
    """An interval set element (address, prefix or range) as CIDRs."""
    if "-" not in element:
        return [element]
    low, high = (ipaddress.IPv4Address(a) for a in element.split("-"))
    return [str(n) for n in ipaddress.summarize_address_range(low, high)]


def iptables_rules(chain: str, rule: str, ruleset: Ruleset, use_ipset: bool) -> list[str]:
    """One nft rule of ours as iptables rules: each set iptables cannot match as one ipset
    (every set without ipset; port sets always: an ipset cannot hold protocol and port
    ranges) becomes one rule per element."""
    if rule.startswith("jump "):
        return [f"-A {chain} -j {rule.split()[1]}"]
    if rule == "drop":
        return [f"-A {chain} -j DROP"]
    alternatives: list[list[str]] = [[]]

    def times(options: list[list[str]]) -> None:
        nonlocal alternatives
        alternatives = [[*a, *o] for a in alternatives for o in options]

    if m := _PEER.search(rule):
        flag, what = _FLAG[m.group(1)], m.group(2)
        if not what.startswith("@"):
            times(
                [["-m", "iprange", "--src-range" if flag == "-s" else "--dst-range", what]]
                if "-" in what
                else [[flag, what]]
            )
        elif use_ipset:
            times([["-m", "set", "--match-set", what[1:], "src" if flag == "-s" else "dst"]])
        else:
            members = sorted(ruleset.sets[what[1:]].elements)
            times([[flag, c] for e in members for c in _cidrs(e)])
    if m := _NAMED.search(rule):
        members = sorted(ruleset.sets[m.group(1)].elements)
        if use_ipset:
            times([["-m", "set", "--match-set", m.group(1), "dst,dst"]])
        else:
            triples = [e.split(" . ") for e in members]
            times([["-d", ip, "-p", proto, "--dport", port] for ip, proto, port in triples])
    elif m := _PORT_SET.search(rule):
        pairs = [e.split(" . ") for e in sorted(ruleset.sets[m.group(1)].elements)]
        times([["-p", proto, "--dport", _span(span)] for proto, span in pairs])
    elif m := _ICMP.search(rule):
        kind = (
            ""
            if m.group(1) is None
            else m.group(1) + ("" if m.group(2) is None else f"/{m.group(2)}")
        )
        times([["-p", "icmp", *(["--icmp-type", kind] if kind else [])]])
    elif m := _INLINE_PORT.search(rule):
        dport = (
            []
            if m.group(2) is None
            else ["--dport", m.group(2) + (f":{m.group(3)}" if m.group(3) else "")]
        )
        times([["-p", m.group(1), *dport]])
    return [f"-A {chain} {' '.join(a)} -j ACCEPT".replace("  ", " ") for a in alternatives]


def _ipset(name: str, s: Any) -> list[str]:
    """ipset restore lines for one of our sets (port sets have no ipset equivalent)."""
    if name.startswith("t_"):
        return []
    if name.startswith("n_"):
        lines = [f"create {name} hash:ip,port maxelem 1000000"]
        for element in sorted(s.elements):
            ip, proto, port = element.split(" . ")
            lines.append(f"add {name} {ip},{proto}:{port}")
        return lines
    kind = "hash:net" if s.flags else "hash:ip"
    lines = [f"create {name} {kind} maxelem 1000000"]
    lines += [f"add {name} {c}" for e in sorted(s.elements) for c in _cidrs(e)]
    return lines


def iptables_script(ruleset: Ruleset, use_ipset: bool) -> tuple[str, str, int]:
    chains = sorted(ruleset.chains)
    lines = [
        "*filter",
        ":FORWARD ACCEPT [0:0]",
        ":ROMANA-EGRESS - [0:0]",
        ":ROMANA-INGRESS - [0:0]",
    ]
    lines += [f":{c} - [0:0]" for c in chains]
    rules = [
        "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A FORWARD -j ROMANA-EGRESS",
        "-A FORWARD -j ROMANA-INGRESS",
    ]
    # No verdict maps: one rule per isolated endpoint and direction.
    for name, flag, top in (
        ("egress_of", "-s", "ROMANA-EGRESS"),
        ("ingress_of", "-d", "ROMANA-INGRESS"),
    ):
        for element in sorted(ruleset.sets[name].elements):
            ip, _, verdict = element.partition(" : jump ")
            rules.append(f"-A {top} {flag} {ip} -j {verdict}")
    for chain in chains:
        for rule in ruleset.chains[chain]:
            rules += iptables_rules(chain, rule, ruleset, use_ipset)
    ipsets = []
    if use_ipset:
        for name, s in ruleset.sets.items():
            if not s.is_map:
                ipsets += _ipset(name, s)
    return "\n".join(lines + rules + ["COMMIT"]) + "\n", "\n".join(ipsets) + "\n", len(rules)


def expanded_rule_count(ruleset: Ruleset) -> int:
    """Rules of the expanded rendering, counted without building them."""
    count = 3 + sum(len(ruleset.sets[m].elements) for m in ("egress_of", "ingress_of"))
    for rules in ruleset.chains.values():
        for rule in rules:
            factor = 1
            if (m := _PEER.search(rule)) and m.group(2).startswith("@"):
                members = ruleset.sets[m.group(2)[1:]].elements
                factor *= sum(len(_cidrs(e)) for e in members)
            if m := (_NAMED.search(rule) or _PORT_SET.search(rule)):
                factor *= len(ruleset.sets[m.group(1)].elements)
            count += factor
    return count


def section_iptables(ruleset: Ruleset, args: argparse.Namespace) -> dict[str, Any]:
    version = subprocess.run(["iptables", "-V"], capture_output=True, text=True).stdout.strip()
    out: dict[str, Any] = {"backend": version}
    expanded = expanded_rule_count(ruleset)
    for variant, use_ipset in (("expanded", False), ("ipset", True)):
        if not use_ipset and expanded > args.expanded_limit:
            out[variant] = {
                "rules": expanded,
                "loaded": False,
                "why": f"over --expanded-limit {args.expanded_limit}",
            }
            continue
        script, sets, rules = iptables_script(ruleset, use_ipset)
        times = []
        for _ in range(args.repeat):
            with netns(f"ipt-{variant}") as ns:
                started = time.perf_counter()
                if use_ipset:
                    timed_run(["ip", "netns", "exec", ns, "ipset", "restore"], sets)
                timed_run(["ip", "netns", "exec", ns, "iptables-restore"], script)
                times.append(time.perf_counter() - started)
                if use_ipset:  # ipsets are not per namespace-deletion: remove them
                    for command in (["iptables", "-F"], ["iptables", "-X"], ["ipset", "destroy"]):
                        subprocess.run(["ip", "netns", "exec", ns, *command], check=False)
        out[variant] = {
            "loaded": True,
            "load_s": round(statistics.median(times), 4),
            "runs_s": [round(t, 4) for t in times],
            "rules": rules,
            "set_elements": sets.count("\nadd ") + sets.startswith("add "),
            "script_bytes": len(script) + (len(sets) if use_ipset else 0),
        }
    return out


# -- end to end through romanad and a real agent ---------------------------------------------


def section_end_to_end(
    inputs: PolicyInputs,
    ruleset: Ruleset,
    documents: list[dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    rng = random.Random(args.seed + 2)
    work = Path(tempfile.mkdtemp(prefix="romana-policy-bench-"))
    topology = {
        "networks": [{"name": "pods", "cidr": "10.0.0.0/8", "block_mask": 24}],
        "topologies": [{"networks": ["pods"], "map": [{"name": "all", "groups": []}]}],
    }
    (work / "topology.json").write_text(json.dumps(topology))
    port = free_port()
    unix = work / "romanad.sock"  # the agent's namespace shares the filesystem, not loopback
    romanad = subprocess.Popen(
        [
            str(BIN / "romanad"),
            "--listen",
            f"127.0.0.1:{port}",
            "--listen",
            f"unix:{unix}",
            "--data-dir",
            str(work / "data"),
            "--topology",
            str(work / "topology.json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    agent: subprocess.Popen[bytes] | None = None
    url = f"http://127.0.0.1:{port}"
    try:
        client = httpx.Client(base_url=url, timeout=60)
        wait(lambda: _ok(client, "/healthz"), 20)
        for i in range(args.hosts):
            client.post(
                "/hosts", json={"name": f"h{i}", "ip": f"192.168.100.{i + 1}"}
            ).raise_for_status()
        for i in range(args.namespaces):
            client.put(f"/tenants/ns-{i}", json={"team": f"team-{i % 5}"}).raise_for_status()
        started = time.perf_counter()
        for ep in inputs.endpoints.values():  # the cluster the other sections compiled
            body = {
                "name": ep.name,
                "host": ep.host,
                "tenant": ep.tenant,
                "labels": dict(ep.labels),
                "ports": [p.to_json() for p in ep.ports],
            }
            client.post("/address", json=body).raise_for_status()
        for document in documents:
            client.post("/k8s/networkpolicies", json=document).raise_for_status()
        setup_s = time.perf_counter() - started
        # Changes to policies that protect the measured host's pods: each one is a reload.
        local = [d for d in documents if NetworkPolicy.model_validate(d).key in ruleset.policies]
        with netns("agent") as ns:
            sock = work / "agent.sock"
            agent = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    str(BIN / "romana-agent"),
                    "--host",
                    HOST,
                    "--url",
                    f"unix:{unix}",
                    "--listen",
                    f"unix:{sock}",
                ],
                stdout=(work / "agent.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            health = httpx.Client(
                transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://agent", timeout=10
            )
            first = time.perf_counter()
            wait(lambda: _policy(health).get("enforced", False), 120)
            first_s = time.perf_counter() - first
            policy_latency, pod_latency = [], []
            for i in range(args.changes):
                document = json.loads(json.dumps(rng.choice(local)))
                document["spec"]["ingress"][0]["ports"] = [{"port": 1000 + i, "protocol": "TCP"}]
                t0 = time.perf_counter()
                client.post("/k8s/networkpolicies", json=document).raise_for_status()
                revision = client.get("/healthz").json()["revision"]
                wait(lambda r=revision: (_policy(health).get("revision") or 0) >= r, 30, 0.002)
                policy_latency.append(time.perf_counter() - t0)
            for i in range(args.changes):
                body = {
                    "name": f"late-{i}",
                    "host": f"h{rng.randrange(args.hosts)}",
                    "tenant": "ns-0",
                    "labels": endpoint_labels(rng),
                }
                t0 = time.perf_counter()
                client.post("/address", json=body).raise_for_status()
                revision = client.get("/healthz").json()["revision"]
                wait(lambda r=revision: (_policy(health).get("revision") or 0) >= r, 30, 0.002)
                pod_latency.append(time.perf_counter() - t0)
            wide_s, wide = wide_then_deny(client, health, local, args.wide)
            repairs = flush_and_wait(ns, health, args.changes)
            final = _policy(health)
    finally:
        for proc in (agent, romanad):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "setup_through_api_s": round(setup_s, 2),
        "agent_first_table_s": round(first_s, 3),
        "policy_change_to_enforced": quantiles(policy_latency),
        "remote_pod_to_enforced": quantiles(pod_latency),
        "wide_policy_then_other_namespace_deny_all": {
            "blocks_x_ports": f"{args.wide} x {args.wide}",
            "wide_posted_to_both_enforced_s": round(wide_s, 3),
            **wide,
        },
        "table_back_after_nft_flush_ruleset": quantiles(repairs),
        "agent": {k: final.get(k) for k in ("rules", "elements", "isolated_endpoints", "loads")},
    }


def flush_and_wait(ns: str, health: httpx.Client, times: int) -> list[float]:
    """``nft flush ruleset`` in the agent's namespace (another process removes its table),
    then the seconds until the table is listed again (``nft list`` polled; each poll
    takes a few ms, which bounds the resolution)."""
    out = []
    for _ in range(times):
        repairs = _policy(health)["table"]["repairs"]
        t0 = time.perf_counter()
        subprocess.run(["ip", "netns", "exec", ns, "nft", "flush", "ruleset"], check=True)
        listed = ["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "romana"]
        while subprocess.run(listed, capture_output=True).returncode != 0:
            if time.perf_counter() - t0 > 60:
                raise SystemExit("the table did not come back within 60 s")
        out.append(time.perf_counter() - t0)
        wait(lambda r=repairs: _policy(health)["table"]["repairs"] > r, 30)
    return out


def wide_then_deny(
    client: httpx.Client, health: httpx.Client, local: list[dict[str, Any]], n: int
) -> tuple[float, dict[str, Any]]:
    """A NetworkPolicy of ``n`` ipBlocks x ``n`` ports in one rule (what issue 22's attack
    posted: 1,000,000 rules before peers and ports were sets) protecting a pod of this
    host, then at once another namespace's deny-all: the seconds until the agent has
    loaded both; then, 2 s later (as the attack did), one more deny-all: the seconds from
    its post until it is enforced; and the table's size."""
    target, other = (
        local[0],
        next(d for d in local if d["metadata"]["namespace"] != local[0]["metadata"]["namespace"]),
    )
    blocks = [{"ipBlock": {"cidr": f"172.{16 + i // 125}.{2 * (i % 125)}.0/24"}} for i in range(n)]
    ports = [{"port": 1 + 2 * i, "protocol": "TCP"} for i in range(n)]
    wide = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "wide", "namespace": target["metadata"]["namespace"]},
        "spec": {
            "podSelector": target["spec"]["podSelector"],
            "ingress": [{"from": blocks, "ports": ports}],
        },
    }
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny-all", "namespace": other["metadata"]["namespace"]},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }
    t0 = time.perf_counter()
    client.post("/k8s/networkpolicies", json=wide).raise_for_status()
    t1 = time.perf_counter()
    client.post("/k8s/networkpolicies", json=deny).raise_for_status()
    revision = client.get("/healthz").json()["revision"]
    wait(lambda: (_policy(health).get("revision") or 0) >= revision, 300, 0.002)
    done = time.perf_counter()
    # As the attack did: another namespace's policy 2 s after the wide one.
    time.sleep(2.0)
    later = {**deny, "metadata": {**deny["metadata"], "name": "deny-all-later"}}
    t2 = time.perf_counter()
    client.post("/k8s/networkpolicies", json=later).raise_for_status()
    revision = client.get("/healthz").json()["revision"]
    wait(lambda: (_policy(health).get("revision") or 0) >= revision, 300, 0.002)
    later_s = time.perf_counter() - t2
    state = _policy(health)
    return done - t0, {
        "deny_all_posted_to_enforced_s": round(done - t1, 3),
        "deny_all_2s_later_posted_to_enforced_s": round(later_s, 3),
        "rules": state.get("rules"),
        "elements": state.get("elements"),
        "refused": sorted(state.get("refused_policies", {})),
    }


def _ok(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.TransportError:
        return False


def _policy(health: httpx.Client) -> dict[str, Any]:
    try:
        return dict(health.get("/healthz").json().get("policy") or {})
    except (httpx.TransportError, ValueError):
        return {}


def wait(predicate: Any, timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--endpoints", type=int, default=5000)
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument(
        "--wide", type=int, default=1000, help="blocks and ports of the wide policy (N x N)"
    )
    parser.add_argument(
        "--expanded-limit",
        type=int,
        default=300_000,
        help="load the one-rule-per-address iptables rendering only up to this many rules",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces)")
    inputs, documents = synthetic(args)
    figures: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "parameters": {
            k: getattr(args, k) for k in ("endpoints", "namespaces", "hosts", "policies", "changes")
        },
    }
    figures["compile"], ruleset = section_compile(inputs, args)
    figures["iptables"] = section_iptables(ruleset, args)
    figures["nft"] = section_nft(inputs, ruleset, args)
    ipt, nft_load = figures["iptables"], figures["nft"]["full_load_s"]
    rules = figures["compile"]["rules"]
    figures["ratios"] = {
        "iptables_ipset_load_over_nft": round(ipt["ipset"]["load_s"] / nft_load, 2),
        "iptables_ipset_rules_over_nft": round(ipt["ipset"]["rules"] / rules, 2),
        "iptables_expanded_rules_over_nft": round(ipt["expanded"]["rules"] / rules, 1),
    }
    if ipt["expanded"]["loaded"]:
        expanded = ipt["expanded"]["load_s"] / nft_load
        figures["ratios"]["iptables_expanded_load_over_nft"] = round(expanded, 2)
    if not args.skip_end_to_end:
        figures["end_to_end"] = section_end_to_end(inputs, ruleset, documents, args)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
