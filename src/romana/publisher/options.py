"""The publisher's options: read by its loop and by the template variables, built by its
daemon and by the ``romana bird`` commands."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from romana.publisher.announce import Policy
from romana.publisher.router import PeerSpec


@dataclass
class Options:
    """What to publish and where: the command line, or the CLI's one-shot equivalent."""

    host: str | None
    router: str | None
    url: str
    token: str | None
    template: Path | None
    output: Path
    bird_socket: str | None
    bird: str = "bird"
    subnet: str | None = None
    local_as: int | None = None
    neighbor_ip: str | None = None
    neighbor_as: int | None = None
    router_id: str | None = None
    peer_as: int | None = None
    peers: dict[str, PeerSpec] = field(default_factory=dict)
    strict: bool = False
    announce: Policy = Policy.BLOCKS
    args: dict[str, str] = field(default_factory=dict)
    poll: float = 10.0
    once: bool = False
