"""Route publishing through BIRD: hosts announce their blocks, group routers filter them.

``templates`` (best-match lookup, strict rendering), ``announce`` and ``router`` (pure: what
to announce, whom to peer with and what to accept), ``source`` (romanad reads and feed
relevance), ``bird`` (validate, install atomically, reload, keep the last good config),
``daemon`` (the ``romana-publisher`` loop). See docs/publisher.md.
"""
