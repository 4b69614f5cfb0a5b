"""Names shared on the wire between romanad and its followers, importable for free.

The agent, the publisher and the CNI plugin read the changes feed and route answers but
must not import the IPAM engine (hundreds of milliseconds at start-up); this module has
no imports, so every consumer takes the names from here instead of keeping copies.
"""

from __future__ import annotations

# Fact kinds of the changes feed (``romana.ipam.facts`` defines the facts themselves).
TOPOLOGY_APPLIED = "topology_applied"
HOST_ADDED = "host_added"
HOST_LABELS_UPDATED = "host_labels_updated"
HOST_REMOVED = "host_removed"
BLOCK_ASSIGNED = "block_assigned"
BLOCK_FREED = "block_freed"
AREA_RESERVED = "area_reserved"
AREA_RELEASED = "area_released"
ADDRESS_ALLOCATED = "address_allocated"
ADDRESS_RELEASED = "address_released"
BLACKOUT_ADDED = "blackout_added"
BLACKOUT_REMOVED = "blackout_removed"
ENDPOINT_LABELED = "endpoint_labeled"
TENANT_LABELED = "tenant_labeled"
POLICY_ADDED = "policy_added"
POLICY_REMOVED = "policy_removed"

BLOCK_FACTS = frozenset({BLOCK_ASSIGNED, BLOCK_FREED})
AREA_FACTS = frozenset({AREA_RESERVED, AREA_RELEASED})
# Facts after which some host's routes may differ; address facts never change a route.
ROUTE_FACTS = frozenset({TOPOLOGY_APPLIED, HOST_ADDED, HOST_REMOVED, HOST_LABELS_UPDATED})
ROUTE_FACTS |= BLOCK_FACTS | AREA_FACTS

# ``via`` of a route to the vantage host's own prefixes (delivered, or dropped, there).
LOCAL_VIA = "local"

# CNI specification versions the plugin speaks, oldest first.
CNI_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
