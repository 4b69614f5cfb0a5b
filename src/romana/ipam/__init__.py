"""Topology-aware IPAM: prefix-group trees, blocks, addresses, and the engine."""

from romana.ipam.engine import Engine, FactSink
from romana.ipam.facts import Fact, fact_from_json, fact_to_json
from romana.ipam.views import AddressView, BlockView, HostView

__all__ = [
    "AddressView",
    "BlockView",
    "Engine",
    "Fact",
    "FactSink",
    "HostView",
    "fact_from_json",
    "fact_to_json",
]
