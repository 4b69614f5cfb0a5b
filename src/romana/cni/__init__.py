"""The CNI plugin: container runtimes give pods routed /32 addresses from romanad.

Two halves. ``shim`` is the executable the runtime runs (installed as ``romana`` and
``romana-ipam``): stdlib only, it forwards the request over a Unix socket to the host
agent. The agent side (``server``, ``service``, ``podnet``, ...) does the work in-process,
with the romanad connection and netlink sockets it already holds. This package's
``__init__`` imports nothing, so the shim pays for nothing it does not use.
"""
