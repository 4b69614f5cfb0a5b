"""romana-listener: keeps romanad in step with a Kubernetes cluster.

Lists and watches Nodes, Namespaces, Pods and NetworkPolicies and writes what they mean to
romanad: nodes become hosts (name, InternalIP, labels: the topology's ``assignment`` puts
them in their group), namespaces tenants with their labels, pods the labels and named
ports of the addresses they hold, NetworkPolicies romanad's Kubernetes policies (or, when
one cannot be enforced as written, a stand-in that isolates its pods: fail closed).
Every write is idempotent, so several listeners may run at once (docs/kubernetes.md).
An object romanad refuses is reported (a Warning Event, /healthz) and stops no other.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from romana.api.client import DEFAULT_URL, RomanaClient
from romana.buildinfo import add_version_option, register_build_info
from romana.errors import RomanaError
from romana.kube.refusals import API_VERSIONS, Refusals, Subject
from romana.serving import read_token_file, setup_logging

log = logging.getLogger("romana.kube")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="romana-listener",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--kubeconfig",
        type=Path,
        help="kubeconfig file (default: $KUBECONFIG, else the in-cluster service account, "
        "else ~/.kube/config)",
    )
    p.add_argument("--context", help="kubeconfig context (default: its current-context)")
    p.add_argument(
        "--romanad",
        default=os.environ.get("ROMANA_URL", DEFAULT_URL),
        help="romanad: http://HOST:PORT or unix:/path.sock ($ROMANA_URL)",
    )
    p.add_argument("--token-file", type=Path, help="romanad bearer token ($ROMANA_TOKEN)")
    p.add_argument(
        "--node-grace",
        type=float,
        default=300.0,
        metavar="S",
        help="a deleted node's host is removed (its blocks freed) after this many seconds",
    )
    p.add_argument(
        "--resync",
        type=float,
        default=60.0,
        metavar="S",
        help="compare everything with romanad this often (retries what could not be done)",
    )
    p.add_argument(
        "--event-namespace",
        default="default",
        help="namespace of the events posted about nodes and namespaces (cluster-scoped "
        "objects); events about pods and NetworkPolicies go to their own namespace",
    )
    p.add_argument(
        "--health-listen", metavar="HOST:PORT", help="serve /healthz (HOST:PORT or unix:/path)"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_version_option(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level)
    token = read_token_file("romana-listener", args.token_file) or os.environ.get("ROMANA_TOKEN")
    try:
        asyncio.run(_serve(args, token or None))
    except RomanaError as exc:
        sys.exit(f"romana-listener: {exc.message}")


async def _serve(args: argparse.Namespace, token: str | None) -> None:
    from lightkube.resources.core_v1 import Namespace, Node, Pod
    from lightkube.resources.networking_v1 import NetworkPolicy

    from romana.kube.connect import connect, load_config
    from romana.kube.reflector import Reflector
    from romana.kube.sync import Sync
    from romana.supervise import Supervisor

    client = connect(load_config(args.kubeconfig), args.context)
    romanad = RomanaClient(args.romanad, token)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    def warn(subject: Subject, reason: str, message: str) -> None:  # from the sync thread
        event = _warning_event(subject, reason, message)
        namespace = subject.namespace or args.event_namespace
        future = asyncio.run_coroutine_threadsafe(_post(client, event, namespace), loop)
        future.add_done_callback(lambda f: f.exception())  # failures are logged in _post

    reflectors: dict[str, Reflector] = {}
    sync = Sync(romanad, reflectors, warn, grace=args.node_grace, resync=args.resync)
    for resource in (Node, Namespace, Pod, NetworkPolicy):
        reflector = Reflector(client, resource, sync.changed)
        reflectors[reflector.kind] = reflector

    fatal: list[BaseException] = []

    def on_fatal(exc: BaseException) -> None:
        fatal.append(exc)
        stopping.set()

    supervisor = Supervisor(on_fatal)
    for kind, reflector in reflectors.items():
        supervisor.start(f"watch-{kind}", reflector.run, restart=True, stuck_after=None)
    supervisor.start("sync", sync.run, restart=True, stuck_after=None)

    def health() -> tuple[bool, dict[str, Any]]:
        # ``ok`` (the HTTP status, what a liveness probe acts on) is the listener's own
        # health: a restart cannot help an object romanad refuses, so stuck objects make
        # it "degraded", listed, and leave ``ok`` alone (docs/kubernetes.md).
        ok, loops = supervisor.health()
        stuck = sync.refusals.to_json()
        return ok, {
            "ok": ok,
            "status": ("degraded" if stuck else "ok") if ok else "failing",
            "stuck": stuck,
            "loops": loops,
            "watches": {k: r.to_json() for k, r in reflectors.items()},
            "sync": {
                "converged": sync.converged.is_set(),
                "full_syncs": sync.stats.full_syncs,
                "writes": dict(sync.stats.writes),
                "failures": sync.stats.failures,
                "stuck": len(stuck),
                "pending_removals": sorted(sync.removals),
                "not_moved": dict(sync.not_moved),
            },
        }

    if args.health_listen:
        from prometheus_client import CollectorRegistry

        from romana.serving import serve_health_in_thread

        registry = CollectorRegistry()
        register_build_info(registry)
        registry.register(_StuckObjects(sync.refusals))
        serve_health_in_thread(log.name, args.health_listen, registry, health)
    log.info("listening to the cluster", extra={"romanad": args.romanad})
    await stopping.wait()
    await supervisor.stop()
    await client.close()
    romanad.close()
    if fatal:
        sys.exit(70)


def _warning_event(subject: Subject, reason: str, message: str) -> Any:
    from lightkube.models.core_v1 import EventSource, ObjectReference
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import Event

    now = datetime.now(UTC)
    return Event(
        metadata=ObjectMeta(name=f"{subject.name}.{uuid.uuid4().hex[:16]}"),
        involvedObject=ObjectReference(
            apiVersion=API_VERSIONS[subject.kind],
            kind=subject.kind,
            name=subject.name,
            namespace=subject.namespace,
            uid=subject.uid,
        ),
        reason=reason,
        message=message[:1024],
        type="Warning",
        source=EventSource(component="romana-listener"),
        reportingComponent="romana-listener",
        firstTimestamp=now,
        lastTimestamp=now,
        count=1,
    )


class _StuckObjects:
    """``romana_listener_stuck_objects{kind}``: objects romanad refused (an alert's input)."""

    def __init__(self, refusals: Refusals) -> None:
        self.refusals = refusals

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        gauge = GaugeMetricFamily(
            "romana_listener_stuck_objects",
            "Objects whose writes romanad refuses (NetworkPolicies: enforced fail-closed)",
            labels=["kind"],
        )
        for kind, count in sorted(self.refusals.counts().items()):
            gauge.add_metric([kind], count)
        yield gauge


async def _post(client: Any, event: Any, namespace: str) -> None:
    try:
        await client.create(event, namespace=namespace)
    except Exception as exc:  # an event is advice; its loss must not stop the listener
        log.warning("could not post an event", extra={"error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    main()
