"""Bounds on a topology map, checked without recursion before the map is walked: a map
nested hundreds of levels deep or holding a million groups is refused with a clear
problem instead of exhausting the stack or stalling romanad."""

from __future__ import annotations

from typing import Any

MAX_JSON_DEPTH = 64
MAX_GROUP_DEPTH = 16
MAX_NETWORKS = 64
MAX_GROUPS = 10_000
MAX_MAP_HOSTS = 10_000
MAX_CLUSTER_RANGES = 1_000


def limit_problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, message) for every bound ``doc`` exceeds (empty: within bounds)."""
    depth, groups, hosts = _measure(doc)
    if depth > MAX_JSON_DEPTH:
        return [("", f"the document is nested more than {MAX_JSON_DEPTH} levels")]
    networks = doc.get("networks")
    out = []
    for count, limit, what, where in (
        (len(networks) if isinstance(networks, list) else 0, MAX_NETWORKS, "networks", "networks"),
        (groups, MAX_GROUPS, "host groups", "topologies"),
        (hosts, MAX_MAP_HOSTS, "pinned hosts", "topologies"),
    ):
        if count > limit:
            out.append((where, f"{count} {what}; a map holds at most {limit}"))
    return out


def _measure(doc: Any) -> tuple[int, int, int]:
    """(JSON nesting depth, objects inside "groups" lists, objects inside "hosts" lists)."""
    deepest = groups = hosts = 0
    todo: list[tuple[Any, int, str]] = [(doc, 1, "")]
    while todo:
        value, depth, key = todo.pop()
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        if isinstance(value, dict):
            todo.extend((v, depth + 1, str(k)) for k, v in value.items())
        elif isinstance(value, list):
            if key == "groups" or key == "map":
                groups += len(value)
            elif key == "hosts":
                hosts += len(value)
            todo.extend((v, depth + 1, "") for v in value)
    return deepest, groups, hosts
