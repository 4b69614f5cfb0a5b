"""The package rules (docs/architecture.md), checked on the source with ``ast``.

The folders show the data flow: topology -> ipam -> routes -> api (romanad) -> the
consumers. A package may import its own modules and the layers below it, never a layer
above, nor a package beside it in its layer (except in the foundation); no two packages
import each other; and inside a package, no two modules do. Every import counts: at module
level, inside a function, and under ``TYPE_CHECKING`` (a reader follows all three).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROMANA = SRC / "romana"

# Bottom to top. The root package (``romana``, its __init__) and the loose modules beside
# the packages form the foundation, which every package may use.
FOUNDATION = frozenset(
    {
        "romana",
        "errors",
        "wire",
        "names",
        "backoff",
        "supervise",
        "serving",
        "logflood",
        "connections",
        "feed",
        "buildinfo",
        "responses",
        "netlink",
    }
)
LAYERS: list[frozenset[str]] = [
    FOUNDATION,
    frozenset({"topology", "store", "policy"}),
    frozenset({"ipam"}),
    frozenset({"routes"}),
    frozenset({"api"}),
    frozenset({"kube", "cni", "publisher"}),
    frozenset({"agent"}),
    frozenset({"cli"}),
]

# Module cycles inside a package that are deliberate, with the reason.
ALLOWED_MODULE_CYCLES = {
    frozenset({"romana.ipam.blocks", "romana.ipam.groups"}): (
        "typing only: a Block points back at its tree and leaf, a GroupNode holds its Blocks"
    ),
}


@dataclass(frozen=True)
class Edge:
    source: str  # module
    target: str  # module
    where: str  # path:line of the import


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    found = {module_name(p): p for p in sorted(ROMANA.rglob("*.py"))}
    assert "romana.ipam.engine" in found, f"no romana sources under {ROMANA}"
    return found


def package_of(module: str) -> str:
    """The top-level name under ``romana`` a module belongs to (``romana`` for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def is_package(module: str) -> bool:
    return modules()[module].name == "__init__.py"


def known(dotted: str) -> str | None:
    """The longest prefix of ``dotted`` that is a romana module."""
    parts = dotted.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules():
            return name
        parts.pop()
    return None


def imported(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The romana modules one import statement of ``module`` names."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] == "romana" and (target := known(alias.name)):
                yield target
        return
    base = node.module or ""
    if node.level:
        package = module if is_package(module) else module.rpartition(".")[0]
        anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    if base.split(".")[0] != "romana":
        return
    for alias in node.names:
        # ``from package import submodule`` imports the submodule; a name is the package's.
        submodule = f"{base}.{alias.name}"
        target = submodule if submodule in modules() else known(base)
        if target is not None:
            yield target


@cache
def edges() -> list[Edge]:
    found = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                where = f"{path.relative_to(SRC.parent)}:{node.lineno}"
                found += [Edge(module, t, where) for t in imported(module, node) if t != module]
    return found


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected parts of ``graph`` with more than one node."""
    reach: dict[str, set[str]] = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    parts: list[set[str]] = []
    for node in sorted(graph):
        if any(node in part for part in parts):
            continue
        part = {node} | {other for other in reach[node] if node in reach.get(other, ())}
        if len(part) > 1:
            parts.append(part)
    return parts


def package_edges() -> dict[tuple[str, str], str]:
    """(importer, imported) package -> where, for imports between two packages."""
    found: dict[tuple[str, str], str] = {}
    for edge in edges():
        pair = (package_of(edge.source), package_of(edge.target))
        if pair[0] != pair[1]:
            found.setdefault(pair, edge.where)
    return found


def layer_of(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def test_every_package_has_a_layer() -> None:
    packages = {package_of(m) for m in modules()}
    declared = set().union(*LAYERS)
    assert packages - declared == set(), "place new packages in LAYERS"
    assert len(declared) == sum(len(layer) for layer in LAYERS), "a package in two layers"


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    found = package_edges()
    for source, target in found:
        graph.setdefault(source, set()).add(target)
    evidence = [
        f"{a} -> {b} ({found[a, b]})"
        for part in cycles(graph)
        for a, b in sorted(found)
        if a in part and b in part
    ]
    assert not evidence, "packages in a cycle:\n" + "\n".join(evidence)


def test_packages_import_only_downward() -> None:
    wrong = []
    for (source, target), where in sorted(package_edges().items()):
        below = layer_of(target) < layer_of(source)
        beside_in_foundation = source in FOUNDATION and target in FOUNDATION
        if not (below or beside_in_foundation):
            wrong.append(f"{source} -> {target} ({where})")
    assert not wrong, "imports up or sideways:\n" + "\n".join(wrong)


def test_no_cycle_between_modules_of_a_package() -> None:
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for edge in edges():
        if package_of(edge.source) == package_of(edge.target):
            graph.setdefault(edge.source, set()).add(edge.target)
            where.setdefault((edge.source, edge.target), edge.where)
    evidence = [
        f"{a} -> {b} ({where[a, b]})"
        for part in cycles(graph)
        if frozenset(part) not in ALLOWED_MODULE_CYCLES
        for a, b in sorted(where)
        if a in part and b in part
    ]
    assert not evidence, "modules in a cycle:\n" + "\n".join(evidence)


def test_the_cni_shim_imports_nothing_of_the_project() -> None:
    """The shim is the plugin's reference and runs as a lone file (``python -IS shim.py``):
    a romana import in it, even inside a function, fails there. The console scripts'
    dispatch (install, --version) is ``romana.cni.cli``'s."""
    found = [e.where for e in edges() if e.source == "romana.cni.shim"]
    assert not found, "the shim imports romana at " + ", ".join(found)


def test_the_checker_sees_every_kind_of_import() -> None:
    """Function-level, TYPE_CHECKING and relative imports are edges, resolved to modules;
    a name taken from a package is an edge to its __init__, a submodule to the submodule."""
    found = {(e.source, e.target) for e in edges()}
    # romana/__init__ imports its errors eagerly; the ipam package names its engine for
    # typing only; the agent's daemon imports most of its parts inside functions.
    assert ("romana", "romana.errors") in found
    assert ("romana.ipam", "romana.ipam.engine") in found
    assert any(s == "romana.agent.daemon" and t.startswith("romana.agent.") for s, t in found)

    def targets(module: str, source: str) -> list[str]:
        nodes = ast.parse(source).body
        return [t for n in nodes if isinstance(n, ast.ImportFrom) for t in imported(module, n)]

    relative = "from . import views\nfrom ..errors import Conflict\n"
    assert targets("romana.ipam.engine", relative) == ["romana.ipam.views", "romana.errors"]
    through_package = "from romana.topology import read_file, routing_modes\n"
    assert targets("romana.topology.validate", through_package) == [
        "romana.topology",
        "romana.topology.routing_modes",
    ]
    assert cycles({"a": {"b"}, "b": {"a", "c"}, "c": set()}) == [{"a", "b"}]


def test_the_one_client_loads_neither_fastapi_nor_the_engine() -> None:
    """``romana.api.client`` serves the CLI, agent, publisher and listener: importing it
    must not pull in the server (fastapi) or romanad's state (romana.ipam)."""
    probe = (
        "import json, sys, romana.api.client\n"
        "heavy = ('fastapi', 'romana.ipam')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(heavy))\n"
        "print(json.dumps([romana.api.client.__file__, loaded]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    where, loaded = json.loads(done.stdout)
    assert Path(where).is_relative_to(SRC), where  # the sources checked above
    assert loaded == []
