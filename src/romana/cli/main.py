"""The `romana` command line."""

from __future__ import annotations

import typer

from romana.cli import topology

app = typer.Typer(
    help="Romana: routed, overlay-free networking with a topology-aware IPAM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(topology.app, name="topology")


@app.callback()
def _root() -> None:
    """Romana: routed, overlay-free networking with a topology-aware IPAM."""


def main() -> None:
    app()
