"""Validation of a map's ``networks`` section (names, CIDRs, block masks, tenants, outbound
NAT) and of the ``cluster_ranges`` that outbound NAT never translates."""

from __future__ import annotations

from ipaddress import AddressValueError, IPv4Network, NetmaskValueError
from typing import Any

from romana import names
from romana.topology.limits import MAX_CLUSTER_RANGES
from romana.topology.model import DEFAULT_BLOCK_MASK, Network, canonical_cidr
from romana.topology.shape import ShapeChecker, describe


class NetworkChecks(ShapeChecker):
    def __init__(self, service_cidr: IPv4Network | None) -> None:
        super().__init__()
        self.service_cidr = service_cidr
        # name -> (network, block_mask) for networks whose cidr and block_mask are valid
        self.networks: dict[str, tuple[IPv4Network, int]] = {}
        self.nat_paths: list[str] = []  # networks[i].nat_outgoing set to true

    def named(self, obj: dict[str, Any], key: str, path: str, rule: names.Rule) -> str | None:
        """A required name that follows ``rule`` (else a problem naming the rule)."""
        name = self.required_string(obj, key, path)
        if name is not None and (reason := rule.problem(name)) is not None:
            self.problems.error(f"{path}.{key}", reason)
            return None
        return name

    # -- networks -------------------------------------------------------------------
    def networks_section(self, doc: dict[str, Any]) -> None:
        seen: dict[str, str] = {}
        valid_cidrs: list[tuple[str, IPv4Network]] = []
        for i, net in enumerate(self.required_list(doc, "networks", "", "network definitions")):
            path = f"networks[{i}]"
            if not self.check_object(net, path, Network):
                continue
            name = self.named(net, "name", path, names.NETWORK)
            if name is not None:
                if name in seen:
                    self.problems.error(
                        f"{path}.name",
                        f'duplicate network name "{name}"',
                        f"already used by {seen[name]}; names must be unique",
                    )
                else:
                    seen[name] = path
            cidr = self.network_cidr(net, path)
            mask = self.block_mask(net, path, cidr)
            self.tenants(net, path)
            self.nat_outgoing(net, path)
            if cidr is None:
                continue
            for other_path, other in valid_cidrs:
                if cidr.overlaps(other):
                    self.problems.error(
                        f"{path}.cidr",
                        f"{cidr} overlaps {other} of {other_path}",
                        "network CIDRs must not overlap",
                    )
            valid_cidrs.append((path, cidr))
            if self.service_cidr is not None and cidr.overlaps(self.service_cidr):
                self.problems.error(
                    f"{path}.cidr",
                    f"{cidr} overlaps the service CIDR {self.service_cidr}",
                    "pick a pod CIDR outside the Kubernetes service range",
                )
            if name is not None and mask is not None and name not in self.networks:
                self.networks[name] = (cidr, mask)

    def network_cidr(self, net: dict[str, Any], path: str) -> IPv4Network | None:
        text = self.required_string(net, "cidr", path)
        if text is None:
            return None
        return self.cidr(text, f"{path}.cidr")

    def cidr(self, text: str, where: str) -> IPv4Network | None:
        try:
            return IPv4Network(canonical_cidr(text))
        except (AddressValueError, NetmaskValueError):
            self.problems.error(
                where, f'"{text}" is not an IPv4 CIDR', 'write it like "10.1.0.0/16"'
            )
        except ValueError:
            meant = IPv4Network(text.strip(), strict=False)
            self.problems.error(where, f'"{text}" has host bits set', f'did you mean "{meant}"?')
        return None

    def block_mask(self, net: dict[str, Any], path: str, cidr: IPv4Network | None) -> int | None:
        value = net.get("block_mask")
        if value is None:
            return max(DEFAULT_BLOCK_MASK, cidr.prefixlen) if cidr else None
        where = f"{path}.block_mask"
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems.error(
                where,
                f"expected an integer, got {describe(value)}",
                "e.g. 29 for blocks of 8 addresses",
            )
            return None
        if cidr is not None and not cidr.prefixlen < value <= 32:
            self.problems.error(
                where,
                f"block_mask {value} is not in ({cidr.prefixlen}, 32]",
                f"blocks must be smaller than the network {cidr}",
            )
            return None
        if cidr is None and not 0 < value <= 32:
            self.problems.error(where, f"block_mask {value} is not a prefix length")
            return None
        return value

    def tenants(self, net: dict[str, Any], path: str) -> None:
        if "tenants" not in net or net["tenants"] is None:
            return
        value = net["tenants"]
        where = f"{path}.tenants"
        if not isinstance(value, list) or not value:
            self.problems.error(
                where,
                "expected a non-empty list of tenant names",
                "omit the field to allow every tenant",
            )
            return
        seen: set[str] = set()
        for j, tenant in enumerate(value):
            if not isinstance(tenant, str) or not tenant:
                self.problems.error(f"{where}[{j}]", "expected a non-empty string")
            elif (reason := names.TENANT.problem(tenant)) is not None:
                self.problems.error(f"{where}[{j}]", reason)
            elif tenant in seen:
                self.problems.error(f"{where}[{j}]", f'duplicate tenant "{tenant}"')
            else:
                seen.add(tenant)

    def nat_outgoing(self, net: dict[str, Any], path: str) -> None:
        value = net.get("nat_outgoing")
        if value is None:
            return
        if not isinstance(value, bool):
            self.problems.error(
                f"{path}.nat_outgoing",
                f"expected true or false, got {describe(value)}",
                '"nat_outgoing": true translates pod traffic leaving the cluster',
            )
        elif value:
            self.nat_paths.append(f"{path}.nat_outgoing")

    # -- cluster ranges -------------------------------------------------------------
    def cluster_ranges_section(self, doc: dict[str, Any]) -> None:
        """``cluster_ranges``: valid, distinct CIDRs; then the warnings of outbound NAT."""
        value = doc.get("cluster_ranges")
        ranges: list[tuple[str, IPv4Network]] = []
        if isinstance(value, list) and len(value) > MAX_CLUSTER_RANGES:
            self.problems.error(
                "cluster_ranges",
                f"{len(value)} ranges; a map holds at most {MAX_CLUSTER_RANGES}",
                "list the node subnets and the service range, aggregated",
            )
            return
        if value is not None and not isinstance(value, list):
            self.problems.error(
                "cluster_ranges",
                f"expected a list of CIDRs, got {describe(value)}",
                'e.g. ["192.168.0.0/16", "10.96.0.0/12"] (node subnets, service range)',
            )
        for j, text in enumerate(value if isinstance(value, list) else []):
            where = f"cluster_ranges[{j}]"
            if not isinstance(text, str) or not text.strip():
                self.problems.error(
                    where, f"expected a CIDR, got {describe(text)}", 'e.g. "192.168.0.0/16"'
                )
                continue
            cidr = self.cidr(text, where)
            if cidr is None:
                continue
            self.cluster_range_overlaps(where, cidr, ranges)
            ranges.append((where, cidr))
        if not ranges:
            for path in self.nat_paths:
                self.problems.warning(
                    path,
                    "no cluster_ranges: traffic from this network to node addresses is "
                    "translated too",
                    "list the node subnets (and the service range) in cluster_ranges",
                )

    def cluster_range_overlaps(
        self, where: str, cidr: IPv4Network, earlier: list[tuple[str, IPv4Network]]
    ) -> None:
        for other_path, other in earlier:
            if cidr == other:
                self.problems.error(where, f"{cidr} is listed twice", f"already at {other_path}")
                return
            if cidr.overlaps(other):
                self.problems.warning(
                    where, f"{cidr} overlaps {other} of {other_path}", "list the larger one only"
                )
                return
        if cidr.prefixlen == 0:
            self.problems.warning(
                where,
                "0.0.0.0/0 covers every address: outbound NAT translates nothing",
                'set "nat_outgoing": false on the networks instead',
            )
        for name, (network, _) in self.networks.items():
            if cidr.subnet_of(network):
                self.problems.warning(
                    where,
                    f'{cidr} lies inside pod network "{name}" ({network})',
                    "pod networks are never translated: the range adds nothing",
                )
