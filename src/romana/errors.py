"""The one exception hierarchy of Romana, and its wire form.

::

    RomanaError                     code       HTTP  what happened
    ├── InvalidRequest              invalid    422   a request is malformed or impossible
    │   ├── InvalidTopology                          a map failed validation (every problem)
    │   └── TooLarge                too_large  413   a body or document over its limit
    ├── Unauthorized                unauthorized 401 missing or wrong bearer token
    ├── NotFound                    not_found  404   the named object does not exist
    ├── Conflict                    conflict   409   the request clashes with current state
    │   ├── TopologyConflict                         a new map cannot keep what is allocated
    │   └── RevisionConflict                         the log moved on since the writer looked
    ├── Exhausted                   exhausted  409   no free block or address left
    ├── Resync                      resync     410   history compacted: read everything again
    │   └── Compacted                                (the store's own, with revisions)
    ├── Unavailable                 unavailable 503  cannot serve now; retry later
    │   ├── Unreachable             unreachable      romanad (or a peer) did not answer
    │   └── StoreError              store            persistence failed or is unusable
    │       ├── OutcomeUnknown      outcome_unknown  a write went out, no answer came back
    │       ├── StoreLocked         locked           another process holds the data dir
    │       ├── StoreDamaged        damaged          a fact or snapshot cannot be read
    │       └── StoreRewound        rewound          the store is shorter than it was
    ├── FeedRewound                 rewound          a feed went back in time or changed store
    ├── PublishError                publish          BIRD configuration could not be made
    │   ├── TemplateError           template         a template does not render
    │   ├── BirdError               bird             BIRD refused it or cannot be reached
    │   └── RouterError             router           router data is incomplete
    ├── CniError                    cni              a CNI request failed (``cni_code``)
    ├── PolicyError                 policy           nftables refused a policy ruleset
    └── Internal                    internal   500   a bug: logged with its traceback

Every message names the object concerned and, where there is one, the fix. The HTTP status
and CLI exit code are mapped once from the class; callers never parse messages. On the wire
an error is ``{"error": {"code", "message", "details"}}``; :func:`from_wire` turns that back
into the same class for every client (the CLI's, the agent's, the CNI's lean one), so local
and remote errors are handled alike. Only the standard library is imported here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from romana.responses import ProblemJson


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

    def to_json(self) -> ProblemJson:
        return {
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
            "severity": self.severity,
        }


class RomanaError(Exception):
    """Base of all errors Romana raises on purpose."""

    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, details: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)

    def to_json(self) -> dict[str, Any]:
        details = [d.to_json() if isinstance(d, Problem) else d for d in self.details]
        return {"error": {"code": self.wire_code, "message": self.message, "details": details}}

    @property
    def wire_code(self) -> str:
        """The code on the wire (a decoded error keeps the one the server sent)."""
        return getattr(self, "_wire_code", self.code)

    @property
    def status(self) -> int:
        """The HTTP status (a decoded error keeps the one the server answered)."""
        return getattr(self, "_status", self.http_status)


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


class TooLarge(InvalidRequest):
    code = "too_large"
    http_status = 413


class Unauthorized(RomanaError):
    code = "unauthorized"
    http_status = 401

    def __init__(
        self,
        message: str = "missing or wrong bearer token",
        details: Sequence[object] = ("send Authorization: Bearer TOKEN",),
    ) -> None:
        super().__init__(message, details)


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


class Resync(RomanaError):
    """The changes a reader asked for are gone (compacted): it must read everything again."""

    code = "resync"
    http_status = 410


class Unavailable(RomanaError):
    """Cannot serve now (a dependency is down, the daemon is stopping): retry later."""

    code = "unavailable"
    http_status = 503


class Unreachable(Unavailable):
    """romanad (or another peer) did not answer: refused, reset or timed out."""

    code = "unreachable"


class StoreError(Unavailable):
    """Persistence failed or is unusable; the change was not made."""

    code = "store"


class RevisionConflict(StoreError, Conflict):
    """The log moved on since the writer last looked; nothing was written.

    Replicas sharing a store race like this all the time (romanad catches up and plans
    again); otherwise the caller's view is stale: reload, never retry blindly.
    """

    code = "conflict"
    http_status = 409

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(
            f"log head is at revision {actual}, not the expected {expected}; nothing was written",
            ["another writer appended first or this view is stale: reload and retry"],
        )
        self.expected = expected
        self.actual = actual


class OutcomeUnknown(StoreError):
    """A write went out and no answer came back: it may or may not have happened."""

    code = "outcome_unknown"


class Compacted(Resync, StoreError):
    """The facts a reader asked for were compacted away; it must resync from a snapshot.

    ``oldest_available`` is the oldest revision still stored (head + 1 when no fact is), so
    ``read_since(oldest_available - 1)`` is the earliest call that can succeed.
    """

    code = "resync"
    http_status = 410

    def __init__(self, revision: int, oldest_available: int) -> None:
        super().__init__(
            f"facts after revision {revision} were compacted; the oldest kept is revision "
            f"{oldest_available}",
            ["load the latest snapshot and follow the log from its revision"],
        )
        self.revision = revision
        self.oldest_available = oldest_available


class StoreLocked(StoreError):
    """Another process holds the data directory: two daemons must never share one log."""

    code = "locked"


class StoreDamaged(StoreError):
    """A stored fact or snapshot cannot be read back: what, at which revision, what to do."""

    code = "damaged"


class StoreRewound(StoreError):
    """The store holds less than it did (emptied, truncated, replaced): refused at start."""

    code = "rewound"


class FeedRewound(RomanaError):
    """A changes feed went back in time or now comes from another store: not followed."""

    code = "rewound"
    http_status = 409


class PublishError(RomanaError):
    """A BIRD configuration could not be made or installed."""

    code = "publish"


class TemplateError(PublishError):
    """A template that does not load or render (syntax, undefined variable)."""

    code = "template"


class BirdError(PublishError):
    """BIRD refused a configuration, or could not be told; ``stage`` is "validate",
    "write" or "reload", ``retry`` that the configuration is fine but BIRD was not told."""

    code = "bird"

    def __init__(self, stage: str, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.stage = stage
        self.retry = retry


class RouterError(PublishError):
    """Router data is incomplete (no AS number, an unknown group or peer)."""

    code = "router"


class PolicyError(RomanaError):
    """nftables refused a policy ruleset; ``details`` name what it refused."""

    code = "policy"


class CniError(RomanaError):
    """A CNI request failed; ``cni_code`` is the CNI result code the runtime acts on."""

    code = "cni"

    def __init__(self, cni_code: int, msg: str, details: str = "") -> None:
        super().__init__(msg, [details] if details else [])
        self.cni_code = cni_code
        self.msg = msg
        self.cni_details = details

    def __str__(self) -> str:
        return f"[{self.cni_code}] {self.msg}" + (
            f": {self.cni_details}" if self.cni_details else ""
        )


class Internal(RomanaError):
    """An unexpected failure (a bug); the log holds the traceback under ``request_id``."""

    code = "internal"
    http_status = 500


# -- the wire form --------------------------------------------------------------------
# Decoding picks the most specific class registered for a code: every class above whose
# code is its own (subclasses sharing a parent's code decode as the parent).
_BY_CODE: dict[str, type[RomanaError]] = {}
for _cls in (
    InvalidRequest,
    TooLarge,
    Unauthorized,
    NotFound,
    Conflict,
    Exhausted,
    Resync,
    Unavailable,
    Unreachable,
    StoreError,
    OutcomeUnknown,
    StoreLocked,
    StoreDamaged,
    StoreRewound,
    PublishError,
    TemplateError,
    BirdError,
    RouterError,
    PolicyError,
    Internal,
):
    _BY_CODE.setdefault(_cls.code, _cls)


def from_wire(
    status: int, body: bytes | str | dict[str, Any] | None, what: str = ""
) -> RomanaError:
    """The error a server reported, from its HTTP status and body, as a RomanaError.

    ``what`` names the request (``"POST /address at unix:/run/romanad.sock"``) for bodies
    that are not romanad's error shape (a proxy page, another server).
    """
    data: Any = body
    if isinstance(body, bytes | str):
        try:
            data = json.loads(body)
        except ValueError:
            data = None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        text = (
            " ".join(body.split())[:200]
            if isinstance(body, str)
            else (
                " ".join(body.decode("utf-8", "replace").split())[:200]
                if isinstance(body, bytes)
                else ""
            )
        )
        exc: RomanaError = (Resync if status == 410 else RomanaError)(
            f"HTTP {status} from {what or 'romanad'}" + (f": {text}" if text else "")
        )
        exc._status = status  # type: ignore[attr-defined]
        return exc
    code = str(error.get("code", "error"))
    details = [_problem(d) for d in error.get("details") or []]
    problems = [d for d in details if isinstance(d, Problem)]
    if code == InvalidRequest.code and problems and error["message"].startswith("invalid topology"):
        exc = InvalidTopology(problems)
    else:
        cls = _BY_CODE.get(code, Resync if status == 410 else RomanaError)
        exc = RomanaError.__new__(cls)
        RomanaError.__init__(exc, error["message"], details)
    exc._wire_code = code  # type: ignore[attr-defined]
    exc._status = status  # type: ignore[attr-defined]
    return exc


def _problem(detail: object) -> object:
    """Problem-shaped details (validation findings) become Problems so they print as text."""
    if isinstance(detail, dict) and isinstance(detail.get("message"), str):
        return Problem(
            str(detail.get("path", "")),
            detail["message"],
            str(detail.get("hint", "")),
            str(detail.get("severity", "error")),
        )
    return detail


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
