"""`romana ip ...`: allocate, release, show and list pod addresses."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from romana.api.client import DEFAULT_URL
from romana.cli.hosts import parse_labels
from romana.cli.output import console, emit
from romana.cli.remote import JsonOpt, TokenFileOpt, UrlOpt, connect, labels_text, table
from romana.responses import AddressJson

app = typer.Typer(help="Allocate, release, show and list addresses.", no_args_is_help=True)

TenantOpt = Annotated[str | None, typer.Option("--tenant", help="Tenant (namespace).")]
LabelOpt = Annotated[
    list[str] | None,
    typer.Option("--label", "-l", metavar="KEY=VALUE", help="An endpoint label (policies)."),
]
PortOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--port", metavar="NAME=PORT[/PROTO]", help="A named container port, e.g. http=8080/tcp."
    ),
]
_PORT = re.compile(r"([^=]+)=([0-9]+)(?:/(tcp|udp|sctp))?\Z", re.IGNORECASE)


def parse_ports(items: list[str] | None) -> list[dict[str, Any]] | None:
    """``name=port[/proto]`` items (None when none were given: keep what there is)."""
    if items is None:
        return None
    ports = []
    for item in items:
        match = _PORT.match(item)
        if match is None:
            raise typer.BadParameter(f"{item!r} is not NAME=PORT[/tcp|udp|sctp]")
        name, port, protocol = match.groups()
        ports.append({"name": name, "port": int(port), "protocol": (protocol or "tcp").lower()})
    return ports


def show_addresses(addresses: list[AddressJson]) -> None:
    if not addresses:
        console.print("no addresses")
        return
    pods = any("pod" in a for a in addresses)  # a column only where romanad knows pods
    grid = table("NAME", "IP", "HOST", "NETWORK", "BLOCK", "TENANT", "SEGMENT", *["POD"] * pods)
    for a in addresses:
        row = [a["name"], a["ip"], a["host"], a["network"], a["block"]]
        row += [a["tenant"] or "-", a["segment"] or "-"]
        if pods:
            row.append(pod_text(a))
        grid.add_row(*row)
    console.print(grid)


def pod_text(address: AddressJson) -> str:
    """``namespace/name`` of the address's pod, ``-`` when romanad does not know it."""
    pod = address.get("pod")
    return f"{pod['namespace']}/{pod['name']}" if pod else "-"


@app.command("allocate")
def allocate_cmd(
    name: Annotated[str, typer.Argument(help="Address name, unique (e.g. the pod's).")],
    host: Annotated[str, typer.Option("--host", help="Host the address is for.")],
    tenant: TenantOpt = None,
    segment: Annotated[str | None, typer.Option("--segment", help="Segment in the tenant.")] = None,
    ip: Annotated[
        str | None, typer.Option("--ip", help="Ask for this address instead of the next free one.")
    ] = None,
    label: LabelOpt = None,
    port: PortOpt = None,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Allocate an address on a host, from a block in the host's group."""
    labels = parse_labels(label) if label else None
    ports = parse_ports(port)
    with connect(url, token_file) as client:
        address = client.allocate(name, host, tenant or "", segment or "", ip, labels, ports)
    emit(address, json, lambda address: show_addresses([address]))


@app.command("label")
def label_cmd(
    name: Annotated[str, typer.Argument(help="Address name.")],
    labels: Annotated[
        list[str] | None,
        typer.Argument(metavar="KEY=VALUE...", help="The endpoint's new labels (replace all)."),
    ] = None,
    port: PortOpt = None,
    keep_labels: Annotated[
        bool, typer.Option("--keep-labels", help="Change only --port; keep the labels.")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Replace an endpoint's labels (and, with --port, its named ports) for policies."""
    new_labels = None if keep_labels else parse_labels(labels)
    with connect(url, token_file) as client:
        address = client.label_endpoint(name, new_labels, parse_ports(port))
    emit(
        address,
        json,
        lambda a: console.print(f"{a['name']}: {endpoint_text(a)}"),
    )


def endpoint_text(address: AddressJson) -> str:
    ports = address.get("ports") or []
    named = "".join(f" {p['name']}={p['port']}/{p['protocol']}" for p in ports)
    return labels_text(address.get("labels") or {}) + named


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
