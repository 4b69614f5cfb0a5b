"""The `romana` command line: offline topology tools, plus commands talking to romanad."""

from __future__ import annotations

import typer

from romana.buildinfo import version_line
from romana.cli import (
    addresses,
    bird,
    hosts,
    ipam,
    network,
    policy,
    routes,
    store,
    topology,
    version,
)

app = typer.Typer(
    help="Romana: routed, overlay-free networking with a topology-aware IPAM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion for every shell
)
app.add_typer(topology.app, name="topology")
app.add_typer(hosts.app, name="host")
app.add_typer(addresses.app, name="ip")
app.add_typer(network.block_app, name="block")
app.add_typer(network.network_app, name="network")
app.add_typer(network.blackout_app, name="blackout")
app.add_typer(routes.app, name="routes")
app.add_typer(bird.app, name="bird")
app.add_typer(ipam.app, name="ipam")
app.add_typer(store.app, name="store")
app.add_typer(policy.app, name="policy")
app.add_typer(policy.tenant_app, name="tenant")
version.register(app)


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(version_line("romana"))
        raise typer.Exit()


@app.callback()
def _root(
    _version: bool = typer.Option(
        False,
        "--version",
        is_eager=True,  # answered before any command is looked for
        callback=_print_version,
        help="Print this client's version and exit (romanad's too: romana version).",
    ),
) -> None:
    """Romana: routed, overlay-free networking with a topology-aware IPAM."""


def main() -> None:
    app()
