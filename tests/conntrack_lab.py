"""A throwaway network namespace whose kernel tracks flows, and the code that plants
flows in it: shared by the conntrack tests (the scenarios run inside as scripts)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

# Source for the scripts run inside: the namespace's tracked-flow count, and flows an
# address started (original source) and was sent (reply source), on loopback.
FLOW_HELPERS = """
import socket

def count():
    with open("/proc/sys/net/netfilter/nf_conntrack_count") as f:
        return int(f.read())

def plant(address, started, received, port=3000):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        for i in range(started):
            s.sendto(b"x", ("127.1.0.1", port + i))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(received):
            s.sendto(b"x", (address, port + 1000 + i))
"""


@contextlib.contextmanager
def tracking_netns(tag: str) -> Iterator[str]:
    """A namespace with loopback up and an nftables rule that makes conntrack track
    there (nothing is tracked in a namespace no rule uses it in); removed on exit."""
    name = f"rt{os.getpid() % 100000}{tag}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        inside = ["ip", "netns", "exec", name]
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True)
        rule = "add table inet t; add chain inet t out { type filter hook output priority 0; };"
        subprocess.run([*inside, "nft", rule + " add rule inet t out ct state new accept"])
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
