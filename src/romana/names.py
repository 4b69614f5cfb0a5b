"""The one rule for every name the API and the topology map take.

Names travel far: into URLs (``/hosts/NAME``), SQLite, JSON answers, log lines, kernel
interface names and BIRD configurations. Each kind of name has one rule here, modelled on
Kubernetes (whose objects most names mirror), and every boundary checks with it:

========== ================================================================ ==========
kind       rule                                                             example
========== ================================================================ ==========
host       a node name: RFC 1123 subdomain, lower case, dot-separated       node-1.dc1
           labels of ``a-z 0-9 -`` (each 1-63, alphanumeric at both ends),
           253 at most
tenant     a namespace: one RFC 1123 label (1-63); empty means no tenant    kube-system
namespace  as a tenant, never empty (a pod's namespace)                     shop
segment    a label value: 0-63 of ``A-Z a-z 0-9 - _ .``, alphanumeric ends  frontend
network    as a label value, 1-63                                           pods
group      as a label value, 1-63 (paths join them with ``/``)              rack-1
address    1-253 of ``A-Z a-z 0-9 - _ . :``, alphanumeric ends, and not     ns:pod:eth0
           shaped like an IPv4 address (``release`` takes a name or an IP)
policy     1-253 of ``A-Z a-z 0-9 - _ .``, alphanumeric ends               allow-web
object     a Kubernetes object name: as a host name                        web-policy
pod uid    a Kubernetes UID: 0-128 of ``A-Z a-z 0-9 -`` (empty: unknown)    4c9f0f8e-6f4b
port name  an IANA service name: 1-15 of ``a-z 0-9 -``, a letter, no       http-alt
           ``--``, alphanumeric ends (a named container port)
label key  ``[prefix/]name``: prefix a DNS subdomain (253), name as a       romana.io/rack
           label value (1-63)
label      a label value (0-63)                                             rack-3
========== ================================================================ ==========

Every rule is ASCII, so control characters, NUL, newlines, BOMs, bidirectional marks and
lone surrogates are refused by construction. :func:`problem` names the rule that failed;
pydantic models use :meth:`Rule.check`. Standard library only (the CNI path imports it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_LABEL_VALUE = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"
_IPV4_LIKE = re.compile(r"[0-9]+(?:\.[0-9]+){1,3}\Z")


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str
    pattern: re.Pattern[str]
    max_length: int
    description: str
    allow_empty: bool = False
    not_ip: bool = False

    def problem(self, value: object) -> str | None:
        """Why ``value`` is not a valid name of this kind (None: it is)."""
        if not isinstance(value, str):
            return f"a {self.kind} must be a string"
        if value == "" and self.allow_empty:
            return None
        if len(value) > self.max_length:
            return f"a {self.kind} has at most {self.max_length} characters: {self.description}"
        if not self.pattern.fullmatch(value):
            return f"invalid {self.kind} {show(value)}: {self.description}"
        if self.not_ip and _IPV4_LIKE.match(value):
            return (
                f"invalid {self.kind} {show(value)}: it looks like an IPv4 address, "
                "and addresses are also released by IP"
            )
        return None

    def check(self, value: str) -> str:
        """``value`` if valid, else ValueError naming the rule (pydantic turns it into 422)."""
        reason = self.problem(value)
        if reason is not None:
            raise ValueError(reason)
        return value


HOST = Rule(
    "host name",
    re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*"),
    253,
    "lower-case letters, digits, '-' and '.', starting and ending with a letter or digit "
    "(a Kubernetes node name, RFC 1123)",
)
TENANT = Rule(
    "tenant name",
    re.compile(_DNS_LABEL),
    63,
    "lower-case letters, digits and '-', starting and ending with a letter or digit "
    "(a Kubernetes namespace, RFC 1123 label)",
    allow_empty=True,
)
NAMESPACE = Rule(
    "namespace",
    TENANT.pattern,
    63,
    "lower-case letters, digits and '-', starting and ending with a letter or digit "
    "(a Kubernetes namespace, RFC 1123 label)",
)
SEGMENT = Rule(
    "segment name",
    re.compile(_LABEL_VALUE),
    63,
    "letters, digits, '-', '_' and '.', starting and ending with a letter or digit "
    "(a Kubernetes label value)",
    allow_empty=True,
)
NETWORK = Rule(
    "network name",
    re.compile(_LABEL_VALUE),
    63,
    "letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
)
GROUP = Rule(
    "group name",
    re.compile(_LABEL_VALUE),
    63,
    "letters, digits, '-', '_' and '.', starting and ending with a letter or digit "
    "(paths join group names with '/')",
)
ADDRESS = Rule(
    "address name",
    re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]{0,251}[A-Za-z0-9])?"),
    253,
    "letters, digits, '-', '_', '.' and ':', starting and ending with a letter or digit",
    not_ip=True,
)
POLICY = Rule(
    "policy id",
    re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?"),
    253,
    "letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
)
OBJECT = Rule(
    "object name",
    HOST.pattern,
    253,
    "lower-case letters, digits, '-' and '.', starting and ending with a letter or digit "
    "(a Kubernetes object name, RFC 1123 subdomain)",
)
POD_UID = Rule(
    "pod uid",
    re.compile(r"[A-Za-z0-9-]+"),
    128,
    "letters, digits and '-' (a Kubernetes object UID), or empty when not known",
    allow_empty=True,
)
PORT_NAME = Rule(
    "port name",
    re.compile(r"(?=[a-z0-9-]*[a-z])(?!.*--)[a-z0-9](?:[a-z0-9-]{0,13}[a-z0-9])?"),
    15,
    "1-15 lower-case letters, digits and '-', with at least one letter, no '--', starting "
    "and ending with a letter or digit (an IANA service name, as Kubernetes port names)",
)
LABEL_NAME = Rule(
    "label key",
    re.compile(rf"(?:{_DNS_LABEL}(?:\.{_DNS_LABEL})*/)?{_LABEL_VALUE}"),
    253 + 1 + 63,
    "[prefix/]name: an optional DNS subdomain prefix and '/', then letters, digits, '-', "
    "'_' and '.' (1-63), starting and ending with a letter or digit (Kubernetes label key)",
)
LABEL_VALUE = Rule(
    "label value",
    re.compile(_LABEL_VALUE),
    63,
    "empty, or letters, digits, '-', '_' and '.' (1-63), starting and ending with a letter "
    "or digit (Kubernetes label value)",
    allow_empty=True,
)


def label_problems(labels: object) -> list[tuple[str, str]]:
    """(key, why) for every bad key or value of a label map (empty: all valid)."""
    if not isinstance(labels, Mapping):
        return [("", "labels must be an object of name: value")]
    out = []
    for key, value in labels.items():
        reason = LABEL_NAME.problem(key)
        if reason is None and isinstance(key, str) and "/" in key:
            prefix, _, name = key.rpartition("/")
            if len(prefix) > 253 or len(name) > 63:
                reason = f"label {show(key)}: prefix at most 253, name at most 63 characters"
        if reason is not None:
            out.append((show(key) if isinstance(key, str) else repr(key), reason))
            continue
        reason = LABEL_VALUE.problem(value)
        if reason is not None:
            out.append((key, f"label {key}: {reason}"))
    return out


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    problems = label_problems(labels)
    if problems:
        raise ValueError("; ".join(reason for _, reason in problems))
    return labels


def show(value: str) -> str:
    """A name as it can be shown safely in an error: escaped, and cut when very long."""
    text = value if len(value) <= 80 else value[:77] + "..."
    return ascii(text)


__all__ = [
    "ADDRESS",
    "GROUP",
    "HOST",
    "LABEL_NAME",
    "LABEL_VALUE",
    "NAMESPACE",
    "NETWORK",
    "OBJECT",
    "POD_UID",
    "POLICY",
    "PORT_NAME",
    "SEGMENT",
    "TENANT",
    "Rule",
    "check_labels",
    "label_problems",
    "show",
]
