"""`romana version`: this client's build and the build of the romanad it talks to."""

from __future__ import annotations

from typing import Any

import typer

from romana.api.client import DEFAULT_URL, RomanaClient
from romana.buildinfo import BuildInfo, build_info, version_line
from romana.cli.output import err_console, fail, print_json
from romana.cli.remote import TOKEN_ENV, JsonOpt, TokenFileOpt, UrlOpt, read_token
from romana.errors import NotFound, RomanaError, Unauthorized
from romana.responses import RomanadVersion


def duration(seconds: float) -> str:
    """``3d 4h``, ``2h 5m``, ``7m 3s``, ``12s``: the two largest units are enough."""
    left = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        count, left = divmod(left, size)
        if count or (unit == "s" and not parts):
            parts.append(f"{count}{unit}")
    return " ".join(parts[:2])


def _build_text(info: BuildInfo) -> str:
    commit = f", commit {info['commit']}" if info["commit"] else ""
    return f"{info['version']} (Python {info['python']}{commit})"


def _explained(exc: RomanaError) -> RomanaError:
    """What the user can do about the usual failures, in the CLI's terms."""
    if isinstance(exc, Unauthorized):
        exc.details = [f"set ${TOKEN_ENV} or pass --token-file"]
    elif isinstance(exc, NotFound):
        exc.details = ["this romanad is older than GET /version; its /healthz may say more"]
    return exc


def version_cmd(
    url: UrlOpt = DEFAULT_URL, token_file: TokenFileOpt = None, json: JsonOpt = False
) -> None:
    """Show this client's version and romanad's.

    When romanad cannot be asked, the client's version is shown and the exit code is 1."""
    client = build_info()
    token = read_token(token_file)
    server: RomanadVersion | None = None
    error: RomanaError | None = None
    try:
        with RomanaClient(url, token) as romanad:
            server = romanad.version()
    except RomanaError as exc:
        error = _explained(exc)
    if json:
        # One document either way, so a script reads the client's version even when
        # romanad is away; the error also goes to stderr (exit 1) for whoever watches.
        document: dict[str, Any] = {"client": client, "romanad": server, "url": url}
        if error is not None:
            document["error"] = error.to_json()["error"]
        print_json(document)
    else:
        # Plain lines, never folded to the terminal's width: scripts grep them.
        typer.echo(f"client   {version_line('romana')}")
        if server is not None:
            typer.echo(
                f"romanad  {_build_text(server)}, {server['store']} store, "
                f"up {duration(server['uptime_seconds'])}, at {url}"
            )
    if error is not None:
        fail(error)
    if server is not None and server["version"] != client["version"]:
        # Not an error (a rolling upgrade passes through this), but worth seeing.
        err_console.print(
            f"[yellow]note:[/] the client is {client['version']}, romanad "
            f"{server['version']}: mind the CHANGELOG between them",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    app.command("version")(version_cmd)
