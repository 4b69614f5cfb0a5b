"""Template variables: what a host's or a router's BIRD configuration is rendered from."""

from __future__ import annotations

from typing import Any

from romana.publisher import source
from romana.publisher.announce import announced
from romana.publisher.options import Options
from romana.publisher.router import missing_as, pattern, router_data


def common_variables(opts: Options) -> dict[str, Any]:
    """Variables set only when given: a template using an unset one fails to render."""
    out: dict[str, Any] = {"args": dict(opts.args)}
    for key in ("local_as", "neighbor_ip", "neighbor_as", "router_id"):
        value = getattr(opts, key)
        if value is not None:
            out[key] = value
    return out


def host_variables(opts: Options, inputs: source.HostInputs) -> dict[str, Any]:
    networks = announced(inputs.placements, inputs.local, inputs.group_sizes, opts.announce)
    groups = {net: {"group": p.group, "cidr": p.cidr} for net, p in inputs.placements.items()}
    first = next(iter(inputs.placements.values()), None)
    return {
        **common_variables(opts),
        "networks": networks,
        "host": {"name": inputs.name, "ip": inputs.ip, "labels": dict(inputs.labels)},
        "host_name": inputs.name,
        "host_ip": inputs.ip,
        "groups": groups,
        "group": first.group if first else None,
        "group_cidrs": sorted({p.cidr for p in inputs.placements.values()}),
        "policy": str(opts.announce),
        "router_id": opts.router_id or inputs.ip,
    }


def router_variables(opts: Options, inputs: source.RouterInputs) -> dict[str, Any]:
    data = router_data(
        inputs.group,
        inputs.hosts,
        inputs.routes,
        strict=opts.strict,
        peers=opts.peers,
        peer_as=opts.peer_as,
    )
    return {
        **common_variables(opts),
        "group": data.group,
        "cidrs": list(data.cidrs),
        "cidr_patterns": [pattern(c) for c in data.cidrs],
        "leaf": data.leaf,
        "strict": data.strict,
        "peers": list(data.peers),
        "unpeered": list(data.unpeered),
        "missing_as": missing_as(data),
    }
