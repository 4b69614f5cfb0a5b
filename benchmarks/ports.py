"""A free TCP port on loopback, for the daemons a benchmark starts (the tests have their
own in tests/daemon.py). The scripts import it as ``from ports import free_port``: Python
puts a script's own directory first on its path."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
