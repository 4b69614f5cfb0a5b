"""Topology maps: the format, loading and validation."""

from romana.topology.load import parse_text, read_file
from romana.topology.model import Host, HostGroup, Network, Topology, TopologyMapping, json_schema
from romana.topology.validate import check, validate

__all__ = [
    "Host",
    "HostGroup",
    "Network",
    "Topology",
    "TopologyMapping",
    "check",
    "json_schema",
    "parse_text",
    "read_file",
    "validate",
]
