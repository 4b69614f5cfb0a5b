"""Rebuilding the engine from what a store holds, naming exactly what is damaged.

romanad does this at start and ``romana store check`` does it offline: the newest snapshot,
then every later fact, applied one at a time. Anything that does not read back (not JSON,
an unknown fact kind, a missing field, a snapshot of an unknown version) or does not apply
to the state before it (an impossible state) is a :class:`~romana.errors.StoreDamaged`
naming the revision and what to do; never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from romana.errors import StoreDamaged
from romana.ipam.engine import Engine
from romana.ipam.facts import fact_from_json
from romana.store.base import DAMAGE_FIX as FIX


def rebuild(
    snapshot: dict[str, Any] | None, facts: Iterable[tuple[int, Any]], where: str
) -> Engine:
    """The engine the store describes, or StoreDamaged for the first damage found."""
    engine = Engine()
    if snapshot is not None:
        try:
            engine = Engine.from_snapshot(snapshot)
        except Exception as exc:  # any failure to read it back is damage, named below
            revision = snapshot.get("revision", "?") if isinstance(snapshot, dict) else "?"
            raise StoreDamaged(
                f"{where}: the snapshot at revision {revision} is damaged: {_what(exc)}", [FIX]
            ) from exc
    for revision, data in facts:
        kind = data.get("kind") if isinstance(data, dict) else None
        try:
            fact = fact_from_json(data)
        except Exception as exc:
            raise StoreDamaged(
                f"{where}: fact {revision} ({kind or 'no kind'}) cannot be read: {_what(exc)}",
                [FIX],
            ) from exc
        try:
            engine.apply_durable([fact])
        except Exception as exc:
            raise StoreDamaged(
                f"{where}: fact {revision} ({kind}) does not apply to the state "
                f"before it: {_what(exc)}",
                [FIX],
            ) from exc
        if engine.revision != revision:
            raise StoreDamaged(
                f"{where}: fact {revision} arrived at engine revision {engine.revision}", [FIX]
            )
    return engine


def hosts_and_addresses(
    snapshot: dict[str, Any] | None, facts: Iterable[tuple[int, Any]], where: str
) -> tuple[int, int]:
    """How many hosts and addresses the store holds, replayed: what ``romana store check``
    reports (:func:`romana.store.offline.check`); StoreDamaged as :func:`rebuild`."""
    state = rebuild(snapshot, facts, where).state
    return len(state.hosts), len(state.addresses)


def _what(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, KeyError):
        return f"missing {text}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
