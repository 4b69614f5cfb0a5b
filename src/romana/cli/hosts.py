"""`romana host ...`: register hosts with romanad, list, relabel and remove them."""

from __future__ import annotations

from typing import Annotated

import typer

from romana.api.client import DEFAULT_URL
from romana.cli.output import console, emit
from romana.cli.remote import JsonOpt, TokenFileOpt, UrlOpt, connect, labels_text, table
from romana.responses import HostJson

app = typer.Typer(help="Add, list, relabel and remove hosts.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Host name, as the orchestrator knows it.")]


def parse_labels(items: list[str] | None) -> dict[str, str]:
    """``k=v`` pairs to a map; a malformed pair is a usage error (exit 2)."""
    labels: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE")
        labels[key] = value
    return labels


def show_hosts(hosts: list[HostJson]) -> None:
    if not hosts:
        console.print("no hosts")
        return
    # Most clusters have one network; name it only when there is a choice, to save width.
    many = len({network for host in hosts for network in host["groups"]}) > 1
    grid = table("NAME", "IP", "LABELS", *(["NETWORK"] if many else []), "GROUP", "CIDR", "BLOCKS")
    for host in hosts:
        # One row per network the host is placed in, so each group's CIDR reads on its own.
        placements = sorted(host["groups"].items()) or [
            ("-", {"group": "-", "cidr": "-", "areas": []})
        ]
        for i, (network, where) in enumerate(placements):
            first = i == 0
            grid.add_row(
                host["name"] if first else "",
                host["ip"] if first else "",
                labels_text(host["labels"]) if first else "",
                *([network] if many else []),
                where["group"],
                where["cidr"],
                str(host["block_count"]) if first else "",
            )
    console.print(grid)


@app.command("add")
def add_cmd(
    name: NameArg,
    ip: Annotated[str, typer.Argument(help="The host's IPv4 address.")],
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            "-l",
            metavar="KEY=VALUE",
            help="A node label; repeat for several. Labels choose the host's group.",
        ),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Register a host; romanad places it in the group its labels match."""
    labels = parse_labels(label)
    with connect(url, token_file) as client:
        host = client.add_host(name, ip, labels)
    emit(host, json, lambda host: show_hosts([host]))


@app.command("show")
def show_cmd(
    name: NameArg, url: UrlOpt = DEFAULT_URL, token_file: TokenFileOpt = None, json: JsonOpt = False
) -> None:
    """Show one host: its labels, groups and block count."""
    with connect(url, token_file) as client:
        host = client.host(name)
    emit(host, json, lambda host: show_hosts([host]))


@app.command("list")
def list_cmd(
    url: UrlOpt = DEFAULT_URL, token_file: TokenFileOpt = None, json: JsonOpt = False
) -> None:
    """List every host."""
    with connect(url, token_file) as client:
        result = client.hosts()
    emit(result, json, lambda result: show_hosts(result["hosts"]))


@app.command("remove")
def remove_cmd(
    name: NameArg, url: UrlOpt = DEFAULT_URL, token_file: TokenFileOpt = None, json: JsonOpt = False
) -> None:
    """Remove a host, releasing its addresses and blocks."""
    with connect(url, token_file) as client:
        host = client.remove_host(name)
    emit(
        host,
        json,
        lambda h: console.print(f"removed host {h['name']} ({h['ip']})", highlight=False),
    )


@app.command("label")
def label_cmd(
    name: NameArg,
    labels: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="KEY=VALUE",
            help="The complete new label map (labels not given are dropped).",
            show_default=False,
        ),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Drop every label.")] = False,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Replace a host's labels; refused if the host would no longer fit its group."""
    # An empty map drops every label; demand --clear so a forgotten argument cannot do that.
    if not labels and not clear:
        raise typer.BadParameter(
            "give KEY=VALUE labels, or --clear to drop them all", param_hint="KEY=VALUE"
        )
    if labels and clear:
        raise typer.BadParameter("--clear takes no labels", param_hint="--clear")
    with connect(url, token_file) as client:
        host = client.set_labels(name, parse_labels(labels))
    emit(host, json, lambda host: show_hosts([host]))
