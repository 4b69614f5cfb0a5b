"""The agent's own nftables table (``inet romana``): loaded whole, chain by chain (a policy
changed), or by set updates (members changed), always in one ``nft -f`` transaction,
never touching any other table. Anything but a whole load that nft refuses is retried
as a whole load (the kernel may not hold what we think).

If the kernel refuses a whole load, each policy is checked alone (``nft -c``) to find the
ones this host cannot take; :class:`romana.agent.policy.PolicyEnforcer` then loads the rest
with those policies allowing nothing (fail closed) and reports them.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

from romana.errors import PolicyError
from romana.policy.compile import FAMILY, TABLE, Ruleset
from romana.policy.nft import render_changes, render_full, render_update


@dataclass(frozen=True, slots=True)
class Loaded:
    kind: str  # "full", "chains" (some chains replaced), "update" (elements), "none"
    seconds: float
    bytes: int


class NftTable:
    def __init__(self, nft: str = "nft", timeout: float = 60.0) -> None:
        self.nft = nft
        self.timeout = timeout
        self.loaded: Ruleset | None = None  # what the kernel holds, once we loaded it

    def load(self, ruleset: Ruleset) -> Loaded:
        """Make the kernel hold ``ruleset``; raises PolicyError if nft refuses (the table
        then still holds what it held)."""
        script, kind = None, "update"
        if self.loaded is not None:
            script = render_update(self.loaded, ruleset)
            if script is None:  # chains changed: those chains, not the whole table
                script, kind = render_changes(self.loaded, ruleset), "chains"
        if script is None:
            script, kind = render_full(ruleset), "full"
        elif not script:
            return Loaded("none", 0.0, 0)
        started = time.perf_counter()
        try:
            self._run(script)
        except PolicyError:
            if kind != "full":  # the kernel may differ from what we think: load whole
                self.loaded = None
                return self.load(ruleset)
            raise
        self.loaded = ruleset
        return Loaded(kind, time.perf_counter() - started, len(script))

    def accepts(self, script: str) -> str | None:
        """None if nft would load ``script`` (``-c``), else what it said."""
        try:
            self._run(script, check=True)
        except PolicyError as exc:
            return exc.message
        return None

    def remove(self) -> bool:
        """Delete the table (``--cleanup``); False if there was none."""
        try:
            self._run(f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n")
        except PolicyError:
            return False
        self.loaded = None
        return True

    def _run(self, script: str, check: bool = False) -> None:
        argv = [self.nft, *(["-c"] if check else []), "-f", "-"]
        try:
            done = subprocess.run(
                argv, input=script.encode(), capture_output=True, timeout=self.timeout
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PolicyError(f"cannot run {self.nft}: {exc}") from None
        if done.returncode != 0:
            said = done.stderr.decode(errors="replace").strip()
            raise PolicyError(f"nft refused the ruleset: {said[:2000]}")


__all__ = ["Loaded", "NftTable"]
