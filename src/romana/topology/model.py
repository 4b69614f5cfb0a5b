"""The topology map format as typed models.

These models are the single source of the format's field names: the validator checks
documents against them (unknown fields are typos), ``romana topology schema`` exports their
JSON Schema, and the engine consumes instances that passed validation. Extensions to the
original format: ``tenants`` and ``nat_outgoing`` on a network, ``routing`` on a host
group, ``cluster_ranges`` on the map.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

DEFAULT_BLOCK_MASK = 29


def canonical_cidr(text: str) -> str:
    """``" 10.1.0.0/255.255.0.0"`` -> ``"10.1.0.0/16"``; host bits set are an error.

    The validator and the model both parse through here, so a document the validator
    accepts is stored exactly as the engine reads it back."""
    return str(IPv4Network(text.strip()))


def canonical_ip(text: str) -> str:
    """``" 192.168.1.10"`` -> ``"192.168.1.10"`` (no prefix length, no leading zeros)."""
    return str(IPv4Address(text.strip()))


def canonical_flag(value: bool | None) -> bool | None:
    """``false`` is what an absent flag means: stored as absent, so a map that spells the
    default out and one that leaves it out are the same stored map."""
    return True if value else None


def canonical_ranges(ranges: list[str] | None) -> list[str] | None:
    """Canonical CIDRs (each already through :func:`canonical_cidr`), sorted by address;
    an empty list means what an absent one does."""
    if not ranges:
        return None
    return sorted(dict.fromkeys(ranges), key=IPv4Network)


CidrText = Annotated[str, AfterValidator(canonical_cidr)]
IPText = Annotated[str, AfterValidator(canonical_ip)]
Flag = Annotated[bool | None, AfterValidator(canonical_flag)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Host(_Strict):
    """A host pinned to a group by the map."""

    name: str = Field(min_length=1, description="Node name as registered in Kubernetes.")
    ip: IPText = Field(description="IPv4 address of the node.")


class HostGroup(_Strict):
    """A prefix group: a leaf (``hosts`` or ``groups: []``) or a parent of groups."""

    name: str | None = Field(default=None, min_length=1, description="Descriptive name.")
    hosts: list[Host] | None = Field(
        default=None, description="Hosts pinned to this leaf group (exclusive with groups)."
    )
    groups: list[HostGroup] | None = Field(
        default=None,
        description='Nested groups; "groups": [] marks a leaf that receives hosts by labels.',
    )
    assignment: dict[str, str] | None = Field(
        default=None, description="Node labels a host must carry to be placed in this group."
    )
    routing: str | None = Field(
        default=None,
        description="Extension: routing modes for this group, comma-separated.",
    )

    @property
    def is_leaf(self) -> bool:
        return self.hosts is not None or not self.groups


class Network(_Strict):
    name: str = Field(min_length=1, description="Unique network name.")
    cidr: CidrText = Field(description="IPv4 CIDR that pod addresses come from.")
    block_mask: int | None = Field(
        default=None,
        ge=1,
        le=32,
        description="Prefix length of address blocks; default 29 (or the network's own "
        "prefix length when that is longer).",
    )
    tenants: list[str] | None = Field(
        default=None,
        description="Extension: only these tenants (Kubernetes namespaces) may use it.",
    )
    nat_outgoing: Flag = Field(
        default=None,
        description="Extension: pod traffic to destinations outside every pod network and "
        "outside cluster_ranges leaves with the node's address (masquerade); default false.",
    )

    @property
    def network(self) -> IPv4Network:
        return IPv4Network(self.cidr)

    @property
    def effective_block_mask(self) -> int:
        if self.block_mask is not None:
            return self.block_mask
        return max(DEFAULT_BLOCK_MASK, self.network.prefixlen)


class TopologyMapping(_Strict):
    networks: list[str] = Field(min_length=1, description="Names of networks using this map.")
    map: list[HostGroup] = Field(min_length=1, description="Host groups of this topology.")


class Topology(_Strict):
    """A whole topology map document."""

    networks: list[Network] = Field(min_length=1)
    topologies: list[TopologyMapping] = Field(min_length=1)
    cluster_ranges: Annotated[list[CidrText] | None, AfterValidator(canonical_ranges)] = Field(
        default=None,
        description="Extension: the cluster's own ranges (node addresses, the service range) "
        "that outbound NAT never translates, as pod networks are never translated.",
    )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def json_schema() -> dict[str, Any]:
    schema = Topology.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Romana topology map"
    return schema
