"""Shared fixtures (example maps and small topology builders), and the test lanes.

Tests are marked by what they need (markers in pyproject.toml, docs/testing.md):
``root``, ``daemons``, ``bird``, ``etcd``, ``kubectl``, ``image``, ``bench``. ``pytest
--check-lane`` (``make check``) runs every test that needs none of them, and must pass
without root and with no skip. Two guards keep the marks honest in every lane: a test that
starts a program its marks do not cover fails, naming the marker to add; and in the check
lane a skip is a failure (a test that skips there needs something it did not declare).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from romana.ipam import Engine

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def racks_topology(
    racks: int = 4, cidr: str = "10.1.0.0/16", block_mask: int = 29, label: str = "rack"
) -> dict[str, Any]:
    return {
        "networks": [{"name": "net", "cidr": cidr, "block_mask": block_mask}],
        "topologies": [
            {
                "networks": ["net"],
                "map": [
                    {"name": f"rack-{r}", "assignment": {label: f"rack-{r}"}, "groups": []}
                    for r in range(1, racks + 1)
                ],
            }
        ],
    }


@pytest.fixture
def example() -> Any:
    def load(name: str) -> dict[str, Any]:
        from romana.topology import read_file

        return read_file(EXAMPLES / name)  # type: ignore[no-any-return]

    return load


@pytest.fixture
def racks() -> Engine:
    """4 racks of 10.1.0.0/16 with /29 blocks; hosts h1..h8, two per rack."""
    engine = Engine()
    engine.apply_topology(racks_topology())
    for i in range(1, 9):
        engine.add_host(f"h{i}", f"192.168.0.{i}", {"rack": f"rack-{(i - 1) // 2 + 1}"})
    return engine


def dump(data: Any) -> str:
    return json.dumps(data, indent=2)


# -- lanes ---------------------------------------------------------------------------------
NEEDS_MARKERS = ("root", "daemons", "bird", "etcd", "kubectl", "image", "bench")
# What starting each program needs. Daemons run until stopped; a run of a daemon's program
# with a flag in ONE_SHOT answers and exits, so it needs only the rest.
NEEDS: dict[str, set[str]] = {
    "romanad": {"daemons"},
    "romana-agent": {"daemons"},
    "romana-publisher": {"daemons"},
    "romana-listener": {"daemons"},
    "etcd": {"daemons", "etcd"},
    "etcdctl": {"etcd"},
    "bird": {"daemons", "bird"},
    "birdc": {"bird"},
    "kubectl": {"kubectl"},
    "containerd": {"daemons", "root"},
    "podman": {"daemons", "root"},
    "ctr": {"root"},
    "runc": {"root"},
    "nft": {"root"},
    "sysctl": {"root"},
    "conntrack": {"root"},
    "mount": {"root"},
    "unshare": {"root"},
    "chroot": {"root"},
    "setpriv": {"root"},
}
ONE_SHOT = {"--version", "--help", "--once", "--cleanup", "-p"}  # bird -p only parses
# `ip` needs root to enter a namespace or change anything; showing needs nothing.
IP_NEEDS_ROOT = {"netns", "-n", "add", "del", "delete", "set", "replace", "flush", "change"}
DAEMON_ONLY = {"daemons"}
BENCHMARKS = ROOT / "benchmarks"
_ORIGINAL_POPEN = subprocess.Popen
_running: list[pytest.Item] = []  # the test being set up or run
# (program, markers missing) -> what to tell, once per test and phase
_spawned_unmarked = pytest.StashKey[dict[tuple[str, tuple[str, ...]], str]]()
_check_lane = False


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--check-lane",
        action="store_true",
        help="only tests marked with none of " + ", ".join(NEEDS_MARKERS) + "; a skip fails",
    )


def pytest_configure(config: pytest.Config) -> None:
    global _check_lane
    _check_lane = bool(config.getoption("check_lane"))
    subprocess.Popen = _GuardedPopen  # type: ignore[misc]


def pytest_unconfigure(config: pytest.Config) -> None:
    subprocess.Popen = _ORIGINAL_POPEN  # type: ignore[misc]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _check_lane:
        return
    needing = [i for i in items if any(i.get_closest_marker(m) for m in NEEDS_MARKERS)]
    if needing:
        config.hook.pytest_deselected(items=needing)
        left_out = set(needing)
        items[:] = [i for i in items if i not in left_out]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _on_behalf_of(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _on_behalf_of(item):
        return (yield)


@contextlib.contextmanager
def _on_behalf_of(item: pytest.Item) -> Iterator[None]:
    """What starts now starts for ``item`` (its fixtures included). Not at teardown: a
    module's fixtures are torn down after its last test, which did not ask for them, and
    cleaning up needs what setting up needed, which was checked then."""
    _running.append(item)
    try:
        yield
    finally:
        _running.pop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[pytest.TestReport]:
    report: pytest.TestReport = yield
    unmarked = item.stash.get(_spawned_unmarked, {})
    if unmarked and report.when in ("setup", "call"):
        # The process was started all the same (failing at its start could skip the
        # cleanup that follows, and leak it); the test fails now, saying what to mark.
        story = "\n".join(unmarked.values())
        if report.failed:
            story += f"\n\n{report.longrepr}"
        report.outcome, report.longrepr = "failed", story
        unmarked.clear()
    if _check_lane and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"skipped in the check lane ({reason}): a test the check lane runs needs nothing "
            f"but the virtualenv; mark it with what it needs ({', '.join(NEEDS_MARKERS)})"
        )
    return report


@pytest.hookimpl(tryfirst=True)  # before the terminal counts it as a skip
def pytest_collectreport(report: pytest.CollectReport) -> None:
    if _check_lane and report.skipped:  # a whole module skipped (pytest.skip at import)
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in the check lane ({reason}): mark the module"


def programs(argv: Sequence[str]) -> Iterator[tuple[str, Sequence[str]]]:
    """Each program ``argv`` runs and its arguments: the command itself, and what an
    ``ip netns exec NS`` runs; a Python script by its path."""
    if not argv:
        return
    name = os.path.basename(argv[0])
    if name.startswith("python") and len(argv) > 1 and argv[1].endswith(".py"):
        yield argv[1], argv[2:]
        return
    yield name, argv[1:]
    if name == "ip" and list(argv[1:3]) == ["netns", "exec"]:
        yield from programs(argv[4:])


def needs_of(argv: Sequence[str]) -> dict[str, set[str]]:
    """program -> the markers starting it needs."""
    found: dict[str, set[str]] = {}
    for program, args in programs(argv):
        if Path(program).parent == BENCHMARKS:
            found[program] = {"bench"}
        elif program == "ip" and IP_NEEDS_ROOT & set(args):
            found[program] = {"root"}
        elif program in NEEDS:
            one_shot = any(a in ONE_SHOT for a in args)
            found[program] = NEEDS[program] - DAEMON_ONLY if one_shot else NEEDS[program]
    return found


class _GuardedPopen(_ORIGINAL_POPEN):  # type: ignore[type-arg]
    """subprocess.Popen (and so run, check_output, asyncio's subprocesses) that notes,
    against the test being set up or run, a program its marks do not cover."""

    def __init__(self, args: Any, *rest: Any, **kw: Any) -> None:
        if _running:
            _check_marked(_running[-1], args)
        super().__init__(args, *rest, **kw)


def _check_marked(item: pytest.Item, args: Any) -> None:
    if isinstance(args, str | bytes | os.PathLike):
        argv = shlex.split(os.fsdecode(args))  # a shell command, or a program alone
    else:
        argv = [os.fsdecode(a) for a in args]
    marked = {m.name for m in item.iter_markers()}
    for program, needs in needs_of(argv).items():
        missing = tuple(sorted(needs - marked))
        if missing:
            item.stash.setdefault(_spawned_unmarked, {}).setdefault(
                (program, missing),
                f"{item.nodeid} starts {program} ({shlex.join(argv)[:200]}) but is not marked "
                + " and ".join(f"@pytest.mark.{m}" for m in missing)
                + ": add the mark (pytestmark = ... for the module), see docs/testing.md",
            )
