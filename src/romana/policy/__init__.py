"""Network policies: one internal form (``model``), the two ways in (``native`` for
Romana's JSON, ``k8s`` for NetworkPolicy v1), what they are evaluated over (``inputs``)
and the nftables rules an agent loads (``compile``, ``incremental``, ``nft``). romanad's
record of them is state, in :mod:`romana.ipam.policy_book`. Submodules are imported where
used: the agent must not load pydantic.
"""
