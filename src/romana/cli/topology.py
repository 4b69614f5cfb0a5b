"""`romana topology ...`: validate, show and export the schema of maps; apply and get them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.tree import Tree

from romana.api.client import DEFAULT_URL
from romana.cli.output import console, emit, err_console, fail, print_json
from romana.cli.remote import TokenFileOpt, UrlOpt, connect
from romana.errors import Problem, RomanaError
from romana.responses import ProblemJson, TopologyApplied

# The topology model and the engine (pydantic, ~150 ms) are imported inside the offline
# commands only, so every remote command of the CLI starts without them.

app = typer.Typer(help="Validate, show and apply topology maps.", no_args_is_help=True)

FileArg = Annotated[Path, typer.Argument(help="Topology map, JSON or YAML.", dir_okay=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ServiceCidrOpt = Annotated[
    str | None,
    typer.Option("--service-cidr", help="Kubernetes service CIDR the networks must avoid."),
]


@app.command("validate")
def validate_cmd(file: FileArg, service_cidr: ServiceCidrOpt = None, json: JsonOpt = False) -> None:
    """Check a map; exit 0 if valid, 1 listing every problem."""
    from romana.topology import read_file, validate

    try:
        problems = validate(read_file(file), service_cidr)
    except RomanaError as exc:
        fail(exc)
    except ValueError as exc:  # a malformed --service-cidr
        fail(f"--service-cidr: {exc}")
    errors = [p for p in problems if p.severity == "error"]
    if json:
        print_json({"valid": not errors, "problems": [p.to_json() for p in problems]})
    else:
        for problem in problems:
            (err_console if problem.severity == "error" else console).print(
                str(problem), markup=False, highlight=False
            )
        if not errors:
            console.print(f"{file}: valid", highlight=False)
        else:
            err_console.print(f"{file}: {len(errors)} error(s)", highlight=False)
    raise typer.Exit(1 if errors else 0)


@app.command("show")
def show_cmd(file: FileArg, json: JsonOpt = False) -> None:
    """Show the prefix groups a map carves: CIDR, size, labels and hosts of each group."""
    from romana.ipam import Engine
    from romana.topology import read_file

    engine = Engine()
    try:
        engine.apply_topology(read_file(file))
    except RomanaError as exc:
        fail(exc)
    document = engine.topology_document()
    assert document is not None
    emit(document, json, lambda d: console.print(render_tree(d)))


def render_tree(document: dict[str, Any]) -> Tree:
    root = Tree("[bold]topology[/]")
    networks = {n["name"]: n for n in document["networks"]}
    for mapping in document["topologies"]:
        label = ", ".join(
            f"{name} {networks[name]['cidr']} (/{networks[name]['block_mask']} blocks"
            + (", outbound NAT" if networks[name].get("nat_outgoing") else "")
            + ")"
            for name in mapping["networks"]
        )
        branch = root.add(f"[bold cyan]{label}[/]")
        for group in mapping["map"]:
            _render_group(branch, group)
    if document.get("cluster_ranges"):
        root.add("cluster ranges (never translated) " + ", ".join(document["cluster_ranges"]))
    return root


def _size(cidr: str) -> int:
    return 1 << (32 - int(cidr.split("/")[1]))


def _render_group(parent: Tree, group: dict[str, Any]) -> None:
    cidr = group["cidr"]
    cidrs = [cidr] if isinstance(cidr, str) else [f"{n}: {c}" for n, c in cidr.items()]
    first = cidr if isinstance(cidr, str) else next(iter(cidr.values()))
    name = group.get("name", "(unnamed)")
    text = f"[bold]{name}[/] {'  '.join(cidrs)} ({_size(first)} addresses)"
    if group.get("assignment"):
        text += "  labels " + ", ".join(f"{k}={v}" for k, v in group["assignment"].items())
    if group.get("routing"):
        text += f"  routing {group['routing']}"
    node = parent.add(text)
    for host in group.get("hosts") or []:
        node.add(f"host {host['name']} {host['ip']}")
    for child in group.get("groups") or []:
        _render_group(node, child)


@app.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of the topology map format."""
    from romana.topology import json_schema

    print_json(json_schema())


@app.command("apply")
def apply_cmd(
    file: FileArg, url: UrlOpt = DEFAULT_URL, token_file: TokenFileOpt = None, json: JsonOpt = False
) -> None:
    """Send a map to romanad; existing hosts and allocations must still fit it."""
    from romana.topology import read_file

    try:
        document = read_file(file)
    except RomanaError as exc:
        fail(exc)

    def show_applied(result: TopologyApplied) -> None:
        for warning in result["warnings"]:
            console.print(str(_problem(warning)), markup=False, highlight=False)
        console.print(render_tree(result["topology"]))
        console.print(f"applied {file} (revision {result['revision']})", highlight=False)

    with connect(url, token_file) as client:
        emit(client.apply_topology(document), json, show_applied)


@app.command("get")
def get_cmd(
    url: UrlOpt = DEFAULT_URL, token_file: TokenFileOpt = None, json: JsonOpt = False
) -> None:
    """Show the map romanad applies, each group with its CIDR and hosts."""
    with connect(url, token_file) as client:
        emit(client.topology(), json, lambda document: console.print(render_tree(document)))


def _problem(data: ProblemJson) -> Problem:
    return Problem(data["path"], data["message"], data["hint"], data["severity"])
