"""Bounded logging: a flood of one message (a storm of bad connections, a failing peer
retried by a thousand clients) cannot fill the disk or hide everything else.

Per logger, level and message template, at most ``burst`` records pass in each
``window`` seconds; the rest are counted, and the first record to pass after a quiet
spell carries ``suppressed``: how many of its kind were dropped meanwhile.
"""

from __future__ import annotations

import logging
import time


class FloodFilter(logging.Filter):
    def __init__(self, burst: int = 20, window: float = 10.0) -> None:
        super().__init__()
        self.burst, self.window = burst, window
        # key -> [window start, records passed in it, records dropped since one passed]
        self._seen: dict[tuple[str, int, object], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            return True  # a traceback (an answer may point to it by request id): always kept
        key = (record.name, record.levelno, record.msg)
        now = time.monotonic()
        state = self._seen.get(key)
        if state is None or now - state[0] >= self.window:
            dropped = int(state[2]) if state else 0
            if len(self._seen) > 10_000:  # many distinct messages: forget the old ones
                self._seen.clear()
            self._seen[key] = [now, 1, 0]
            if dropped:
                record.suppressed = dropped
            return True
        if state[1] < self.burst:
            state[1] += 1
            return True
        state[2] += 1
        return False
