"""Read-only views of IPAM state, shaped for the API and CLI (JSON field names of the docs)."""

from __future__ import annotations

from dataclasses import dataclass

from romana.responses import AddressJson, BlockJson, HostGroupJson, HostJson, NamedPortJson, PodJson


@dataclass(frozen=True, slots=True)
class AddressView:
    name: str
    ip: str
    network: str
    host: str
    tenant: str
    segment: str
    block: str
    labels: dict[str, str] | None = None  # endpoint metadata, when it has any
    ports: list[NamedPortJson] | None = None
    pod: PodJson | None = None  # {namespace, name, uid} of its pod, when known

    def to_json(self) -> AddressJson:
        out: AddressJson = {
            "name": self.name,
            "ip": self.ip,
            "network": self.network,
            "host": self.host,
            "tenant": self.tenant,
            "segment": self.segment,
            "block": self.block,
        }
        if self.labels is not None:
            out["labels"] = self.labels
            out["ports"] = self.ports
        if self.pod is not None:
            out["pod"] = self.pod
        return out


@dataclass(frozen=True, slots=True)
class BlockView:
    cidr: str
    network: str
    group: str
    host: str
    tenant: str
    segment: str
    allocated_ip_count: int

    def to_json(self) -> BlockJson:
        return {
            "cidr": self.cidr,
            "network": self.network,
            "group": self.group,
            "host": self.host,
            "tenant": self.tenant,
            "segment": self.segment,
            "allocated_ip_count": self.allocated_ip_count,
        }


@dataclass(frozen=True, slots=True)
class HostView:
    name: str
    ip: str
    labels: dict[str, str]
    groups: dict[str, HostGroupJson]  # by network
    block_count: int

    def to_json(self) -> HostJson:
        return {
            "name": self.name,
            "ip": self.ip,
            "labels": self.labels,
            "groups": self.groups,
            "block_count": self.block_count,
        }
