"""`romana-agent`: keeps one host's kernel routes in sync with romanad.

Runs on every host (inside the host's network namespace). Its routes live in a dedicated
table with a dedicated protocol number, so it never touches routes it did not make; policy
rules send pod-network traffic through that table. Health and Prometheus metrics are
served on ``--listen``. On SIGTERM it stops and leaves the routes in place (traffic keeps
flowing while it restarts); ``--cleanup`` removes its routes and rules instead.
With ``--cni-socket`` it also serves the CNI plugin (``romana.cni``): pods' veths,
addresses and /32 routes, done here with the connections the agent already holds.
Unless ``--no-policy``, it enforces network policies in an nftables table of its own
(``romana.agent.policy``); the table stays in place when the agent stops. Networks whose
map entry asks for ``nat_outgoing`` get outbound NAT in a table of its own
(``romana.agent.nat``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from romana.buildinfo import add_version_option
from romana.errors import RomanaError
from romana.policy.compile import Budget
from romana.serving import bind, read_token_file, serve, setup_logging

if TYPE_CHECKING:
    from romana.cni.service import PodDirectory

DEFAULT_LISTEN = "127.0.0.1:9604"
log = logging.getLogger("romana.agent")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="romana-agent", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--host",
        default=socket.gethostname(),
        help="this host's name in romanad (default: the hostname, %(default)s)",
    )
    parser.add_argument(
        "--url",
        default="http://127.0.0.1:9600",
        help="romanad: http://HOST:PORT or unix:/path.sock (default %(default)s)",
    )
    parser.add_argument("--token-file", type=Path, help="file holding romanad's bearer token")
    parser.add_argument(
        "--table", type=int, default=10, help="routing table the agent owns (default %(default)s)"
    )
    parser.add_argument(
        "--protocol",
        type=int,
        default=82,
        help="route protocol number marking the agent's routes and rules (default %(default)s)",
    )
    parser.add_argument(
        "--rule-priority",
        type=int,
        default=1000,
        help="priority of the policy rules (uses this and the next; default %(default)s)",
    )
    parser.add_argument(
        "--resync-interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="full resync period: repairs foreign edits of routes, and compares the policy "
        "table with the kernel's (default %(default)s)",
    )
    parser.add_argument(
        "--listen",
        action="append",
        metavar="ADDRESS",
        help=f"health and metrics: HOST:PORT or unix:/path (default "
        f"{DEFAULT_LISTEN}; repeat for several)",
    )
    parser.add_argument(
        "--cni-socket",
        metavar="PATH",
        help="serve the CNI plugin on this Unix socket, e.g. "
        "/run/romana/cni.sock (the plugin's agent_socket; default: off)",
    )
    parser.add_argument(
        "--cni-request-log",
        type=Path,
        metavar="FILE",
        help="append one JSON line per CNI command to FILE (a network configuration's "
        "log_file is refused: the agent writes only where its own options say)",
    )
    parser.add_argument(
        "--kubernetes",
        action="store_true",
        help="CNI: read a pod's labels and named ports from the API server (K8S_POD_NAME; "
        "in-cluster service account or $KUBECONFIG)",
    )
    parser.add_argument(
        "--kubeconfig", type=Path, help="CNI: kubeconfig for reading pods (implies --kubernetes)"
    )
    parser.add_argument(
        "--no-policy",
        action="store_true",
        help="do not enforce network policies (no nftables table; default: enforce)",
    )
    parser.add_argument(
        "--policy-max-size",
        type=int,
        default=Budget().policy,
        metavar="N",
        help="refuse (fail closed: allow nothing) a policy that compiles to more than N "
        "rules and set elements on this host (default %(default)s)",
    )
    parser.add_argument(
        "--policy-max-table",
        type=int,
        default=Budget().table,
        metavar="N",
        help="refuse policies (fail closed) that would take the host's table past N rules "
        "and set elements (default %(default)s)",
    )
    parser.add_argument(
        "--nft",
        default="nft",
        metavar="PATH",
        help="the nft program that loads the policy and outbound NAT tables (default %(default)s)",
    )
    parser.add_argument(
        "--cleanup",
        action="store_true",
        help="remove the agent's routes, rules and policy table, then exit",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    add_version_option(parser)
    return parser.parse_args(argv)


def cleanup(table: int, protocol: int, nft: str) -> None:
    from romana.agent.nat import NatPlan, NatTable
    from romana.agent.nftables import NftTable
    from romana.agent.route_table import RouteTable

    with RouteTable(table, protocol) as routes:
        removed = routes.flush()
        routes.remove_rules()
    policy_table = NftTable(nft).remove()
    nat_failure = NatTable(nft).load(NatPlan())  # no NAT: the table deleted
    log.info(
        "cleaned up",
        extra={
            "routes_removed": removed,
            "table": table,
            "policy_table_removed": policy_table,
            "nat_table_failure": nat_failure,
        },
    )


def _pod_directory(args: argparse.Namespace) -> PodDirectory | None:
    """With ``--kubernetes``: pods' labels and ports for the CNI, from the API server."""
    if not (args.kubernetes or args.kubeconfig):
        return None
    from romana.kube.connect import connect, load_config
    from romana.kube.pods import KubePods

    try:
        return KubePods(connect(load_config(args.kubeconfig)))
    except RomanaError as exc:
        sys.exit(f"romana-agent: {exc.message}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level)
    if args.cleanup:
        cleanup(args.table, args.protocol, args.nft)
        return
    token = read_token_file("romana-agent", args.token_file)
    listen = args.listen or [DEFAULT_LISTEN]
    try:
        sockets = [bind(address) for address in listen]
    except (ValueError, OSError) as exc:
        sys.exit(f"romana-agent: cannot listen on {listen}: {exc}")
    cni_socket = None
    if args.cni_socket:
        from romana.cni.server import bind_socket

        try:
            cni_socket = bind_socket(args.cni_socket)
        except OSError as exc:
            sys.exit(f"romana-agent: cannot listen on {args.cni_socket}: {exc}")

    from romana.agent.follow import RouteAgent
    from romana.agent.metrics import AgentMetrics
    from romana.agent.nat import NatKeeper, NatTable
    from romana.agent.route_table import RouteTable
    from romana.agent.web import create_app
    from romana.api.client import AsyncRomanaClient
    from romana.supervise import Supervisor

    try:
        table = RouteTable(args.table, args.protocol)
    except (ValueError, OSError) as exc:
        sys.exit(f"romana-agent: cannot open routing table {args.table}: {exc}")
    metrics = AgentMetrics()
    upstream = AsyncRomanaClient(args.url, token)
    agent = RouteAgent(
        args.host, upstream, table, metrics, args.rule_priority, args.resync_interval
    )
    nat = NatKeeper(upstream, NatTable(args.nft), metrics.registry)
    agent.after_sync.append(nat.after_sync)
    enforcer = None
    if not args.no_policy:
        from romana.agent.nftables import NftTable
        from romana.agent.policy import PolicyEnforcer
        from romana.cni.config import VETH_PREFIX

        enforcer = PolicyEnforcer(
            args.host,
            upstream,
            NftTable(args.nft, pod_interfaces=f"{VETH_PREFIX}*"),
            metrics.registry,
            budget=Budget(args.policy_max_size, args.policy_max_table),
            repair_interval=args.resync_interval,
        )
    cni = None
    if cni_socket is not None:
        from romana.cni.server import CniServer

        cni = CniServer.for_agent(
            cni_socket,
            args.host,
            args.url,
            token,
            args.protocol,
            metrics.registry,
            request_log=str(args.cni_request_log) if args.cni_request_log else None,
            gate=enforcer,
            pods=_pod_directory(args),
        )

    supervisor = Supervisor(on_fatal=lambda exc: os._exit(70))

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        supervisor.start("follow", agent.follow, restart=True, stuck_after=agent.watch_timeout + 60)
        supervisor.start(
            "repair",
            agent.resync_periodically,
            restart=True,
            stuck_after=agent.resync_interval + 60,
        )
        if enforcer is not None:
            supervisor.start(
                "policy", enforcer.follow, restart=True, stuck_after=enforcer.watch_timeout + 60
            )
            supervisor.start(
                "policy-guard",
                enforcer.guard,
                restart=True,
                stuck_after=enforcer.repair_interval + enforcer.table.timeout + 60,
            )
        if cni is not None:
            await cni.start()
        log.info(
            "agent started",
            extra={
                "host": args.host,
                "romanad": args.url,
                "table": args.table,
                "protocol": args.protocol,
                "listen": listen,
                "cni_socket": args.cni_socket,
            },
        )
        yield
        if cni is not None:
            await cni.close()
        await supervisor.stop()
        await upstream.close()
        agent.close()
        if enforcer is not None:
            enforcer.close()
        table.close()
        log.info("agent stopped; kernel routes left in place", extra={"host": args.host})

    app = create_app(agent, metrics, supervisor, enforcer, nat)
    app.router.lifespan_context = lifespan
    unix = [f"unix:{args.cni_socket}"] if cni_socket is not None else []
    serve(app, sockets, listen + unix)


if __name__ == "__main__":
    main()
