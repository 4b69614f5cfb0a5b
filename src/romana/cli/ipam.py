"""`romana ipam check`: find (and with ``--release`` free) addresses the CNI plugin leaked.

Runs on a node, as root (it reads every network namespace of the machine). How an address
is judged is in ``romana.cni.leaks``: it must be configured nowhere *and* unknown to the
runtime (when ``--valid-attachments`` gives the runtime's list) to count as leaked. With
``--release``, the check is repeated after ``--grace`` seconds and only addresses leaked
both times are released, so an ADD that had allocated but not yet configured its address
is never robbed of it.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from romana.api.client import DEFAULT_URL, RomanaClient
from romana.cli.output import console, emit, fail
from romana.cli.remote import JsonOpt, TokenFileOpt, UrlOpt, connect, table
from romana.errors import NotFound, RomanaError

app = typer.Typer(help="Node-side IPAM maintenance for the CNI plugin.", no_args_is_help=True)


@app.callback()
def _ipam() -> None:
    """Node-side IPAM maintenance for the CNI plugin."""


@app.command("check")
def check_cmd(
    host: Annotated[
        str, typer.Option("--host", help="This node's name in romanad (default: the hostname).")
    ] = "",
    valid_attachments: Annotated[
        Path | None,
        typer.Option(
            "--valid-attachments",
            dir_okay=False,
            exists=True,
            help="The runtime's attachments, as CNI GC gets them: a JSON list of "
            "{containerID, ifname}, or a config holding cni.dev/valid-attachments.",
        ),
    ] = None,
    network: Annotated[
        str | None, typer.Option("--network", help='Only this CNI network (its config\'s "name").')
    ] = None,
    release: Annotated[
        bool, typer.Option("--release", help="Release the leaked addresses (after re-checking).")
    ] = False,
    grace: Annotated[
        float, typer.Option("--grace", min=0, help="Seconds between the two checks of --release.")
    ] = 5.0,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """List addresses whose container no longer exists; --release frees them."""
    from romana.cni import leaks

    if os.geteuid() != 0:
        fail("romana ipam check reads every network namespace: run it as root")
    valid = None
    if valid_attachments is not None:
        try:
            valid = leaks.read_valid_attachments(valid_attachments.read_text())
        except ValueError as exc:
            fail(f"{valid_attachments}: {exc}")
    host = host or socket.gethostname()
    with connect(url, token_file) as client:
        report = _check(client, host, valid, network)
        report["release"] = release
        if release and report["leaked"]:
            if grace:
                time.sleep(grace)
            again = {f["name"] for f in _check(client, host, valid, network)["leaked"]}
            report["released"], report["failed"] = _release(
                client, [f for f in report["leaked"] if f["name"] in again]
            )
    emit(report, json, _render)


def _check(
    client: RomanaClient, host: str, valid: set[tuple[str, str]] | None, network: str | None
) -> dict[str, Any]:
    from romana.cni import leaks
    from romana.cni.namespaces import live_addresses

    addresses = client.addresses(host=host)["addresses"]
    live, namespaces = live_addresses()
    checked, findings = leaks.classify(addresses, live, valid, network)
    by_verdict: dict[str, list[dict[str, str]]] = {"leaked": [], "stale": [], "unconfigured": []}
    for finding in findings:
        by_verdict[finding.verdict].append(finding.to_json())
    return {
        "host": host,
        "checked": checked,
        "namespaces": namespaces,
        **by_verdict,
        "released": [],
        "failed": [],
    }


def _release(
    client: RomanaClient, leaked: list[dict[str, str]]
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    released, failed = [], []
    for finding in leaked:
        try:
            client.release(finding["name"])
        except NotFound:
            pass  # released meanwhile (the runtime's DEL came after all): nothing to report
        except RomanaError as exc:
            failed.append({**finding, "error": exc.message})
        else:
            released.append(finding)
    return released, failed


def _render(report: dict[str, Any]) -> None:
    console.print(
        f"host {report['host']}: {report['checked']} CNI addresses checked "
        f"against {report['namespaces']} network namespaces",
        highlight=False,
    )
    rows = [
        (verdict, f) for verdict in ("leaked", "stale", "unconfigured") for f in report[verdict]
    ]
    if rows:
        grid = table("VERDICT", "NAME", "IP", "REASON")
        for verdict, f in rows:
            grid.add_row(verdict, f["name"], f["ip"], f["reason"])
        console.print(grid)
    else:
        console.print("no leaked addresses")
    for f in report["released"]:
        console.print(f"released {f['name']} ({f['ip']})", highlight=False)
    for f in report["failed"]:
        console.print(f"could not release {f['name']} ({f['ip']}): {f['error']}", highlight=False)
    if report["leaked"] and not report["release"]:
        console.print("run again with --release to free the leaked addresses")


if __name__ == "__main__":  # until `romana ipam` is registered in romana.cli.main
    app()
