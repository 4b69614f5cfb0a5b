"""`romana policy ...` and `romana tenant ...`: network policies and the labels they select by.

``romana policy add`` takes a Romana policy, a ``securitypolicies`` wrapper, or Kubernetes
NetworkPolicies (one, several YAML documents, or a ``List``), as JSON or YAML, from a file
or ``-`` (stdin). Each document is sent as it is; romanad validates and translates it.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
import yaml

from romana.api.client import DEFAULT_URL
from romana.cli.hosts import parse_labels
from romana.cli.output import console, emit, fail, print_json
from romana.cli.remote import JsonOpt, TokenFileOpt, UrlOpt, connect, labels_text, table
from romana.responses import PolicyJson, TenantJson

app = typer.Typer(help="Add, list, show and remove network policies.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenant (namespace) labels, for policies.", no_args_is_help=True)

IdArg = Annotated[
    str, typer.Argument(help="Policy id: a Romana id, or k8s:NAMESPACE:NAME for a NetworkPolicy.")
]


def read_documents(source: str) -> list[dict[str, Any]]:
    """Every policy document in ``source`` (a path or ``-``), JSON or YAML."""
    try:
        text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()  # noqa: SIM115
    except OSError as exc:
        fail(f"cannot read {source}: {exc.strerror}")
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:  # JSON is YAML: one parser for both
        fail(f"{source}: not JSON or YAML: {exc}")
    out: list[dict[str, Any]] = []
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == "List":
            out += [i for i in document.get("items") or [] if isinstance(i, dict)]
        elif isinstance(document, dict):
            out.append(document)
        else:
            fail(f"{source}: a policy document is an object, not {type(document).__name__}")
    if not out:
        fail(f"{source}: no policy in it")
    return out


def describe(policy: PolicyJson) -> tuple[str, str]:
    """(directions, what it applies to) of a policy in the internal form, for a table."""
    internal = policy["policy"]
    directions = "+".join(d for d in ("ingress", "egress") if d in internal)
    targets = []
    for target in internal["applied_to"]:
        where = target.get("tenant") or "tenants matching"
        labels = ",".join(_requirement(*r) for r in target.get("labels", []))
        targets.append(where + (f" ({labels})" if labels else ""))  # [..] is rich markup
    return directions or "-", "; ".join(targets)


def _requirement(key: str, operator: str, values: list[str]) -> str:
    if operator == "In":
        return f"{key}={'|'.join(values)}"
    if operator == "NotIn":
        return f"{key}!={'|'.join(values)}"
    return key if operator == "Exists" else f"!{key}"


def show_policies(policies: list[PolicyJson]) -> None:
    if not policies:
        console.print("no policies")
        return
    grid = table("ID", "KIND", "DIRECTIONS", "APPLIED TO", "RULES")
    for p in policies:
        directions, targets = describe(p)
        rules = sum(len(p["policy"].get(d) or []) for d in ("ingress", "egress"))
        grid.add_row(p["id"], p["kind"], directions, targets, str(rules))
    console.print(grid)


@app.command("add")
def add_cmd(
    source: Annotated[str, typer.Argument(help="A JSON or YAML file, or - for stdin.")],
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Add policies: Romana's JSON, or Kubernetes NetworkPolicies (added or replaced)."""
    documents = read_documents(source)
    added: list[PolicyJson] = []
    with connect(url, token_file) as client:
        for document in documents:
            added += client.add_policy(document)
    emit(added, json, show_policies)


@app.command("list")
def list_cmd(
    url: UrlOpt = DEFAULT_URL, token_file: TokenFileOpt = None, json: JsonOpt = False
) -> None:
    """Every policy, Romana's and Kubernetes', with what it applies to."""
    with connect(url, token_file) as client:
        policies = client.policies()
    emit(policies, json, show_policies)


@app.command("show")
def show_cmd(key: IdArg, url: UrlOpt = DEFAULT_URL, token_file: TokenFileOpt = None) -> None:
    """A policy as given (``source``) and as enforced (``policy``), as JSON."""
    with connect(url, token_file) as client:
        policy = client.policy(key)
    print_json(policy)


@app.command("remove")
def remove_cmd(
    key: IdArg, url: UrlOpt = DEFAULT_URL, token_file: TokenFileOpt = None, json: JsonOpt = False
) -> None:
    """Remove a policy; the endpoints it isolated are open again unless others select them."""
    with connect(url, token_file) as client:
        removed = client.remove_policy(key)
    emit(removed, json, lambda p: console.print(f"removed {p['id']}"))


# -- tenants ---------------------------------------------------------------------------------
def show_tenants(tenants: list[TenantJson]) -> None:
    if not tenants:
        console.print("no tenants")
        return
    grid = table("TENANT", "LABELS")
    for t in tenants:
        grid.add_row(t["name"], labels_text(t["labels"]))
    console.print(grid)


@tenant_app.command("list")
def tenants_cmd(
    url: UrlOpt = DEFAULT_URL, token_file: TokenFileOpt = None, json: JsonOpt = False
) -> None:
    """Tenants that hold addresses or labels."""
    with connect(url, token_file) as client:
        tenants = client.tenants()
    emit(tenants, json, show_tenants)


@tenant_app.command("label")
def label_cmd(
    name: Annotated[str, typer.Argument(help="Tenant (namespace) name.")],
    labels: Annotated[
        list[str] | None,
        typer.Argument(metavar="KEY=VALUE...", help="The new labels (replace all)."),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Replace a tenant's labels (none given: remove them all)."""
    with connect(url, token_file) as client:
        tenant = client.label_tenant(name, parse_labels(labels))
    emit(tenant, json, lambda t: show_tenants([t]))
