"""The agent's follow loop: which facts trigger a sync, and its retry pacing."""

from __future__ import annotations

from romana.agent.follow import ROUTE_FACTS
from romana.backoff import Backoff
from romana.ipam.facts import FACT_TYPES


def test_route_facts_name_real_fact_kinds_and_skip_address_facts() -> None:
    assert set(FACT_TYPES) >= ROUTE_FACTS  # a typo here would silently stop watch syncs
    assert {"block_assigned", "block_freed", "topology_applied"} <= ROUTE_FACTS
    assert not {"address_allocated", "address_released"} & ROUTE_FACTS


def test_backoff_grows_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(first=0.1, cap=2.0)
    delays = [backoff.next() for _ in range(10)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(d <= 2.0 for d in delays) and max(delays) >= 1.0
    backoff.reset()
    assert backoff.next() <= 0.1
