"""Romana: routed, overlay-free networking with a topology-aware IPAM.

``Engine`` is imported on first use: importing ``romana`` (or ``romana.errors``) must stay
cheap for short-lived processes such as the CLI client and the CNI plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from romana.errors import (
    Conflict,
    Exhausted,
    InvalidRequest,
    InvalidTopology,
    NotFound,
    Problem,
    RomanaError,
    TopologyConflict,
)

if TYPE_CHECKING:
    from romana.ipam import Engine

__version__ = "0.1.0"

__all__ = [
    "Conflict",
    "Engine",
    "Exhausted",
    "InvalidRequest",
    "InvalidTopology",
    "NotFound",
    "Problem",
    "RomanaError",
    "TopologyConflict",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from romana.ipam import Engine

        return Engine
    raise AttributeError(f"module 'romana' has no attribute {name!r}")
