"""Update a compiled ruleset for changed endpoints without compiling it again.

Pod churn (a pod added, released or relabelled, a namespace relabelled) moves endpoints in
and out of sets and verdict maps; it changes no rule as long as every policy keeps a local
target and no new combination of policies appears. :func:`update_members` finds the new
members of exactly the sets the ruleset has, and answers None whenever the result would
not equal what :func:`romana.policy.compile.compile_host` gives (then the caller compiles
in full); the tests check that equality.
"""

from __future__ import annotations

from dataclasses import replace

from romana.policy.compile import DIRECTIONS, Ruleset, named_elements, verdict_chain
from romana.policy.inputs import Changed, PolicyInputs, Selection
from romana.policy.model import Endpoint, Endpoints

MAPS = tuple(name for _, _, name in DIRECTIONS)


def update_members(
    previous: Ruleset,
    inputs: PolicyInputs,
    host: str,
    changed: Changed,
    broken: frozenset[str] = frozenset(),
) -> Ruleset | None:
    """``previous`` with the endpoints in ``changed`` re-placed; None: compile in full
    (also when a policy would now exceed the size budget: the compile refuses it)."""
    if changed.structural or broken != previous.broken:
        return None
    index = inputs.index()
    names = set(changed.endpoints)
    for tenant in changed.tenants:
        names |= {ep.name for ep in index.by_tenant().get(tenant, ())}
    update = _Update(previous)
    for name in names:  # out of everything first: an IP may pass to another endpoint
        update.remove(name)
    for name in names:
        ep = inputs.endpoints.get(name)
        if ep is not None and not update.place(ep, inputs, index, host):
            return None
    return update.result()


class _Update:
    def __init__(self, previous: Ruleset) -> None:
        self.previous = previous
        self.sets: dict[str, set[str]] = {}  # copies of the sets touched
        self.ips = dict(previous.ips)
        self.isolated = dict(previous.isolated)

    def _set(self, name: str) -> set[str]:
        found = self.sets.get(name)
        if found is None:
            found = self.sets[name] = set(self.previous.sets[name].elements)
        return found

    def _current(self, name: str) -> set[str] | frozenset[str]:
        return self.sets[name] if name in self.sets else self.previous.sets[name].elements

    def remove(self, name: str) -> None:
        ip = self.ips.pop(name, None)
        self.isolated.pop(name, None)
        if ip is None:
            return
        prefix = f"{ip} "
        for set_name, peer in self.previous.peer_sets.items():
            if isinstance(peer, Endpoints) and ip in self.previous.sets[set_name].elements:
                self._set(set_name).discard(ip)
        for set_name in (*self.previous.named_sets, *MAPS):
            gone = {e for e in self._current(set_name) if e.startswith(prefix)}
            if gone:
                self._set(set_name).difference_update(gone)

    def place(self, ep: Endpoint, inputs: PolicyInputs, index: Selection, host: str) -> bool:
        """Put ``ep`` where it belongs; False if that needs a chain the ruleset lacks."""
        prev = self.previous
        self.ips[ep.name] = ep.ip
        for set_name, peer in prev.peer_sets.items():
            if isinstance(peer, Endpoints) and index.contains(peer, ep, host):
                self._set(set_name).add(ep.ip)
        for set_name, ports in prev.named_sets.items():
            elements = named_elements(ep, ports)
            if elements:
                self._set(set_name).update(elements)
        if ep.host != host:
            return True
        keys = [
            key
            for key in sorted(inputs.policies)
            if any(index.contains(t, ep, host) for t in inputs.policies[key].applied_to)
        ]
        if not keys:
            return True
        if any(key not in prev.policies for key in keys):
            return False  # a policy gets its first target here: new chains
        self.isolated[ep.name] = tuple(keys)
        for direction, field_name, map_name in DIRECTIONS:
            chains = [
                f"{prev.policies[k]}_{direction}"
                for k in keys
                if getattr(inputs.policies[k], field_name) is not None
            ]
            if chains:
                chain = verdict_chain(direction, chains)
                if chain not in prev.chains:
                    return False  # a new combination of policies: a new chain
                self._set(map_name).add(f"{ep.ip} : jump {chain}")
        return True

    def result(self) -> Ruleset | None:
        prev = self.previous
        protecting = {key for keys in self.isolated.values() for key in keys}
        if protecting != set(prev.policies):
            return None  # a policy lost its last target here: its chains go
        used = {e.split(" : jump ", 1)[1] for name in MAPS for e in self._current(name)}
        if used != {c for c in prev.chains if not c.startswith("p_")}:
            return None  # a verdict chain no endpoint uses any more
        sets = dict(prev.sets)
        for name, elements in self.sets.items():
            sets[name] = replace(prev.sets[name], elements=frozenset(elements))
        updated = Ruleset(
            chains=prev.chains,
            sets=sets,
            isolated=self.isolated,
            policies=prev.policies,
            peer_sets=prev.peer_sets,
            named_sets=prev.named_sets,
            ips=self.ips,
            broken=prev.broken,
            oversized=prev.oversized,
            uses=prev.uses,
            budget=prev.budget,
        )
        touched = set(self.sets)
        return None if touched and updated.over_budget(touched) else updated


__all__ = ["update_members"]
