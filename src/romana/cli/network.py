"""`romana network|block|blackout ...`: the address space as romanad has carved it."""

from __future__ import annotations

from typing import Annotated

import typer

from romana.api.client import DEFAULT_URL
from romana.cli.output import console, emit
from romana.cli.remote import JsonOpt, TokenFileOpt, UrlOpt, connect, table
from romana.responses import Blackouts, BlockList, NetworkJson

network_app = typer.Typer(help="List networks and their usage.", no_args_is_help=True)
block_app = typer.Typer(help="List address blocks.", no_args_is_help=True)
blackout_app = typer.Typer(help="Keep ranges of a network out of allocation.", no_args_is_help=True)

NetworkArg = Annotated[str, typer.Argument(help="Network name.")]
CidrArg = Annotated[str, typer.Argument(help="Range to black out, e.g. 10.1.250.0/24.")]


@network_app.command("list")
def network_list_cmd(
    url: UrlOpt = DEFAULT_URL, token_file: TokenFileOpt = None, json: JsonOpt = False
) -> None:
    """List networks: CIDR, block size, tenants and address usage."""
    with connect(url, token_file) as client:
        emit(client.networks(), json, _show_networks)


def _show_networks(networks: list[NetworkJson]) -> None:
    if not networks:
        console.print("no networks (apply a topology first)")
        return
    grid = table("NAME", "CIDR", "BLOCK MASK", "TENANTS", "BLOCKS", "ALLOCATED", "FREE")
    for n in networks:
        grid.add_row(
            n["name"],
            n["cidr"],
            f"/{n['block_mask']}",
            ",".join(n["tenants"]) if n["tenants"] else "all",
            str(n["blocks"]),
            str(n["allocated"]),
            str(n["free"]),
        )
    console.print(grid)


@block_app.command("list")
def block_list_cmd(
    network: Annotated[str | None, typer.Option("--network", help="Only this network's.")] = None,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """List assigned blocks: owner host, tenant, segment and addresses in use."""
    with connect(url, token_file) as client:
        emit(client.blocks(network), json, _show_blocks)


def _show_blocks(result: BlockList) -> None:
    if not result["blocks"]:
        console.print("no blocks")
        return
    grid = table("CIDR", "NETWORK", "GROUP", "HOST", "TENANT", "SEGMENT", "ADDRESSES")
    for b in result["blocks"]:
        grid.add_row(
            b["cidr"],
            b["network"],
            b["group"],
            b["host"],
            b["tenant"] or "-",
            b["segment"] or "-",
            str(b["allocated_ip_count"]),
        )
    console.print(grid)


def _show_blackouts(result: Blackouts) -> None:
    if not result["blackouts"]:
        console.print(f"no blackouts in network {result['network']}", highlight=False)
    else:
        for cidr in result["blackouts"]:
            console.print(cidr, highlight=False)


@blackout_app.command("add")
def blackout_add_cmd(
    network: NetworkArg,
    cidr: CidrArg,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Black out a range; refused while it holds allocated addresses. Prints the new list."""
    with connect(url, token_file) as client:
        emit(client.add_blackout(network, cidr), json, _show_blackouts)


@blackout_app.command("remove")
def blackout_remove_cmd(
    network: NetworkArg,
    cidr: CidrArg,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Return a blacked-out range to allocation. Prints the new list."""
    with connect(url, token_file) as client:
        emit(client.remove_blackout(network, cidr), json, _show_blackouts)


@blackout_app.command("list")
def blackout_list_cmd(
    network: NetworkArg,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """List a network's blacked-out ranges."""
    with connect(url, token_file) as client:
        emit(client.blackouts(network), json, _show_blackouts)
