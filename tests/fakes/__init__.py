"""Fakes for the failure paths, in one place: what cannot fail on demand when real.

Real components stay real everywhere else (tests run romanad, BIRD, the kernel's tables in
namespaces). These stand in only where a test must make something fail at a chosen moment
or must not need root:

- :mod:`.store`: ``MemoryStore`` (the Store interface in memory) and ``FailingStore``
  (wraps a store and fails ``append``, ``save_snapshot``, ``compact`` or ``checkpoint`` the
  next N times, as a full disk or a broken file would);
- :mod:`.agent`: ``FakeUpstream`` (the agent's view of romanad, scripted: answers, outages,
  another store, a rewound revision, a crash), ``FakeRouteTable`` and ``FakeNftTable`` (the
  agent's kernel tables in memory, with refusals on demand);
- :mod:`.kube`: ``FakeKubeApi``, a Kubernetes API server (list, watch, write; cut streams,
  compacted history, refusals), since no kube-apiserver can run here, and
  ``KubeApiThread``, which serves it over TLS from a thread of the test.
"""
