"""Output helpers shared by CLI commands: JSON for scripts, rich for people, one-line errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from romana.errors import InvalidTopology, RomanaError

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def emit(data: T, json: bool, render: Callable[[T], object]) -> None:
    """The server's JSON for scripts (``--json``), or ``render`` for people."""
    if json:
        print_json(data)
    else:
        render(data)


def fail(error: RomanaError | str) -> NoReturn:
    """Report an error on one line (plus one line per detail) and exit 1."""
    if isinstance(error, InvalidTopology):
        err_console.print(
            f"[red]error:[/] invalid topology: {len(error.problems)} problem(s)", highlight=False
        )
        for problem in error.problems:
            err_console.print(f"  {problem}", highlight=False, markup=False)
    elif isinstance(error, RomanaError):
        err_console.print(Text("error: ", style="red") + Text(error.message), highlight=False)
        for detail in error.details:
            err_console.print(f"  {detail}", highlight=False, markup=False)
    else:
        err_console.print(Text("error: ", style="red") + Text(str(error)), highlight=False)
    raise typer.Exit(1)
