"""Hostile names cannot write BIRD configuration, in any shipped template.

romanad refuses such names today (``romana.names``), but a store from before the rules, a
custom template or a future field must not turn a name into configuration: every value is
escaped for its place (``bird_string``, ``bird_comment``, ``bird_symbol``), and a value
written without a filter that could end a string, statement or block fails the render
(the publisher then keeps the last good configuration). Each rendering is checked by the
real ``bird -p``, and its structure is compared with the same rendering for plain names.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from romana.errors import TemplateError
from romana.publisher import templates
from romana.publisher.announce import Placement
from romana.publisher.bird import BirdConfig
from romana.publisher.daemon import builtin_router_template
from romana.publisher.options import Options
from romana.publisher.router import GroupInfo
from romana.publisher.source import HostInputs, RouterInputs
from romana.publisher.variables import host_variables, router_variables

pytestmark = [
    pytest.mark.bird,
    pytest.mark.skipif(shutil.which("bird") is None, reason="needs bird2"),
]

TEMPLATES = Path(__file__).resolve().parent.parent / "examples" / "bird"
INJECTION = (
    'x";local as 65101;neighbor 192.168.9.9 as 65101;ipv4{import all;export none;};}'
    'protocol bgp d{disabled;description "y'
)
HOSTILE = [
    INJECTION,
    "a\nprotocol static evil { ipv4; route 0.0.0.0/0 blackhole; }\n#",
    "rack-1 } protocol static evil { ipv4; route 0.0.0.0/0 blackhole",
    "\ud800\u202e\ufeff\x00\r",
    "# \\ \" ' ; { } [ ] ~",
]
STRUCTURE = ('"', ";", "{", "}", "\n")


def host_render(template: templates.TemplateFile, name: str, group: str, tmp: Path) -> str:
    opts = Options(
        host=name,
        router=None,
        url="",
        token=None,
        template=None,
        output=tmp / "bird.conf",
        bird_socket=None,
        local_as=65001,
        neighbor_ip="192.168.1.1",
        neighbor_as=65101,
        args={"log": "/dev/null"},
    )
    inputs = HostInputs(
        name,
        "192.168.1.11",
        {},
        {"pods": Placement(group, "10.1.0.0/17")},
        ("10.1.0.0/28",),
        {"pods": 2},
    )
    return templates.render(template, host_variables(opts, inputs))


def router_options(group: str, tmp: Path) -> Options:
    return Options(
        host=None,
        router=group,
        url="",
        token=None,
        template=None,
        output=tmp / "bird.conf",
        bird_socket=None,
        local_as=65101,
        peer_as=65001,
        strict=True,
        neighbor_ip="172.16.1.2",
        neighbor_as=65000,
    )


def router_render(template: templates.TemplateFile, name: str, group: str, tmp: Path) -> str:
    opts = router_options(group, tmp)
    hosts = [
        {"name": n, "ip": ip, "groups": {"pods": {"group": group, "cidr": "10.1.0.0/17"}}}
        for n, ip in ((name, "192.168.1.11"), ("h2", "192.168.1.12"))
    ]
    routes = [{"prefix": "10.1.0.0/28", "via": f"host:{name}", "gateway": "192.168.1.11"}]
    leaf = GroupInfo(group, {"pods": "10.1.0.0/17"}, True)
    return templates.render(
        template, router_variables(opts, RouterInputs(leaf, tuple(hosts), tuple(routes)))
    )


CASES = [
    ("host-bgp.conf.j2", host_render),
    ("host-ospf.conf.j2", host_render),
    ("router-bgp.conf.j2", router_render),
    ("router-ospf.conf.j2", router_render),
    ("built-in router", router_render),
]


def source(name: str) -> templates.TemplateFile:
    if name == "built-in router":
        return builtin_router_template()
    return templates.TemplateFile.read(TEMPLATES / name)


def skeleton(text: str) -> str:
    """The configuration without what names may fill: string contents and comments (as
    BIRD's lexer reads them)."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)  # block comments first
    out, in_string, in_comment = [], False, False
    for char in text:
        if in_comment:
            in_comment = char != "\n"
            keep = not in_comment  # the newline that ends it
        elif in_string:
            in_string = char != '"'
            keep = not in_string  # the closing quote
        else:
            in_string, in_comment = char == '"', char == "#"
            keep = not in_comment
        if keep:
            out.append(char)
    return "".join(out)


def shape(text: str) -> dict[str, int]:
    """How many quotes, statements, blocks and lines the configuration has."""
    bare = skeleton(text)
    return {c: bare.count(c) for c in STRUCTURE}


@pytest.mark.parametrize(("name", "render"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("hostile", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_names_render_escaped_and_bird_accepts(
    tmp_path: Path, name: str, render: object, hostile: str
) -> None:
    plain = render(source(name), "h1", "rack-1", tmp_path)  # type: ignore[operator]
    text = render(source(name), hostile, hostile, tmp_path)  # type: ignore[operator]
    BirdConfig(tmp_path / "bird.conf").check(text)
    assert shape(text) == shape(plain), "a name changed the configuration's structure"
    bare = skeleton(text)
    assert "65101;neighbor" not in bare and "protocol static evil" not in bare
    assert bare.count("import all") == skeleton(plain).count("import all")
    assert text.isascii()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.text(max_size=70), group=st.text(max_size=40))
def test_any_text_as_a_name_keeps_the_structure(tmp_path: Path, name: str, group: str) -> None:
    for template_name, render in CASES:
        plain = render(source(template_name), "h1", "rack-1", tmp_path)
        text = render(source(template_name), name, group, tmp_path)
        assert shape(text) == shape(plain), (template_name, name, group)
        BirdConfig(tmp_path / "bird.conf").check(text)


def test_names_that_derive_clashing_or_long_symbols_still_make_a_valid_router(
    tmp_path: Path,
) -> None:
    """Hosts "a" and "a-import" (filter "host_a_import" vs protocol "host_a_import"), and
    names that share their first 60 characters, are all valid host names."""
    long = "n" * 60
    names = ["a", "a-import", "a_import", f"{long}-1", f"{long}-2", f"{long}-3"]
    opts = router_options("rack-1", tmp_path)
    hosts = [
        {
            "name": n,
            "ip": f"192.168.1.{i + 10}",
            "groups": {"pods": {"group": "rack-1", "cidr": "10.1.0.0/17"}},
        }
        for i, n in enumerate(names)
    ]
    leaf = GroupInfo("rack-1", {"pods": "10.1.0.0/17"}, True)
    for name, _ in CASES[2:]:
        text = templates.render(
            source(name), router_variables(opts, RouterInputs(leaf, tuple(hosts), ()))
        )
        BirdConfig(tmp_path / "bird.conf").check(text)
        if "bgp" in name or "built-in" in name:
            assert text.count("protocol bgp host_") == len(names)


def test_an_unfiltered_dangerous_value_fails_the_render(tmp_path: Path) -> None:
    custom = templates.TemplateFile(Path("custom.j2"), "protocol device { }\n# {{ host.name }}\n")
    with pytest.raises(TemplateError, match="not safe in a BIRD configuration"):
        host_render(custom, INJECTION, "rack-1", tmp_path)
    # Plain names, CIDRs and numbers pass unfiltered.
    assert "# h1" in host_render(custom, "h1", "rack-1", tmp_path)
