"""`romana routes`: the aggregated route set of a host or a group's router."""

from __future__ import annotations

from typing import Annotated

import typer

from romana.api.client import DEFAULT_URL
from romana.cli.output import console, emit
from romana.cli.remote import JsonOpt, TokenFileOpt, UrlOpt, connect, table
from romana.responses import RouteSetJson, RouteSummary, RouteVerifyReport

app = typer.Typer(help="Show the routes each device needs (hosts and group routers).")


@app.callback(invoke_without_command=True)
def routes_cmd(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option("--host", help="A host's route set.")] = None,
    group: Annotated[
        str | None,
        typer.Option(
            "--group", help="A group router's route set: PATH like rack-1, zone-a/rack-3, or /."
        ),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Show a device's routes: --host NAME or --group PATH (or `romana routes summary`)."""
    if ctx.invoked_subcommand is not None:
        return
    if (host is None) == (group is None):
        raise typer.BadParameter(
            "give exactly one of --host NAME or --group PATH (or run `romana routes summary`)",
            param_hint="--host/--group",
        )
    with connect(url, token_file) as client:
        emit(client.routes(host=host, group=group), json, _show_routes)


@app.command("summary")
def summary_cmd(
    url: UrlOpt = DEFAULT_URL, token_file: TokenFileOpt = None, json: JsonOpt = False
) -> None:
    """Per device: routes, distinct next hops and route updates since romanad started."""
    with connect(url, token_file) as client:
        emit(client.routes_summary(), json, _show_summary)


@app.command("verify")
def verify_cmd(
    url: UrlOpt = DEFAULT_URL, token_file: TokenFileOpt = None, json: JsonOpt = False
) -> None:
    """Prove the served routes: forward every allocated address from every host, hop by hop
    with longest-prefix match; exit 1 listing any address that misses its owner."""
    with connect(url, token_file) as client:
        result = client.routes_verify()
    emit(result, json, _show_verify)
    if not result["ok"]:
        raise typer.Exit(1)


def _show_verify(result: RouteVerifyReport) -> None:
    verdict = "ok" if result["ok"] else f"FAILED for {result['failed_addresses']} address(es)"
    console.print(
        f"revision {result['revision']}: {result['addresses']} addresses in "
        f"{result['blocks']} blocks forwarded from {result['sources']} hosts "
        f"({result['walks']} walks, {result['seconds']} s): {verdict}",
        highlight=False,
    )
    if result["failures"]:
        grid = table("ADDRESS", "NAME", "OWNER", "FROM", "PROBLEM", "PATH")
        for f in result["failures"]:
            grid.add_row(
                f["address"], f["name"], f["owner"], f["from"], f["problem"], " -> ".join(f["path"])
            )
        console.print(grid)
    devices = result["devices"]
    routes = sum(d["routes"] for d in devices)
    hops = sum(d["next_hops"] for d in devices)
    worst = max(devices, key=lambda d: d["routes"] / max(d["next_hops"], 1), default=None)
    console.print(
        f"{len(devices)} devices: {routes} routes for {hops} next hops"
        + (
            f"; most per next hop: {worst['vantage']} {worst['routes']}/{worst['next_hops']}"
            if worst
            else ""
        ),
        highlight=False,
    )


def _show_routes(result: RouteSetJson) -> None:
    console.print(f"{result['vantage']}  default -> {result['default'] or 'none'}", highlight=False)
    if not result["routes"]:
        console.print("no routes")
        return
    grid = table("PREFIX", "VIA", "GATEWAY")
    for route in result["routes"]:
        grid.add_row(route["prefix"], route["via"], route["gateway"] or "-")
    console.print(grid)


def _show_summary(result: RouteSummary) -> None:
    grid = table("DEVICE", "ROUTES", "NEXT HOPS", "DEFAULT", "UPDATES", "ROUTE CHANGES")
    for d in result["devices"]:
        grid.add_row(
            d["vantage"],
            str(d["routes"]),
            str(d["next_hops"]),
            d["default"] or "-",
            str(d["updates"]),
            str(d["route_changes"]),
        )
    console.print(grid)
