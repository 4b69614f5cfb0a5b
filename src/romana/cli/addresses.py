"""`romana ip ...`: allocate, release, show and list pod addresses."""

from __future__ import annotations

from typing import Annotated

import typer

from romana.api.client import DEFAULT_URL, AddressJson
from romana.cli.output import console, emit
from romana.cli.remote import JsonOpt, TokenFileOpt, UrlOpt, connect, table

app = typer.Typer(help="Allocate, release, show and list addresses.", no_args_is_help=True)

TenantOpt = Annotated[str | None, typer.Option("--tenant", help="Tenant (namespace).")]


def show_addresses(addresses: list[AddressJson]) -> None:
    if not addresses:
        console.print("no addresses")
        return
    grid = table("NAME", "IP", "HOST", "NETWORK", "BLOCK", "TENANT", "SEGMENT")
    for a in addresses:
        grid.add_row(
            a["name"],
            a["ip"],
            a["host"],
            a["network"],
            a["block"],
            a["tenant"] or "-",
            a["segment"] or "-",
        )
    console.print(grid)


@app.command("allocate")
def allocate_cmd(
    name: Annotated[str, typer.Argument(help="Address name, unique (e.g. the pod's).")],
    host: Annotated[str, typer.Option("--host", help="Host the address is for.")],
    tenant: TenantOpt = None,
    segment: Annotated[str | None, typer.Option("--segment", help="Segment in the tenant.")] = None,
    ip: Annotated[
        str | None, typer.Option("--ip", help="Ask for this address instead of the next free one.")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Allocate an address on a host, from a block in the host's group."""
    with connect(url, token_file) as client:
        address = client.allocate(name, host, tenant or "", segment or "", ip)
    emit(address, json, lambda address: show_addresses([address]))


@app.command("release")
def release_cmd(
    name_or_ip: Annotated[
        str, typer.Argument(metavar="NAME_OR_IP", help="Address name, or the IP itself.")
    ],
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Release an address; an emptied block goes back to its group's pool."""
    with connect(url, token_file) as client:
        address = client.release(name_or_ip)
    emit(
        address, json, lambda a: console.print(f"released {a['name']} ({a['ip']})", highlight=False)
    )


@app.command("show")
def show_cmd(
    name: Annotated[str, typer.Argument(help="Address name.")],
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Show one address."""
    with connect(url, token_file) as client:
        address = client.address(name)
    emit(address, json, lambda address: show_addresses([address]))


@app.command("list")
def list_cmd(
    host: Annotated[str | None, typer.Option("--host", help="Only this host's.")] = None,
    tenant: TenantOpt = None,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """List addresses, in IP order."""
    with connect(url, token_file) as client:
        result = client.addresses(host, tenant)
    emit(result, json, lambda result: show_addresses(result["addresses"]))
