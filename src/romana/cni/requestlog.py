"""The network configuration's ``log_file``: one JSON line per CNI invocation.

For operators reading a node's history without the agent's full log. Appending a short
line to a file costs microseconds; a file that cannot be written is reported once in the
agent's log and otherwise ignored (logging must never fail a pod's network setup).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

log = logging.getLogger("romana.cni")
_broken: set[str] = set()


def append(path: str, entry: dict[str, Any]) -> None:
    line = json.dumps({"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry})
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as exc:
        if path not in _broken:
            _broken.add(path)
            log.warning("cannot write the CNI log file", extra={"path": path, "error": str(exc)})
    else:
        _broken.discard(path)
