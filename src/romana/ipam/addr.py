"""Fast conversions between IPv4 integers and text (the engine keeps addresses as ints)."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network


def ip_to_str(ip: int) -> str:
    return socket.inet_ntoa(ip.to_bytes(4, "big"))


def ip_from_str(text: str) -> int:
    return int(IPv4Address(text))


def cidr_str(base: int, prefixlen: int) -> str:
    return f"{ip_to_str(base)}/{prefixlen}"


def cidr_range(cidr: IPv4Network) -> tuple[int, int]:
    """First address and one past the last, as ints."""
    base = int(cidr.network_address)
    return base, base + cidr.num_addresses
