"""Following romanad's changes feed safely: never follow a feed that went back in time.

A follower (the agent, the publisher) remembers the store id and the highest revision it
has seen. A feed from another store (romanad started on a fresh or another data directory)
or one whose revision went below what was seen (a store restored from an older backup, a
lost tail) would make it program routes for addresses the store no longer knows, so it
refuses: :meth:`FeedGuard.check` raises :class:`~romana.errors.FeedRewound` and the
follower keeps its last good state until the feed is consistent again or it is restarted.
"""

from __future__ import annotations

import logging


class FeedGuard:
    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what  # who keeps state from the feed, for messages: "this agent"
        self.store_id: str | None = None
        self.seen = 0
        self.problem: str | None = None  # why the current feed is not followed

    def check(self, store_id: str | None, revision: int) -> None:
        """Accept ``revision`` of ``store_id`` (None: not told) or raise FeedRewound."""
        from romana.errors import FeedRewound

        if store_id and self.store_id is None:
            self.store_id = store_id
        problem = None
        if store_id and store_id != self.store_id:
            problem = (
                f"romanad now serves store {store_id}, not {self.store_id} that "
                f"{self.what} followed"
            )
        elif revision < self.seen:
            problem = (
                f"romanad's revision went back from {self.seen} to {revision}: "
                f"changes {self.what} saw were lost"
            )
        if problem is None:
            if self.problem is not None:
                self.log.warning("feed consistent again; following", extra={"revision": revision})
            self.problem = None
            self.seen = max(self.seen, revision)
            return
        if problem != self.problem:
            self.log.error(
                problem + f"; keeping the last good state and not following it "
                f"(restart {self.what} to accept this store)",
                extra={"store_id": store_id},
            )
        self.problem = problem
        raise FeedRewound(problem)
