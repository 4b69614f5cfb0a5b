"""The agent's own nftables table (``inet romana``): loaded whole, chain by chain (a policy
changed), or by set updates (members changed), always in one ``nft -f`` transaction,
never touching any other table. Anything but a whole load that nft refuses is retried
as a whole load (the kernel may not hold what we think).

If the kernel refuses a whole load, each policy is checked alone (``nft -c``) to find the
ones this host cannot take; :class:`romana.agent.policy.PolicyEnforcer` then loads the rest
with those policies allowing nothing (fail closed) and reports them.

What the kernel holds is never taken on trust: :meth:`NftTable.check` lists the table and
compares it with what was loaded last, and the pids of the agent's own ``nft`` processes
are kept so that the kernel's change notifications (:mod:`romana.agent.nftevents`) can
tell the agent's transactions from anyone else's.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import deque
from dataclasses import dataclass

from romana.errors import PolicyError
from romana.policy.compile import FAMILY, TABLE, Ruleset
from romana.policy.nft import (
    base_rules,
    render_changes,
    render_full,
    render_update,
)


@dataclass(frozen=True, slots=True)
class Loaded:
    kind: str  # "full", "chains" (some chains replaced), "update" (elements), "none"
    seconds: float
    bytes: int


class NftTable:
    def __init__(
        self, nft: str = "nft", timeout: float = 60.0, pod_interfaces: str | None = None
    ) -> None:
        self.nft = nft
        self.timeout = timeout
        self.pod_interfaces = pod_interfaces  # anti-spoofing on these interfaces (rmn*)
        self.loaded: Ruleset | None = None  # what the kernel holds, once we loaded it
        self.own_pids: deque[int] = deque(maxlen=256)  # our nft processes, newest last

    def load(self, ruleset: Ruleset) -> Loaded:
        """Make the kernel hold ``ruleset``; raises PolicyError if nft refuses (the table
        then still holds what it held)."""
        script, kind = None, "update"
        if self.loaded is not None:
            script = render_update(self.loaded, ruleset)
            if script is None:  # chains changed: those chains, not the whole table
                script, kind = render_changes(self.loaded, ruleset), "chains"
        if script is None:
            script, kind = render_full(ruleset, self.pod_interfaces), "full"
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

    def reload(self, ruleset: Ruleset) -> Loaded:
        """Load ``ruleset`` whole, whatever the kernel holds now (a repair)."""
        self.loaded = None
        return self.load(ruleset)

    def check(self) -> str | None:
        """None if the kernel holds the table as it was loaded last (its chains with as
        many rules, its sets and maps with as many elements), else the first differences.
        Nothing loaded yet: None."""
        expected = self.loaded
        if expected is None:
            return None
        listing = self._listing()
        if listing is None:
            return f"table {FAMILY} {TABLE} is missing"
        want = {f"chain {name}": len(rules) for name, rules in expected.chains.items()}
        want |= {f"chain {name}": n for name, n in base_rules(self.pod_interfaces).items()}
        want |= {f"set {name}": len(s.elements) for name, s in expected.sets.items()}
        differences = [
            f"{what}: {'missing' if have is None else have} instead of {count}"
            for what, count in sorted(want.items())
            if (have := listing.get(what)) != count
        ]
        differences += [f"{what}: not ours" for what in sorted(listing.keys() - want.keys())]
        return "; ".join(differences[:5]) or None

    def _listing(self) -> dict[str, int] | None:
        """Rules per chain and elements per set or map, as the kernel lists them."""
        argv = [self.nft, "-j", "list", "table", FAMILY, TABLE]
        try:
            done = self._spawn(argv, b"")
        except OSError as exc:
            raise PolicyError(f"cannot run {self.nft}: {exc}") from None
        if done.returncode != 0:
            return None  # "No such file or directory": no table
        found: dict[str, int] = {}
        for item in json.loads(done.stdout)["nftables"]:
            if "chain" in item:
                found.setdefault(f"chain {item['chain']['name']}", 0)
            elif "rule" in item:
                key = f"chain {item['rule']['chain']}"
                found[key] = found.get(key, 0) + 1
            for kind in ("set", "map"):
                if kind in item:
                    found[f"set {item[kind]['name']}"] = len(item[kind].get("elem", ()))
        return found

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
            done = self._spawn(argv, script.encode())
        except OSError as exc:
            raise PolicyError(f"cannot run {self.nft}: {exc}") from None
        if done.returncode != 0:
            said = done.stderr.decode(errors="replace").strip()
            raise PolicyError(f"nft refused the ruleset: {said[:2000]}")

    def _spawn(self, argv: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
        """Run nft, its pid noted before it can change anything; OSError if it cannot
        run or does not finish in time."""
        with subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as proc:
            self.own_pids.append(proc.pid)
            try:
                out, err = proc.communicate(stdin, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise OSError(f"timed out after {self.timeout} seconds") from None
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


__all__ = ["Loaded", "NftTable"]
