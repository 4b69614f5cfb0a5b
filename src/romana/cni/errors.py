"""CNI error codes, for the one exception the agent-side plugin raises (``CniError``).

The runtime reads ``{"cniVersion", "code", "msg", "details"}`` from stdout and decides by
``code`` alone: 11 makes it retry later, 3 tells it there is nothing to clean up. So every
failure is mapped to a code exactly once, where it is raised; ``msg`` says what failed and
``details`` what to do about it. Codes 1-99 are the spec's; 100+ are Romana's own.
"""

from __future__ import annotations

# The CNI specification's well-known codes.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
NOT_AVAILABLE_LIMITED = 51

# Romana's own (the spec leaves 100+ to plugins).
ROMANAD_REFUSED = 100  # romanad answered but refused (no such host, pool exhausted, ...)
KERNEL_REFUSED = 101  # a netlink request or sysctl write failed
CHECK_FAILED = 102  # CHECK found the container's network not as ADD left it
INTERNAL = 199  # a bug: the agent's log has the traceback


# CniError itself lives in the one error tree (romana.errors); raise it with these codes.
from romana.errors import CniError  # noqa: E402

__all__ = ["CniError"]
