"""Romana: routed, overlay-free networking with a topology-aware IPAM."""

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
