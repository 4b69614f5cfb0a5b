"""The CNI plugin: container runtimes give pods routed /32 addresses from romanad.

Two halves. The executable the runtime runs (``plugin.c``, built static by ``make plugin``
and installed as ``romana`` and ``romana-ipam`` by ``install``) forwards the request over a
Unix socket to the host agent; ``shim`` is the same protocol in Python (the reference, run
by the console scripts in ``cli``). The agent side (``server``, ``service``, ``podnet``,
...) does the work in-process, with the romanad connection and netlink sockets it already
holds. This package's ``__init__`` imports nothing, so the shim pays for nothing it does
not use.
"""
