"""`romana routes`: the aggregated route set of a host or a group's router."""

from __future__ import annotations

from typing import Annotated

import typer

from romana.api.client import DEFAULT_URL, RouteSetJson, RouteSummary
from romana.cli.output import console, emit
from romana.cli.remote import JsonOpt, TokenFileOpt, UrlOpt, connect, table

app = typer.Typer(help="Show the routes each device needs (hosts and group routers).")


@app.callback(invoke_without_command=True)
def routes_cmd(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option("--host", help="A host's route set.")] = None,
    group: Annotated[str | None, typer.Option(
        "--group", help="A group router's route set: PATH like rack-1, zone-a/rack-3, or /.")
    ] = None,
    url: UrlOpt = DEFAULT_URL, token_file: TokenFileOpt = None, json: JsonOpt = False,
) -> None:
    """Show a device's routes: --host NAME or --group PATH (or `romana routes summary`)."""
    if ctx.invoked_subcommand is not None:
        return
    if (host is None) == (group is None):
        raise typer.BadParameter("give exactly one of --host NAME or --group PATH "
                                 "(or run `romana routes summary`)", param_hint="--host/--group")
    with connect(url, token_file) as client:
        emit(client.routes(host=host, group=group), json, _show_routes)


@app.command("summary")
def summary_cmd(url: UrlOpt = DEFAULT_URL, token_file: TokenFileOpt = None,
                json: JsonOpt = False) -> None:
    """Per device: routes, distinct next hops and route updates since romanad started."""
    with connect(url, token_file) as client:
        emit(client.routes_summary(), json, _show_summary)


def _show_routes(result: RouteSetJson) -> None:
    console.print(f"{result['vantage']}  default -> {result['default'] or 'none'}",
                  highlight=False)
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
        grid.add_row(d["vantage"], str(d["routes"]), str(d["next_hops"]), d["default"] or "-",
                     str(d["updates"]), str(d["route_changes"]))
    console.print(grid)
