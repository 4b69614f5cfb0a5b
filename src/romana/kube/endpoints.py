"""Which of romanad's addresses a pod holds: the ones whose labels and ports it sets.

- An address that names its pod (``pod``: namespace, name and uid, which the CNI plugin
  takes from ``K8S_POD_NAMESPACE``/``K8S_POD_NAME``/``K8S_POD_UID``) belongs to that pod
  only: same namespace and name, and the same uid when both sides have one (a pod
  recreated under its old name is another pod). A pod may hold several, one per network
  or interface, whatever its ``status.podIP`` says.
- An address that names no pod (allocated before romanad kept the field, or not by the
  Kubernetes CNI path) is matched as it always was: by the pod's ``status.podIP``, in the
  pod's namespace (the tenant), and only while no other live pod reports that IP too. An
  IP reported twice is a reuse in progress (a terminating pod, a kubelet that has not
  caught up): neither pod's labels are written until one of them lets go.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from romana.kube.desired import EndpointSpec, live_ip

log = logging.getLogger("romana.kube")
Address = Mapping[str, Any]


class Holdings:
    """Addresses indexed by the pod they name and by IP, with how many live pods report
    each IP (``claims``: from every live pod, not only those being synced)."""

    def __init__(self, addresses: Iterable[Address], claims: Mapping[str, int]) -> None:
        self.claims = claims
        self.by_pod: dict[tuple[str, str], list[Address]] = {}
        self.by_ip: dict[str, Address] = {}
        for address in addresses:
            pod = address.get("pod")
            if isinstance(pod, Mapping):
                self.by_pod.setdefault((pod["namespace"], pod["name"]), []).append(address)
            self.by_ip[address["ip"]] = address

    def of(self, spec: EndpointSpec) -> list[Address]:
        named = [
            a
            for a in self.by_pod.get((spec.namespace, spec.name), ())
            if _same_uid(str(a["pod"].get("uid") or ""), spec.uid)
        ]
        if named or spec.ip is None:
            return named
        address = self.by_ip.get(spec.ip)
        if address is None or isinstance(address.get("pod"), Mapping):
            return []  # not allocated yet (or not by romanad), or another pod's
        if address["tenant"] != spec.namespace:
            log.warning(
                "pod IP is held by another tenant's address; labels not set",
                extra={"pod": spec.pod, "ip": spec.ip, "address": address["name"]},
            )
            return []
        if self.claims.get(spec.ip, 0) > 1:
            log.warning(
                "pod IP is reported by several live pods; labels not set until one lets go",
                extra={"pod": spec.pod, "ip": spec.ip, "address": address["name"]},
            )
            return []
        return [address]


def claims(pods: Iterable[Any]) -> Counter[str]:
    """How many live pods report each IP (Pod objects)."""
    return Counter(ip for ip in map(live_ip, pods) if ip is not None)


def _same_uid(held: str, pod: str) -> bool:
    return not held or not pod or held == pod
