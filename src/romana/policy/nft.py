"""nftables text of a :class:`romana.policy.compile.Ruleset`: the whole table, or only the
set elements that changed since the last load.

A whole load is ``table inet romana {}`` + ``delete table inet romana`` + the table, one
``nft -f`` transaction: atomic (the old rules stay until the new ones are in) and
idempotent whether the table existed or not. An update adds and deletes elements only
(a map element whose verdict changed is deleted and added in the same transaction).

Besides the policies, the whole table carries the anti-spoofing check: a packet that comes
in on a pod's interface must carry a source address whose route leads back out of that
same interface (``fib saddr . iif``: the pod's own /32, which the CNI routes to its veth),
or it is dropped before conntrack sees it, whatever the host's ``rp_filter`` says. Without
it a pod with CAP_NET_RAW could send as an allowed pod's IP and pass ingress policies.
"""

from __future__ import annotations

from romana.policy.compile import FAMILY, TABLE, NftSet, Ruleset

# Egress runs first: the source's egress, then the destination's ingress (both on the
# forward hook: an accept in one base chain ends only that chain).
BASE_CHAINS = {
    "egress": ("filter - 1", "ip saddr vmap @egress_of"),
    "ingress": ("filter", "ip daddr vmap @ingress_of"),
}
CHUNK = 2000  # elements per statement: keeps each line of the script bounded
ANTISPOOF_CHAIN = "antispoof"


def base_rules(pod_interfaces: str | None = None) -> dict[str, int]:
    """The base chains :func:`render_full` writes, with how many rules each holds."""
    counts = dict.fromkeys(BASE_CHAINS, 2)  # ct state established,related; the dispatch
    if pod_interfaces is not None:
        counts[ANTISPOOF_CHAIN] = 1
    return counts


def render_full(ruleset: Ruleset, pod_interfaces: str | None = None) -> str:
    """The whole table; ``pod_interfaces`` (an interface name pattern such as ``rmn*``)
    turns on the anti-spoofing check for packets from those interfaces."""
    lines = [f"table {FAMILY} {TABLE} {{}}", f"delete table {FAMILY} {TABLE}"]
    lines.append(f"table {FAMILY} {TABLE} {{")
    # Declaration order: sets used by rules, the rules' chains, then the maps that jump
    # to them, then the hooks that read the maps.
    plain = [s for s in ruleset.sets.values() if not s.is_map]
    maps = [s for s in ruleset.sets.values() if s.is_map]
    for s in sorted(plain, key=lambda s: s.name):
        lines += _declare(s)
    policy_chains = sorted(c for c in ruleset.chains if c.startswith("p_"))
    verdict_chains = sorted(c for c in ruleset.chains if not c.startswith("p_"))
    for name in policy_chains + verdict_chains:
        lines.append(f"  chain {name} {{")
        lines += [f"    {rule}" for rule in ruleset.chains[name]]
        lines.append("  }")
    for s in sorted(maps, key=lambda s: s.name):
        lines += _declare(s)
    for name, (priority, dispatch) in BASE_CHAINS.items():
        lines += [
            f"  chain {name} {{",
            f"    type filter hook forward priority {priority}; policy accept;",
            "    ct state established,related accept",
            f"    {dispatch}",
            "  }",
        ]
    if pod_interfaces is not None:
        # Priority raw: before conntrack, so a spoofed packet never makes an entry.
        lines += [
            f"  chain {ANTISPOOF_CHAIN} {{",
            "    type filter hook prerouting priority raw; policy accept;",
            f'    meta nfproto ipv4 iifname "{pod_interfaces}" fib saddr . iif oif missing drop',
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_update(old: Ruleset, new: Ruleset) -> str | None:
    """Element changes turning ``old`` into ``new``; "" if none; None if the chains or
    the sets' types differ (a whole load is needed)."""
    if old.shape() != new.shape():
        return None
    lines: list[str] = []
    for name, s in sorted(new.sets.items()):
        before = old.sets[name].elements
        removed, added = before - s.elements, s.elements - before
        if s.is_map:
            keys = sorted({s.key(e) for e in removed})
            lines += _elements("delete", name, keys)
        else:
            lines += _elements("delete", name, sorted(removed))
        lines += _elements("add", name, sorted(added))
    return "\n".join(lines) + "\n" if lines else ""


def render_changes(old: Ruleset, new: Ruleset) -> str | None:
    """One transaction turning ``old`` into ``new`` chain by chain: new sets and chains
    are added, changed chains flushed and refilled, elements updated, and what is gone
    deleted once nothing refers to it. None if a set changed type (load whole)."""
    common = old.sets.keys() & new.sets.keys()
    if any(
        (old.sets[n].type, old.sets[n].flags) != (new.sets[n].type, new.sets[n].flags)
        for n in common
    ):
        return None
    table = f"{FAMILY} {TABLE}"
    lines: list[str] = []
    for name in sorted(new.sets.keys() - old.sets.keys()):  # sets first: rules use them
        lines += _declare(new.sets[name], f"add {_kind(new.sets[name])} {table} {name} {{")
    added_chains = sorted(new.chains.keys() - old.chains.keys())
    lines += [f"add chain {table} {name}" for name in added_chains]  # maps may jump to them
    kept = new.chains.keys() & old.chains.keys()
    changed = sorted(n for n in kept if new.chains[n] != old.chains[n])
    gone_chains = sorted(old.chains.keys() - new.chains.keys())
    for name in changed + gone_chains:  # drop their jumps and set references
        lines.append(f"flush chain {table} {name}")
    for name in changed + added_chains:
        lines += [f"add rule {table} {name} {rule}" for rule in new.chains[name]]
    for name in sorted(common):
        before, after = old.sets[name].elements, new.sets[name].elements
        removed, added = before - after, after - before
        keys = {old.sets[name].key(e) for e in removed} if old.sets[name].is_map else removed
        lines += _elements("delete", name, sorted(keys))
        lines += _elements("add", name, sorted(added))
    lines += [f"delete chain {table} {name}" for name in gone_chains]
    gone_sets = sorted(old.sets.keys() - new.sets.keys())
    lines += [f"delete {_kind(old.sets[n])} {table} {n}" for n in gone_sets]
    return "\n".join(lines) + "\n" if lines else ""


def _kind(s: NftSet) -> str:
    return "map" if s.is_map else "set"


def _declare(s: NftSet, header: str | None = None) -> list[str]:
    lines = [header or f"  {_kind(s)} {s.name} {{", f"    type {s.type}"]
    if s.flags:
        lines.append(f"    flags {s.flags}")
    if s.elements:
        items = sorted(s.elements)
        lines.append("    elements = {")
        lines += [f"      {e}," for e in items[:-1]] + [f"      {items[-1]}"]
        lines.append("    }")
    lines.append("  }")
    return lines


def _elements(verb: str, name: str, items: list[str]) -> list[str]:
    return [
        f"{verb} element {FAMILY} {TABLE} {name} {{ {', '.join(items[i : i + CHUNK])} }}"
        for i in range(0, len(items), CHUNK)
    ]


__all__ = ["base_rules", "render_changes", "render_full", "render_update"]
