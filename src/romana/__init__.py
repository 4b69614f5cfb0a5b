"""Romana: routed, overlay-free networking with a topology-aware IPAM.

The root package holds the version and the error tree only, so importing ``romana`` (or
``romana.errors``) stays cheap for short-lived processes such as the CLI client and the
CNI plugin. It sits below every package (tests/test_package_rules.py): the engine is
``romana.ipam.Engine``.
"""

from __future__ import annotations

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

__version__ = "0.1.0"

__all__ = [
    "Conflict",
    "Exhausted",
    "InvalidRequest",
    "InvalidTopology",
    "NotFound",
    "Problem",
    "RomanaError",
    "TopologyConflict",
    "__version__",
]
