"""Topology-aware IPAM: prefix-group trees, blocks, addresses, and the engine.

The names below are imported on first use, as in ``romana/__init__.py``: importing a
submodule such as ``romana.ipam.facts`` or ``romana.ipam.addr`` must not load the engine
(and pydantic with it) into the agent, the publisher or the CNI server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from romana.ipam.engine import Engine, FactSink
    from romana.ipam.facts import Fact, fact_from_json, fact_to_json
    from romana.ipam.views import AddressView, BlockView, HostView

_HOMES = {
    "Engine": "engine",
    "FactSink": "engine",
    "Fact": "facts",
    "fact_from_json": "facts",
    "fact_to_json": "facts",
    "AddressView": "views",
    "BlockView": "views",
    "HostView": "views",
}

__all__ = [
    "AddressView",
    "BlockView",
    "Engine",
    "Fact",
    "FactSink",
    "HostView",
    "fact_from_json",
    "fact_to_json",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'romana.ipam' has no attribute {name!r}")
    return getattr(importlib.import_module(f"romana.ipam.{home}"), name)
