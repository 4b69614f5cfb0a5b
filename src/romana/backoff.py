"""Capped exponential delays with jitter: the one retry pacing of every Romana loop.

Jitter (each delay drawn from the upper half of the current step) keeps a fleet of agents
or publishers that lost romanad at the same moment from retrying in lockstep.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        if not 0 < first <= cap:
            raise ValueError(f"backoff: need 0 < first <= cap, not {first}, {cap}")
        self.first, self.cap = first, cap
        self.current = first

    def next(self) -> float:
        """The delay before the next attempt; each call doubles the step, up to ``cap``."""
        delay = self.current * random.uniform(0.5, 1.0)
        self.current = min(self.cap, self.current * 2)
        return delay

    def reset(self) -> None:
        """After a success: the next failure waits ``first`` again."""
        self.current = self.first
