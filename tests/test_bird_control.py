"""The BIRD machinery against the real thing: `bird -p` validation, atomic install, reload
over the control socket, and the last good configuration surviving every kind of failure.

BIRD runs inside a lab namespace (no kernel protocol either way), stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from romana.errors import BirdError
from romana.publisher import templates
from romana.publisher.announce import Placement
from romana.publisher.bird import BirdConfig, BirdControl
from romana.publisher.daemon import builtin_router_template
from romana.publisher.options import Options
from romana.publisher.router import GroupInfo, PeerSpec
from romana.publisher.source import HostInputs, RouterInputs
from romana.publisher.variables import host_variables, router_variables

from .lab import Lab, Netns
from .wait import wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.daemons,
    pytest.mark.bird,
    pytest.mark.skipif(shutil.which("bird") is None, reason="needs bird2"),
]


def stop_birds(pidfiles: list[Path], timeout: float = 5.0) -> None:
    """SIGTERM every BIRD by the PID it wrote, then wait for all (SIGKILL stragglers).

    BIRD exits at once, but the machine's init reaps daemonised orphans only every ~2 s
    and a zombie still answers ``kill(pid, 0)``: a zombie counts as stopped here.
    """
    pids = []
    for pidfile in pidfiles:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            pids.append(pid)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        time.sleep(0.02)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def config(*routes: str) -> str:
    body = "".join(f"  route {r} blackhole;\n" for r in routes)
    return (
        "router id 10.255.0.1;\nprotocol device {}\n"
        f"protocol static blocks {{\n  ipv4;\n{body}}}\n"
    )


class Bird:
    def __init__(self, lab: Lab, ns: Netns, workdir: Path) -> None:
        self.lab, self.ns, self.dir = lab, ns, workdir
        self.conf = workdir / "bird.conf"
        self.sock = workdir / "bird.ctl"
        self.pidfile = workdir / "bird.pid"

    def start(self) -> None:
        self.ns.exec("bird", "-c", str(self.conf), "-s", str(self.sock), "-P", str(self.pidfile))
        wait_until(self.sock.exists, 5, what="BIRD control socket")

    def routes(self) -> set[str]:
        lines = [r.text for r in BirdControl(self.sock).command("show route")]
        return {line.split()[0] for line in lines if line[:1].isdigit()}

    def stop(self) -> None:
        stop_birds([self.pidfile])


@pytest.fixture
def bird(tmp_path: Path) -> Iterator[Bird]:
    with Lab("bc", tmp_path) as lab:
        b = Bird(lab, lab.netns("bird"), tmp_path)
        try:
            yield b
        finally:
            b.stop()


def test_validation_keeps_broken_text_out_of_the_output(tmp_path: Path) -> None:
    out = tmp_path / "bird.conf"
    cfg = BirdConfig(out)  # no socket: only the file
    assert cfg.apply(config("10.1.0.0/29")) is True
    assert cfg.apply(config("10.1.0.0/29")) is False  # same text: nothing to do
    good = out.read_text()

    with pytest.raises(BirdError) as err:
        cfg.apply(good + "protocol static {\n  route 10.1.0.8/29 garbage;\n}\n")
    assert err.value.stage == "validate"
    assert "syntax error" in err.value.message and str(cfg.rejected) in err.value.message
    assert out.read_text() == good
    assert "garbage" in cfg.rejected.read_text()  # there for the operator to look at
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    assert cfg.apply(config("10.1.0.0/28")) is True
    assert not cfg.rejected.exists()


def test_reload_through_the_control_socket(bird: Bird) -> None:
    cfg = BirdConfig(bird.conf, bird.sock)
    bird.conf.write_text(config())
    bird.start()
    assert bird.routes() == set()

    assert cfg.apply(config("10.1.0.0/29", "10.1.0.16/29")) is True
    assert bird.routes() == {"10.1.0.0/29", "10.1.0.16/29"}
    assert cfg.apply(config("10.1.0.0/28")) is True
    assert bird.routes() == {"10.1.0.0/28"}


def test_bird_refusing_a_file_keeps_the_running_config_and_the_file(bird: Bird) -> None:
    bird.conf.write_text(config("10.1.0.0/29"))
    bird.start()
    # A file that parses alone but that BIRD refuses when it re-reads it: its include
    # disappears between validation and reload.
    inc = bird.dir / "extra.conf"
    inc.write_text("protocol static t { ipv4; route 10.1.0.64/29 blackhole; }\n")

    class Racing(BirdConfig):
        def _validated_temp(self, text: str) -> Path:
            tmp = super()._validated_temp(text)
            inc.unlink()  # gone after `bird -p`, before `configure`
            return tmp

    cfg = Racing(bird.conf, bird.sock)
    text = config("10.1.0.0/29") + f'include "{inc}";\n'
    with pytest.raises(BirdError) as err:
        cfg.apply(text)
    assert err.value.stage == "reload" and not err.value.retry
    assert "refused" in err.value.message and "extra.conf" in err.value.message
    assert bird.routes() == {"10.1.0.0/29"}  # still running the old configuration
    assert bird.conf.read_text() == config("10.1.0.0/29")  # and the file says so
    assert not cfg.reload_pending


def test_bird_not_running_yet_keeps_the_new_file_and_retries(bird: Bird) -> None:
    cfg = BirdConfig(bird.conf, bird.sock)
    bird.conf.write_text(config())
    with pytest.raises(BirdError) as err:
        cfg.apply(config("10.1.0.0/29"))
    assert err.value.stage == "reload" and err.value.retry
    assert cfg.reload_pending
    assert bird.conf.read_text() == config("10.1.0.0/29")  # BIRD will read it at start

    bird.start()
    assert bird.routes() == {"10.1.0.0/29"}
    # The same text again is not "nothing to do" while a reload is owed.
    assert cfg.apply(config("10.1.0.0/29")) is True
    assert not cfg.reload_pending


# -- the shipped templates ----------------------------------------------------------------

TEMPLATES = Path(__file__).resolve().parent.parent / "examples" / "bird"
LEAF = GroupInfo("rack-1", {"pods": "10.1.0.0/17"}, True)
HOSTS = [
    {"name": n, "ip": ip, "groups": {"pods": {"group": "rack-1", "cidr": "10.1.0.0/17"}}}
    for n, ip in (("h1", "192.168.1.11"), ("h2", "192.168.1.12"))
]
ROUTES = [{"prefix": "10.1.0.0/28", "via": "host:h1", "gateway": "192.168.1.11"}]


def render(name: str, variables: dict[str, object]) -> str:
    return templates.render(templates.TemplateFile.read(TEMPLATES / name), variables)


@pytest.mark.parametrize("name", ["host-bgp.conf.j2", "host-ospf.conf.j2"])
@pytest.mark.parametrize("local", [(), ("10.1.0.0/28", "10.1.0.32/29")])
def test_shipped_host_templates_render_configs_bird_accepts(
    tmp_path: Path, name: str, local: tuple[str, ...]
) -> None:
    opts = Options(
        host="h1",
        router=None,
        url="",
        token=None,
        template=None,
        output=tmp_path / "bird.conf",
        bird_socket=None,
        local_as=65001,
        neighbor_ip="192.168.1.1",
        neighbor_as=65101,
        args={"log": "/dev/null"},
    )
    inputs = HostInputs(
        "h1", "192.168.1.11", {}, {"pods": Placement("rack-1", "10.1.0.0/17")}, local, {"pods": 2}
    )
    text = render(name, host_variables(opts, inputs))
    BirdConfig(tmp_path / "bird.conf").check(text)
    assert all(f"route {n} blackhole;" in text for n in local)
    assert "router id 192.168.1.11;" in text


@pytest.mark.parametrize("name", ["router-bgp.conf.j2", "router-ospf.conf.j2"])
@pytest.mark.parametrize("upstream", [True, False])
def test_shipped_router_templates_render_configs_bird_accepts(
    tmp_path: Path, name: str, upstream: bool
) -> None:
    up: dict[str, object] = {"neighbor_ip": "172.16.1.2", "neighbor_as": 65000} if upstream else {}
    opts = Options(
        host=None,
        router="rack-1",
        url="",
        token=None,
        template=None,
        output=tmp_path / "bird.conf",
        bird_socket=None,
        local_as=65101,
        peer_as=65001,
        strict=True,
        **up,
    )  # type: ignore[arg-type]
    text = render(name, router_variables(opts, RouterInputs(LEAF, tuple(HOSTS), tuple(ROUTES))))
    BirdConfig(tmp_path / "bird.conf").check(text)
    assert ("route 10.1.0.0/17 unreachable;" in text) == upstream
    if name.startswith("router-bgp"):
        # h1 may announce its blocks; h2 has none yet, so its filter rejects everything.
        assert "if net ~ [ 10.1.0.0/28{28,32} ] then accept;" in text
        assert "filter host_h2_import {\n  reject;\n}" in text
    else:
        assert "if net ~ [ 10.1.0.0/17{17,32} ] then accept;" in text


def test_builtin_router_template_configures_a_spine(tmp_path: Path) -> None:
    spine = GroupInfo(
        "/",
        {"pods": "10.1.0.0/16"},
        False,
        (
            GroupInfo("rack-1", {"pods": "10.1.0.0/17"}, True),
            GroupInfo("rack-2", {"pods": "10.1.128.0/17"}, True),
        ),
    )
    opts = Options(
        host=None,
        router="/",
        url="",
        token=None,
        template=None,
        output=tmp_path / "bird.conf",
        bird_socket=None,
        local_as=65000,
        peers={"rack-1": PeerSpec("172.16.1.1", 65101), "rack-2": PeerSpec("172.16.2.1", 65102)},
    )
    text = templates.render(
        builtin_router_template(), router_variables(opts, RouterInputs(spine, (), ()))
    )
    BirdConfig(tmp_path / "bird.conf").check(text)
    assert "neighbor 172.16.2.1 as 65102;" in text
    assert "if net ~ [ 10.1.128.0/17{17,32} ] then accept;" in text
    assert "export where source = RTS_BGP;" in text
    assert "unreachable" not in text  # no parent: nothing to announce upward
