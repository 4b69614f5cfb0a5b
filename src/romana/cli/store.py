"""`romana store`: check, back up and restore romanad's data directory (run on its host)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from romana.cli.output import console, emit, fail
from romana.cli.remote import JsonOpt
from romana.errors import RomanaError

app = typer.Typer(help="Check, back up and restore romanad's data directory (on its host).")

DataDir = Annotated[Path, typer.Argument(help="romanad's --data-dir", show_default=False)]


@app.command("check")
def check_cmd(data_dir: DataDir, json: JsonOpt = False) -> None:
    """Verify a data directory offline: integrity, store id and head against store.json,
    every snapshot and fact read back and replayed. Exit 1 naming each problem. Safe while
    romanad runs (read-only)."""
    from romana.ipam.replay import hosts_and_addresses
    from romana.store.offline import check

    report = check(data_dir, hosts_and_addresses)
    emit(report.to_json(), json, _show_check)
    if not report.ok:
        raise typer.Exit(1)


def _show_check(report: dict[str, object]) -> None:
    if report["ok"]:
        console.print(
            f"{report['data_dir']}: ok: store {report['store_id']}, revision "
            f"{report['head']} (snapshot {report['snapshot'] or 'none'}, facts "
            f"{report['facts']}), {report['hosts']} hosts, {report['addresses']} "
            "addresses",
            highlight=False,
        )
        return
    console.print(f"{report['data_dir']}: DAMAGED", highlight=False)
    for problem in report["problems"]:  # type: ignore[attr-defined]
        console.print(f"  {problem}", highlight=False)


@app.command("backup")
def backup_cmd(
    data_dir: DataDir,
    dest: Annotated[Path, typer.Argument(help="a new directory for the copy")],
) -> None:
    """Copy the store while romanad runs (SQLite's online backup): DEST/romana.db and
    DEST/store.json, as of one instant. Restore with `romana store restore`."""
    from romana.store.offline import backup

    try:
        head = backup(data_dir, dest)
    except RomanaError as exc:
        fail(exc)
    console.print(f"backed up {data_dir} at revision {head} into {dest}", highlight=False)


@app.command("restore")
def restore_cmd(
    backup_dir: Annotated[Path, typer.Argument(help="a `romana store backup`")], data_dir: DataDir
) -> None:
    """Make DATA_DIR the backed-up store (romanad stopped). The backup is checked first; the
    old directory is kept as DATA_DIR.replaced-REVISION. Agents and publishers that followed
    the newer store refuse the older one until restarted."""
    from romana.ipam.replay import hosts_and_addresses
    from romana.store.offline import restore

    try:
        head = restore(backup_dir, data_dir, hosts_and_addresses)
    except RomanaError as exc:
        fail(exc)
    console.print(
        f"restored {data_dir} to revision {head} from {backup_dir}; start romanad, "
        "then restart agents and publishers",
        highlight=False,
    )
