"""Every network namespace of the machine and the addresses in them (``romana ipam check``)."""

from __future__ import annotations

import os
import socket

from romana.cni.podmsg import DUMP, NETNS_DIR, parse_addresses
from romana.netlink import (
    RTM_GETADDR,
    Channel,
    build,
    ifaddrmsg,
    open_netns,
)


# -- every namespace of the machine (leak checks) ---------------------------------------------
def namespace_paths() -> list[str]:
    """One path per distinct network namespace: named ones, then those of processes."""
    seen: set[tuple[int, int]] = set()
    paths = []
    candidates = [str(p) for p in sorted(NETNS_DIR.glob("*"))] if NETNS_DIR.is_dir() else []
    candidates += [f"/proc/{pid}/ns/net" for pid in os.listdir("/proc") if pid.isdigit()]
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue  # the process ended, or not a namespace
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            paths.append(path)
    return paths


def live_addresses() -> tuple[set[str], int]:
    """Every IPv4 address configured in any network namespace of the machine, and how many
    namespaces were read."""
    found: set[str] = set()
    paths = namespace_paths()
    for path in paths:
        try:
            fd = open_netns(path)
        except OSError:
            continue
        try:
            with Channel(fd) as channel:
                addresses = parse_addresses(
                    channel.dump(build(ifaddrmsg, RTM_GETADDR, DUMP, family=socket.AF_INET))
                )
            found.update(address for _, address, _ in addresses)
        except OSError:
            continue  # not a namespace (EINVAL) or it went away meanwhile
        finally:
            os.close(fd)
    return found, len(paths)
