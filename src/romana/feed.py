"""Following romanad's changes feed safely: never follow a feed that went back in time.

A follower (the agent, the publisher) remembers the store id and the highest revision it
has seen. A feed from another store (romanad started on a fresh or another data directory)
or one whose revision went below what was seen (a store restored from an older backup, a
lost tail) would make it program routes for addresses the store no longer knows, so it
refuses: :meth:`FeedGuard.check` raises :class:`~romana.errors.FeedRewound` and the
follower keeps its last good state until it is restarted.
"""

from __future__ import annotations

import logging

from romana.errors import FeedRewound


class FeedGuard:
    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what  # who keeps state from the feed, for messages: "this agent"
        self.store_id: str | None = None
        self.seen = 0
        self.problem: str | None = None  # why the current feed is not followed

    def check(self, store_id: str | None, revision: int, floor: int | None = None) -> None:
        """Accept ``revision`` of ``store_id`` (None: not told) or raise FeedRewound.

        ``revision`` must not be below ``floor``: the highest revision seen for a full read
        (a route set, /healthz), or the ``since`` a watch asked from (a watch cut short by
        its limit answers the last fact it returned, legitimately below the head). Once a
        feed is refused it stays refused until the follower restarts: a restored store that
        later reaches the same revision number is still another history."""
        if self.problem is not None:
            raise FeedRewound(self.problem)
        if store_id and self.store_id is None:
            self.store_id = store_id
        least = self.seen if floor is None else floor
        problem = None
        if store_id and store_id != self.store_id:
            problem = (
                f"romanad now serves store {store_id}, not {self.store_id} that "
                f"{self.what} followed"
            )
        elif revision < least:
            problem = (
                f"romanad's revision went back from {least} to {revision}: "
                f"changes {self.what} saw were lost"
            )
        if problem is None:
            self.seen = max(self.seen, revision)
            return
        self.log.error(
            problem + f"; keeping the last good state and not following it "
            f"(restart {self.what} to accept this store)",
            extra={"store_id": store_id},
        )
        self.problem = problem
        raise FeedRewound(problem)
