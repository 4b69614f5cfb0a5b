"""Reading topology documents from JSON or YAML text and files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from romana.errors import InvalidTopology, Problem


def parse_text(text: str, source: str = "<input>") -> Any:
    """Parse JSON (tried first, for its precise errors) or YAML into plain data."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidTopology(
                [
                    Problem(
                        "",
                        f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                        f"{exc.msg}",
                    )
                ]
            ) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise InvalidTopology([Problem("", f"{source}: invalid YAML{where}: {exc}")]) from exc


PRESETS = Path(__file__).with_name("presets")


def presets() -> list[str]:
    """Names of the predefined topologies (kubeadm, kops-aws-REGION; docs/kubernetes.md)."""
    return sorted(p.stem for p in PRESETS.glob("*.json"))


def read_file(path: str | Path) -> Any:
    """A topology file, or a predefined topology by name (a name that is no file)."""
    path = Path(path)
    if not path.exists() and str(path) in presets():
        path = PRESETS / f"{path}.json"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        known = ", ".join(presets())
        raise InvalidTopology(
            [Problem("", f"cannot read {path}: {exc.strerror} (predefined: {known})")]
        ) from exc
    return parse_text(text, str(path))
