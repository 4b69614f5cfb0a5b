"""`romana bird ...`: render BIRD configurations from romanad's state, once.

``router-config`` is what a network team runs to configure a group's router (a ToR: one
BGP neighbour per host of the group, each with a prefix-group import filter; a spine: one
per child group's router). ``host-config`` previews what ``romana-publisher`` would write
on a host. Both use the same code as the publisher; for a router configuration that must
follow allocations (``--strict`` on groups shared by several hosts), run
``romana-publisher --router GROUP`` instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from romana.api.client import DEFAULT_URL
from romana.cli.output import fail
from romana.cli.remote import TokenFileOpt, UrlOpt, connect

if TYPE_CHECKING:
    from romana.publisher.options import Options

app = typer.Typer(
    help="Render BIRD configurations (route publishing) from romanad's state.", no_args_is_help=True
)

OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        dir_okay=False,
        help="Write here (validated with `bird -p`, atomically) instead of printing.",
    ),
]
SocketOpt = Annotated[
    str | None,
    typer.Option("--bird-socket", help="With --output: reload this BIRD (its control socket)."),
]
LocalAsOpt = Annotated[int | None, typer.Option("--local-as", help="This router's AS.")]
NeighborIpOpt = Annotated[
    str | None,
    typer.Option("--neighbor-ip", help="The next router up (host: the ToR; router: the parent's)."),
]
NeighborAsOpt = Annotated[int | None, typer.Option("--neighbor-as", help="Its AS.")]
RouterIdOpt = Annotated[str | None, typer.Option("--router-id", help="BIRD router id.")]
ArgOpt = Annotated[
    list[str] | None,
    typer.Option("--arg", metavar="KEY=VALUE", help="Free template variable args.KEY; repeatable."),
]


def _args(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--arg")
        out[key] = value
    return out


def _emit(opts: Options, url: str, token_file: Path | None, socket: str | None) -> None:
    from romana.errors import BirdError, RouterError, TemplateError
    from romana.publisher.bird import BirdConfig
    from romana.publisher.daemon import builtin_router_template
    from romana.publisher.loop import Metrics, Publisher

    with connect(url, token_file) as client:
        bird = BirdConfig(opts.output, socket, opts.bird)
        publisher = Publisher(opts, client, bird, Metrics(), builtin_router_template())
        try:
            text = publisher.render_current()
        except (TemplateError, RouterError) as exc:
            fail(str(exc))
        unpeered = publisher.variables().get("unpeered")
        if unpeered:
            typer.echo(
                "warning: child groups without --peer (not configured): " + ", ".join(unpeered),
                err=True,
            )
    if opts.output == Path("-"):
        sys.stdout.write(text)
        return
    try:
        changed = bird.apply(text)
    except BirdError as exc:
        fail(exc.message)
    typer.echo(
        f"{opts.output}: {'written' if changed else 'unchanged'}"
        + (", BIRD reconfigured" if changed and socket else ""),
        err=True,
    )


@app.command("router-config")
def router_config_cmd(
    group: Annotated[
        str,
        typer.Option(
            "--group",
            "-g",
            help="Group path, e.g. rack-1 or zone-a/rack-3; / is the root (a spine).",
        ),
    ],
    template: Annotated[
        Path | None,
        typer.Option(
            "--template",
            "-t",
            dir_okay=False,
            help="Jinja2 template (default: the built-in BGP router template, "
            "examples/bird/router-bgp.conf.j2).",
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Accept from each host only its own blocks (not the whole group "
            "prefix); follow allocations with romana-publisher --router.",
        ),
    ] = False,
    local_as: LocalAsOpt = None,
    neighbor_ip: NeighborIpOpt = None,
    neighbor_as: NeighborAsOpt = None,
    router_id: RouterIdOpt = None,
    peer_as: Annotated[
        int | None,
        typer.Option(
            "--peer-as", help="AS of peers not given one by --peer (default: --local-as, iBGP)."
        ),
    ] = None,
    peer: Annotated[
        list[str] | None,
        typer.Option(
            "--peer",
            metavar="NAME=IP[@AS]",
            help="A child group's router address (a parent "
            "group has no IPs in the map), or a host's IP/AS override; repeatable.",
        ),
    ] = None,
    arg: ArgOpt = None,
    output: OutputOpt = None,
    bird_socket: SocketOpt = None,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
) -> None:
    """Render the BIRD configuration of a group's router.

    One BGP neighbour per host of the group (per child group's router for a parent
    group), each with an import filter limited to its prefix group.
    """
    from romana.errors import RouterError
    from romana.publisher.options import Options
    from romana.publisher.router import PeerSpec

    try:
        peers = dict(PeerSpec.parse(p) for p in peer or [])
    except RouterError as exc:
        raise typer.BadParameter(str(exc), param_hint="--peer") from exc
    opts = Options(
        host=None,
        router=group,
        url=url,
        token=None,
        template=template,
        output=output or Path("-"),
        bird_socket=bird_socket,
        local_as=local_as,
        neighbor_ip=neighbor_ip,
        neighbor_as=neighbor_as,
        router_id=router_id,
        peer_as=peer_as,
        peers=peers,
        strict=strict,
        args=_args(arg),
        once=True,
    )
    _emit(opts, url, token_file, bird_socket)


@app.command("host-config")
def host_config_cmd(
    host: Annotated[str, typer.Option("--host", "-H", help="Host name.")],
    template: Annotated[
        Path,
        typer.Option(
            "--template",
            "-t",
            dir_okay=False,
            help="Jinja2 template (best match of T.<host-ip>, T.<subnet-address>, T).",
        ),
    ],
    announce: Annotated[
        str,
        typer.Option(
            "--announce",
            help="blocks: own blocks collapsed; group: the whole leaf prefix "
            "while the host is alone in its group.",
        ),
    ] = "blocks",
    subnet: Annotated[
        str | None,
        typer.Option("--subnet", help="The host's subnet, for the T.<subnet-address> lookup."),
    ] = None,
    local_as: LocalAsOpt = None,
    neighbor_ip: NeighborIpOpt = None,
    neighbor_as: NeighborAsOpt = None,
    router_id: RouterIdOpt = None,
    arg: ArgOpt = None,
    output: OutputOpt = None,
    bird_socket: SocketOpt = None,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
) -> None:
    """Render a host's BIRD configuration, as romana-publisher would write it."""
    from romana.publisher.announce import Policy
    from romana.publisher.options import Options

    if announce not in {p.value for p in Policy}:
        raise typer.BadParameter("expected blocks or group", param_hint="--announce")
    opts = Options(
        host=host,
        router=None,
        url=url,
        token=None,
        template=template,
        output=output or Path("-"),
        bird_socket=bird_socket,
        subnet=subnet,
        local_as=local_as,
        neighbor_ip=neighbor_ip,
        neighbor_as=neighbor_as,
        router_id=router_id,
        announce=Policy(announce),
        args=_args(arg),
        once=True,
    )
    _emit(opts, url, token_file, bird_socket)
