"""Kubernetes integration: the cluster's objects flow into romanad.

``connect`` (client and configuration) -> ``reflector`` (list + watch of one kind into a
cache) -> ``desired`` (objects -> what romanad should hold; ``endpoints``: which addresses
a pod holds) -> ``sync`` (the difference, applied with idempotent romanad writes; what
romanad refuses is one object's problem: ``refusals``) -> ``listener`` (the daemon).
``pods`` is the agent's side: a pod's labels and named ports looked up for the CNI plugin.
"""
