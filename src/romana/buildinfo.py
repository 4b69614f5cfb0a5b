"""What this build of Romana is: its version, the Python running it, and a git commit when
the build recorded one. Every process reports it the same way: ``--version``, romanad's
``GET /version`` and the ``romana_build_info`` gauge of every ``/metrics``.

The version is written once, in :data:`romana.__version__` (pyproject.toml reads it from
there). A git commit is only known when the build left one behind, because an installed
package has no ``.git`` to ask (and spawning git at every start would cost each process):

- ``$ROMANA_BUILD_COMMIT``, when set and not empty (e.g. ``ENV ROMANA_BUILD_COMMIT=...``
  in an image's configuration); otherwise
- the first line of ``BUILD_COMMIT`` beside this module in the installed package, which an
  image build writes after installing Romana (see docs/romanad.md, "Versions").

Only the standard library is imported here (prometheus_client on demand): the CLI and the
CNI plugin import this module at every start.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from romana import __version__

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

COMMIT_ENV = "ROMANA_BUILD_COMMIT"
COMMIT_FILE = Path(__file__).with_name("BUILD_COMMIT")
# A commit is a hex name; the cap keeps a stray large file out of every metric label.
_COMMIT_MAX = 64


class BuildInfo(TypedDict):
    version: str
    python: str  # e.g. "3.11.2"
    implementation: str  # e.g. "CPython"
    platform: str  # e.g. "linux/x86_64" (no kernel release: romanad's reads are open)
    commit: str | None  # None: the build recorded none


class RomanadVersion(BuildInfo):
    """``GET /version``: romanad's build, what it stores in, and since when it serves (the
    answer's shape is written here once; romanad builds it and the client reads it)."""

    store: str  # "sqlite", "etcd", ...
    started_at: str  # ISO 8601, UTC
    uptime_seconds: float


def build_commit() -> str | None:
    """The commit the build recorded (see the module's docstring), or None."""
    commit = os.environ.get(COMMIT_ENV, "").strip()
    if not commit:
        try:
            commit = COMMIT_FILE.read_text(errors="replace").partition("\n")[0].strip()
        except OSError:  # no file: a build that recorded nothing (a checkout, a plain wheel)
            return None
    return commit[:_COMMIT_MAX] or None


def build_info() -> BuildInfo:
    return {
        "version": __version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": f"{platform.system().lower()}/{platform.machine()}",
        "commit": build_commit(),
    }


def version_line(program: str) -> str:
    """One line for ``--version``: ``romanad 0.1.0 (Python 3.11.2)``, plus the commit
    when the build recorded one."""
    info = build_info()
    extra = f", commit {info['commit']}" if info["commit"] else ""
    return f"{program} {info['version']} (Python {info['python']}{extra})"


class _PrintVersion(argparse.Action):
    """``--version`` for argparse: print and exit 0 before any other argument is checked.
    (argparse's own ``action="version"`` re-wraps the text to the terminal's width.)"""

    def __init__(self, option_strings: list[str], dest: str, program: str) -> None:
        super().__init__(
            option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version"
        )
        self.program = program

    def __call__(self, parser: argparse.ArgumentParser, *_: object, **__: object) -> None:
        sys.stdout.write(version_line(self.program) + "\n")
        parser.exit(0)


def add_version_option(parser: argparse.ArgumentParser) -> None:
    """Give an argparse command ``--version``, naming it by the parser's ``prog``."""
    parser.add_argument("--version", action=_PrintVersion, program=parser.prog)


def register_build_info(registry: CollectorRegistry) -> None:
    """``romana_build_info{version, python, commit} 1`` in ``registry``: joined with
    another series, it tells which build produced it (and a mixed fleet shows up)."""
    from prometheus_client import Gauge

    info = build_info()
    gauge = Gauge(
        "romana_build_info",
        "The running build: always 1, described by its labels (commit empty when unknown).",
        ["version", "python", "commit"],
        registry=registry,
    )
    gauge.labels(info["version"], info["python"], info["commit"] or "").set(1)
