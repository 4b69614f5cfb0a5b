"""The agent's surroundings, scripted: romanad as the agent sees it (answers, outages,
another store, a rewound revision), its kernel routing table and its nftables policy table
in memory, each refusing on demand (the real tables are tested in namespaces)."""

from __future__ import annotations

import asyncio
import copy
import errno
from collections.abc import Sequence
from typing import Any

from romana.agent.nftables import Loaded
from romana.agent.reconcile import KernelRoute, RouteDiff
from romana.agent.route_table import ApplyResult, RouteFailure
from romana.errors import PolicyError, Unreachable
from romana.policy.compile import Ruleset
from romana.policy.nft import render_update


class FakeUpstream:
    """The agent's romanad, scripted. ``routes`` is the host's route set (wire form), each
    ``watch`` pops the next scripted answer (an answer dict, or an exception to raise), and
    with none left waits like a quiet long poll."""

    def __init__(self, store_id: str = "store-a") -> None:
        self.url = "fake://romanad"
        self.store_id = store_id
        self.revision = 1
        self.route_list: list[dict[str, Any]] = []
        self.network_list: list[dict[str, Any]] = [{"name": "pods", "cidr": "10.1.0.0/16"}]
        self.script: list[Any] = []
        self.down = False
        self.calls: list[str] = []
        self.policy_document: dict[str, Any] = {"endpoints": [], "policies": []}

    async def close(self) -> None:
        pass

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.down:
            raise Unreachable("fake romanad is down")

    async def routes(self, host: str | None = None, group: str | None = None) -> dict[str, Any]:
        self._check("routes")
        return {
            "vantage": f"host:{host}",
            "default": "group:rack",
            "revision": self.revision,
            "store_id": self.store_id,
            "routes": copy.deepcopy(self.route_list),
        }

    async def networks(self) -> list[dict[str, Any]]:
        self._check("networks")
        return copy.deepcopy(self.network_list)

    async def policy_state(self) -> dict[str, Any]:
        self._check("policy_state")
        document = copy.deepcopy(self.policy_document)
        return {"revision": self.revision, "store_id": self.store_id, **document}

    async def watch(
        self, since: int = 0, timeout: float = 30.0, limit: int = 1000
    ) -> dict[str, Any]:
        self._check("watch")
        if not self.script:
            await asyncio.sleep(min(timeout, 0.05))
            return {"revision": max(since, self.revision), "store_id": self.store_id, "changes": []}
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return dict(step)


class FakeRouteTable:
    """The agent's routing table in memory; ``refuse(n)`` fails the next n ``apply`` calls
    as the kernel would (OSError), and ``routes`` is what the table holds."""

    def __init__(self) -> None:
        self.routes: dict[str, KernelRoute] = {}
        self.rules: tuple[str, ...] = ()
        self._refusals = 0
        self.applied = 0

    def refuse(self, times: int = 1) -> None:
        self._refusals += times

    def ensure_rules(self, networks: Sequence[str], priority: int = 1000) -> None:
        self.rules = tuple(networks)

    def dump(self) -> dict[str, KernelRoute]:
        return dict(self.routes)

    def apply(self, diff: RouteDiff) -> ApplyResult:
        if self._refusals:
            self._refusals -= 1
            raise OSError(errno.EIO, "injected: the kernel refused")
        self.applied += 1
        for route in diff.delete:
            self.routes.pop(route.prefix, None)
        for route in (*diff.replace, *diff.add):
            self.routes[route.prefix] = route
        failures: tuple[RouteFailure, ...] = ()
        return ApplyResult(len(diff.add), len(diff.replace), len(diff.delete), failures)

    def close(self) -> None:
        pass


class FakeNftTable:
    """The policy table in memory: ``loaded`` is what the kernel would hold; ``refuse(n)``
    makes the next n loads fail as nft would (the table keeps what it had)."""

    def __init__(self) -> None:
        self.loaded: Ruleset | None = None
        self.refusals = 0
        self.own_pids: set[int] = set()
        self.problem: str | None = None  # what ``check`` reports (a test sets it)

    def refuse(self, times: int = 1) -> None:
        self.refusals += times

    def reload(self, ruleset: Ruleset) -> Loaded:
        self.loaded = None
        loaded = self.load(ruleset)  # a refusal leaves the problem in place
        self.problem = None
        return loaded

    def check(self) -> str | None:
        return self.problem

    def load(self, ruleset: Ruleset) -> Loaded:
        if self.refusals:
            self.refusals -= 1
            raise PolicyError("injected: nft refused the ruleset")
        script = None if self.loaded is None else render_update(self.loaded, ruleset)
        kind = "none" if script == "" else ("update" if script else "full")
        self.loaded = ruleset
        return Loaded(kind, 0.0, 0)

    def accepts(self, script: str) -> str | None:
        return None if not self.refusals else "injected: refused"
