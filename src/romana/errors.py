"""The one exception hierarchy of Romana.

::

    RomanaError
    ├── InvalidRequest        a request is malformed or names something impossible (HTTP 422)
    │   └── InvalidTopology   a topology map failed validation; carries every problem found
    ├── NotFound              the named object does not exist (HTTP 404)
    ├── Conflict              the request clashes with current state (HTTP 409)
    │   └── TopologyConflict  a new topology cannot keep existing allocations
    └── Exhausted             no free block or address is left where one was needed (HTTP 409)

Every message names the object concerned and, where there is one, the fix. The HTTP status
and CLI exit code are mapped once from ``code``; callers never parse messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of a validation: where (a JSON path), what, and how to fix it."""

    path: str
    message: str
    hint: str = ""
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text += f"; {self.hint}"
        return text if self.severity == "error" else f"warning: {text}"

    def to_json(self) -> dict[str, str]:
        return {
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
            "severity": self.severity,
        }


class RomanaError(Exception):
    """Base of all errors Romana raises on purpose."""

    code = "error"
    http_status = 500

    def __init__(self, message: str, details: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)

    def to_json(self) -> dict[str, object]:
        details = [d.to_json() if isinstance(d, Problem) else d for d in self.details]
        return {"error": {"code": self.code, "message": self.message, "details": details}}


class InvalidRequest(RomanaError):
    code = "invalid"
    http_status = 422


class InvalidTopology(InvalidRequest):
    """Raised with every problem of a topology map at once (``details`` are Problems)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        errors = [p for p in problems if p.severity == "error"]
        lines = "\n".join(f"  {p}" for p in errors)
        super().__init__(f"invalid topology: {len(errors)} problem(s)\n{lines}", problems)
        self.problems = list(problems)


class NotFound(RomanaError):
    code = "not_found"
    http_status = 404


class Conflict(RomanaError):
    code = "conflict"
    http_status = 409


class TopologyConflict(Conflict):
    """A new topology cannot keep what is allocated; ``details`` name each casualty."""


class Exhausted(RomanaError):
    code = "exhausted"
    http_status = 409


@dataclass(slots=True)
class ProblemList:
    """Collects problems while a validator walks a document."""

    items: list[Problem] = field(default_factory=list)

    def error(self, path: str, message: str, hint: str = "") -> None:
        self.items.append(Problem(path, message, hint, "error"))

    def warning(self, path: str, message: str, hint: str = "") -> None:
        self.items.append(Problem(path, message, hint, "warning"))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "error"]
