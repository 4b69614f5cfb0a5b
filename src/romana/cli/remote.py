"""What every command talking to romanad shares: connection options, the client, tables."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from romana.api.client import RomanaClient
from romana.cli.output import fail
from romana.errors import RomanaError, Unauthorized

TOKEN_ENV = "ROMANA_TOKEN"
_PANEL = "Connection"

UrlOpt = Annotated[
    str,
    typer.Option(
        "--url", envvar="ROMANA_URL", rich_help_panel=_PANEL, help="Where romanad listens."
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        dir_okay=False,
        rich_help_panel=_PANEL,
        help=f"File holding romanad's bearer token (otherwise ${TOKEN_ENV} is used).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the server's JSON, for scripts.")]


def read_token(token_file: Path | None) -> str | None:
    """The explicit ``--token-file`` wins over the environment, as flags usually do."""
    if token_file is None:
        return os.environ.get(TOKEN_ENV) or None
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        fail(f"cannot read token file {token_file}: {exc.strerror}")
    if not token:
        fail(f"token file {token_file} is empty")
    return token


@contextmanager
def connect(url: str, token_file: Path | None) -> Iterator[RomanaClient]:
    """A client for the block; any RomanaError inside it ends the command with exit 1."""
    token = read_token(token_file)
    try:
        with RomanaClient(url, token) as client:
            yield client
    except RomanaError as exc:
        if isinstance(exc, Unauthorized):
            # The server's hint names the HTTP header; a CLI user needs the CLI's knobs.
            exc.details = [f"set ${TOKEN_ENV} or pass --token-file"]
        fail(exc)


def table(*columns: str) -> Table:
    """A plain table: addresses never wrap (they stay copy-pasteable); other cells fold
    rather than being cut with an ellipsis, so a narrow terminal hides nothing."""
    grid = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        keep = column in {"IP", "CIDR", "BLOCK", "PREFIX", "DEVICE", "DEFAULT", "VIA"}
        grid.add_column(column, no_wrap=keep, overflow="ellipsis" if keep else "fold")
    return grid


def labels_text(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"
