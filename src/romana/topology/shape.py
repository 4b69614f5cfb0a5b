"""Checks of a raw JSON document's shape (objects, lists, strings), reported as problems
with their JSON path and a hint; the topology validator builds on them."""

from __future__ import annotations

import difflib
from typing import Any

from romana import names
from romana.errors import ProblemList


def _fields(model: type) -> list[str]:
    return list(model.model_fields)  # type: ignore[attr-defined]


def describe(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    for kind, name in kinds.items():
        if isinstance(value, kind):
            return name
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


class ShapeChecker:
    def __init__(self) -> None:
        self.problems = ProblemList()

    def check_object(self, value: Any, path: str, model: type) -> bool:
        if not isinstance(value, dict):
            self.problems.error(path, f"expected an object, got {describe(value)}")
            return False
        allowed = _fields(model)
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f'did you mean "{close[0]}"?' if close else f"allowed: {', '.join(allowed)}"
                shown = key if names.LABEL_VALUE.problem(key) is None else names.show(str(key))
                where = f"{path}.{shown}" if path else shown
                self.problems.error(where, f'unknown field "{shown}"', hint)
        return True

    def required_list(self, obj: dict[str, Any], key: str, path: str, what: str) -> list[Any]:
        if key not in obj or obj[key] is None:
            self.problems.error(
                f"{path}.{key}" if path else key,
                "required field missing",
                f"give a non-empty list of {what}",
            )
            return []
        value = obj[key]
        where = f"{path}.{key}" if path else key
        if not isinstance(value, list):
            self.problems.error(where, f"expected a list of {what}, got {describe(value)}")
            return []
        if not value:
            self.problems.error(where, "must not be empty", f"give at least one of {what}")
        return value

    def required_string(self, obj: dict[str, Any], key: str, path: str) -> str | None:
        where = f"{path}.{key}"
        if key not in obj or obj[key] is None:
            self.problems.error(where, "required field missing")
            return None
        value = obj[key]
        if not isinstance(value, str):
            self.problems.error(where, f"expected a string, got {describe(value)}")
            return None
        if not value.strip():
            self.problems.error(where, "must not be empty")
            return None
        return value
