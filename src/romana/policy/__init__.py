"""Network policies: one internal form (``model``), the two ways in (``native`` for
Romana's JSON, ``k8s`` for NetworkPolicy v1), what they are evaluated over (``inputs``),
romanad's record of them (``book``) and the nftables rules an agent loads (``compile``,
``nft``). Submodules are imported where used: the agent must not load pydantic.
"""
