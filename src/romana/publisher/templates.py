"""Finding and rendering the operator's BIRD template.

One template directory can serve a whole cluster: a file named after a host's IP, or after
its subnet's network address, overrides the generic one for that host or subnet, with no
other configuration (the original Romana publisher's convention)::

    bird.conf.192.168.1.11   this host only
    bird.conf.192.168.1.0    every host of 192.168.1.0/24 (the host's subnet)
    bird.conf                everyone else

Templates are Jinja2 with ``StrictUndefined``: a misspelt or missing variable is a render
error reported before BIRD sees anything, never an empty string that silently drops a
route or a neighbour. Rendering never touches the output file; the caller decides (and
keeps the last good configuration on any error).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from romana.errors import TemplateError


def candidates(template: Path, host_ip: str | None = None, subnet: str | None = None) -> list[Path]:
    """The files tried, best match first: ``T.<host-ip>``, ``T.<subnet-address>``, ``T``."""
    out: list[Path] = []
    if host_ip:
        out.append(template.with_name(f"{template.name}.{ipaddress.IPv4Address(host_ip)}"))
    if subnet:
        network = ipaddress.IPv4Network(subnet, strict=False)
        out.append(template.with_name(f"{template.name}.{network.network_address}"))
    out.append(template)
    return list(dict.fromkeys(out))  # a /32 subnet names the host's own file: try it once


def detect_subnet(ip: str) -> str | None:
    """The subnet of the interface holding ``ip`` in this network namespace, if any: the
    second choice of :func:`candidates`."""
    try:
        out = subprocess.run(
            ["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, timeout=5
        ).stdout
        links = json.loads(out or "[]")
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    for link in links:
        for addr in link.get("addr_info", []):
            if addr.get("local") == ip:
                net = ipaddress.IPv4Network(f"{ip}/{addr.get('prefixlen', 32)}", strict=False)
                return str(net) if net.prefixlen < 32 else None
    return None


def find(template: Path, host_ip: str | None = None, subnet: str | None = None) -> Path:
    """The best-matching existing file (raises TemplateError naming every file tried)."""
    tried = candidates(template, host_ip, subnet)
    for path in tried:
        if path.is_file():
            return path
    raise TemplateError("no template file: tried " + ", ".join(str(p) for p in tried))


@dataclass(frozen=True, slots=True)
class TemplateFile:
    """A template's file and text, read once, so a change of either is a new template."""

    path: Path
    text: str

    @classmethod
    def read(cls, path: Path) -> TemplateFile:
        try:
            return cls(path, path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"cannot read template {path}: {exc}") from exc


# What a value may contain when it is written into a configuration without a filter: enough
# for names, paths, CIDRs, addresses and numbers; never a quote, ';', a brace, a newline or
# anything outside printable ASCII, with which a value could end a string, a statement or
# a block and write its own configuration (e.g. "import all" on its BGP session).
_PLAIN = re.compile(r"[A-Za-z0-9 _.:/,@+=-]*\Z")  # no '*': with '/', a block comment


class BirdText(str):
    """Text already made safe for its place in a BIRD configuration (by a filter below, or
    a CIDR pattern). Only the exact value is trusted: any operation on it (``+``, ``%``,
    slicing, ``format``) gives a plain ``str``, which the final check sees again."""

    __slots__ = ()


def bird_string(value: object) -> BirdText:
    """For inside ``"..."``: quotes, backslashes, newlines and non-ASCII become ``_``."""
    return BirdText(re.sub(r'[^\x20-\x7e]|["\\]', "_", str(value)))


def bird_comment(value: object) -> BirdText:
    """For after ``#``: a newline (or anything unprintable) cannot end the comment."""
    return BirdText(re.sub(r"[^\x20-\x7e]", "?", str(value)).replace("*/", "*?/"))


def bird_symbol(value: object) -> BirdText:
    """A BIRD identifier: letters, digits and ``_``, starting with a letter."""
    text = re.sub(r"[^A-Za-z0-9_]", "_", str(value)) or "_"
    return BirdText(text if text[0].isalpha() else f"r_{text}")


def safe_join(values: Iterable[object], separator: str = "") -> str:
    """Jinja's ``join``, keeping the result safe when every item is (e.g. BIRD patterns)."""
    items = list(values)
    text = separator.join(str(v) for v in items)
    return BirdText(text) if items and all(isinstance(v, BirdText) for v in items) else text


def _finalize(value: object) -> object:
    """Every ``{{ expression }}``'s value on its way out: filtered values pass, plain text
    must be harmless wherever it lands (else the render fails: last good config stays)."""
    if isinstance(value, BirdText) or not isinstance(value, str):
        return value
    if not _PLAIN.match(value):
        raise TemplateError(
            f"value {ascii(value)[:80]} is not safe in a BIRD configuration as it is: "
            "write it through | bird_string (inside quotes), | bird_comment (after #) "
            "or | bird_symbol (a name)"
        )
    return value


def environment(loader: jinja2.BaseLoader | None = None) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # BIRD configuration, not HTML: escaping is per place (filters)
        finalize=_finalize,
    )
    env.filters.update(
        bird_string=bird_string,
        bird_comment=bird_comment,
        bird_symbol=bird_symbol,
        join=safe_join,
    )
    return env


def render(template: TemplateFile, variables: Mapping[str, Any]) -> str:
    """Render ``template`` with ``variables``; ``{% include %}`` resolves next to the file."""
    env = environment(jinja2.FileSystemLoader(str(template.path.parent)))
    try:
        return env.from_string(template.text).render(**variables)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"{template.path}:{exc.lineno}: template syntax error: {exc.message}"
        ) from exc
    except jinja2.TemplateError as exc:  # undefined variables, missing includes, ...
        line = _template_line(exc)
        where = f"{template.path}:{line}" if line else str(template.path)
        raise TemplateError(f"{where}: {type(exc).__name__}: {exc}") from exc
    except (TypeError, ValueError, ArithmeticError) as exc:  # e.g. a filter on a bad value
        raise TemplateError(f"{template.path}: {type(exc).__name__}: {exc}") from exc


def _template_line(exc: BaseException) -> int | None:
    """The template line a runtime error came from (Jinja names it "<template>")."""
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
