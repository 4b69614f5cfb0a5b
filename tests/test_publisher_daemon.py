"""The publisher loop against a real romanad and real `bird -p` (no BIRD daemon needed: the
output file is what is checked): last good configuration on every error, which feed
changes cause a re-read, resync after compaction, and surviving romanad's absence.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from romana.api.client import RomanaClient
from romana.errors import Resync
from romana.publisher.bird import BirdConfig
from romana.publisher.loop import Metrics, Publisher
from romana.publisher.options import Options

from .conftest import racks_topology
from .daemon import Daemon, free_port, running
from .lab import romana_argv
from .wait import wait_until

pytestmark = [
    pytest.mark.daemons,
    pytest.mark.bird,
    pytest.mark.skipif(shutil.which("bird") is None, reason="needs bird2"),
]

TEMPLATE = """router id {{ router_id }};
protocol device {}
protocol static romana_networks {
  ipv4;
{% for net in networks %}
  route {{ net }} blackhole;
{% endfor %}
}
"""


def seed(client: RomanaClient) -> None:
    client.apply_topology(racks_topology(2))
    client.add_host("h1", "192.168.1.11", {"rack": "rack-1"})
    client.add_host("h2", "192.168.1.12", {"rack": "rack-1"})
    client.allocate("a1", "h1", "t", "a")  # 10.1.0.0/29; h1's area: all of rack-1 (/17)


CLIENTS: list[RomanaClient] = []


@pytest.fixture
def romanad(tmp_path: Path) -> Iterator[Daemon]:
    with running(tmp_path / "data") as daemon:
        with RomanaClient(daemon.url) as client:
            seed(client)
        try:
            yield daemon
        finally:
            while CLIENTS:
                CLIENTS.pop().close()


def publisher(daemon: Daemon, tmp_path: Path, **kw: object) -> tuple[Publisher, Metrics]:
    template = tmp_path / "bird.conf.j2"
    if not template.exists():
        template.write_text(TEMPLATE)
    opts = Options(
        host="h1",
        router=None,
        url=daemon.url,
        token=None,
        template=template,
        output=tmp_path / "bird.conf",
        bird_socket=None,
        subnet="192.168.1.0/24",
        **kw,
    )  # type: ignore[arg-type]
    metrics = Metrics()
    client = RomanaClient(daemon.url)
    CLIENTS.append(client)
    return Publisher(opts, client, BirdConfig(opts.output), metrics), metrics


def failures(metrics: Metrics, stage: str) -> float:
    return (
        metrics.registry.get_sample_value("romana_publisher_failures_total", {"stage": stage})
        or 0.0
    )


def test_render_errors_keep_the_last_good_config(romanad: Daemon, tmp_path: Path) -> None:
    pub, metrics = publisher(romanad, tmp_path)
    pub.refresh()
    assert pub.publish()
    out = pub.bird.output
    assert "route 10.1.0.0/17 blackhole;" in out.read_text()
    good = out.read_text()

    # A misspelt variable: no render, the file stays, counted once however often retried.
    pub.opts.template.write_text(TEMPLATE.replace("{{ net }}", "{{ nett }}"))  # type: ignore[union-attr]
    assert not pub.publish() and not pub.publish()
    assert failures(metrics, "template") == 1 and out.read_text() == good
    assert metrics.registry.get_sample_value("romana_publisher_config_stale") == 1

    # romanad moves on meanwhile: still no outage, still the old file.
    pub.client.allocate("b1", "h2", "t", "b")  # h2 takes half of h1's area
    pub.follow()
    assert pub.host_inputs is not None and pub.host_inputs.local == ("10.1.0.0/18",)
    assert not pub.publish() and out.read_text() == good
    assert failures(metrics, "template") == 2  # new inputs, new attempt, new failure

    # Renders, but BIRD would refuse it: stopped by `bird -p`.
    pub.opts.template.write_text(TEMPLATE + "protocol nonsense;\n")  # type: ignore[union-attr]
    assert not pub.publish()
    assert failures(metrics, "validate") == 1 and out.read_text() == good

    # Fixed: the current state goes out at once.
    pub.opts.template.write_text(TEMPLATE)  # type: ignore[union-attr]
    assert pub.publish()
    assert "route 10.1.0.0/18 blackhole;" in out.read_text()
    assert metrics.registry.get_sample_value("romana_publisher_config_stale") == 0
    assert metrics.registry.get_sample_value("romana_publisher_reloads_total") == 2


def test_best_matching_template_file_wins(romanad: Daemon, tmp_path: Path) -> None:
    pub, _ = publisher(romanad, tmp_path)
    pub.refresh()
    assert pub.publish()
    (tmp_path / "bird.conf.j2.192.168.1.0").write_text("# subnet\n" + TEMPLATE)
    assert pub.publish()
    assert pub.bird.output.read_text().startswith("# subnet")
    (tmp_path / "bird.conf.j2.192.168.1.11").write_text("# host\n" + TEMPLATE)
    assert pub.publish()
    assert pub.bird.output.read_text().startswith("# host")


def test_only_block_area_host_and_topology_facts_cause_a_reread(
    romanad: Daemon, tmp_path: Path
) -> None:
    pub, metrics = publisher(romanad, tmp_path)
    pub.refresh()
    assert pub.publish()
    before = pub.host_inputs
    client = pub.client
    client.allocate("a2", "h1", "t", "a")  # inside h1's existing block: no route change
    pub.follow()
    assert pub.host_inputs is before
    client.allocate("x1", "h2", "t", "a")  # h2 takes half of h1's area: h1's changes
    pub.follow()
    assert pub.host_inputs is not before
    assert pub.host_inputs is not None and pub.host_inputs.local == ("10.1.0.0/18",)
    before = pub.host_inputs
    client.allocate("x2", "h2", "t", "b")  # a new block of h2, in h2's area
    client.release("x2")  # ... freed again
    pub.follow()
    assert pub.host_inputs is before  # not h1's business
    client.allocate("b1", "h1", "t", "b")  # a new block of h1, inside its area
    pub.follow()
    assert pub.host_inputs is not None and pub.host_inputs.local == ("10.1.0.0/18",)
    rendered = metrics.registry.get_sample_value("romana_publisher_renders_total")
    assert pub.publish() and pub.publish()  # the second: nothing changed, nothing rendered
    assert (
        metrics.registry.get_sample_value("romana_publisher_renders_total") == (rendered or 0) + 1
    )
    client.release("a1")
    client.release("a2")  # h1's first block is empty and freed: its area stays h1's
    pub.follow()
    assert pub.host_inputs.local == ("10.1.0.0/18",)


def test_group_policy_announces_the_leaf_while_alone(romanad: Daemon, tmp_path: Path) -> None:
    from romana.publisher.announce import Policy

    client = RomanaClient(romanad.url)
    CLIENTS.append(client)
    client.add_host("h3", "192.168.2.13", {"rack": "rack-2"})
    client.allocate("c1", "h3", "t", "a")
    pub, _ = publisher(romanad, tmp_path, announce=Policy.GROUP)
    pub.opts.host = "h3"
    pub.refresh()
    assert pub.publish()
    assert "route 10.1.128.0/17 blackhole;" in pub.bird.output.read_text()
    client.add_host("h4", "192.168.2.14", {"rack": "rack-2"})  # no longer alone
    client.allocate("d1", "h4", "t", "a")  # and h4 takes half of h3's area
    pub.follow()
    assert pub.publish()
    text = pub.bird.output.read_text()
    assert "route 10.1.128.0/18 blackhole;" in text and "/17" not in text


def run_publisher(daemon_url: str, tmp_path: Path, **flags: object) -> subprocess.Popen[bytes]:
    """romana-publisher for h1 rendering TEMPLATE into tmp_path/bird.conf, with ``flags``
    (see ``romana_argv``)."""
    (tmp_path / "bird.conf.j2").write_text(TEMPLATE)
    log = (tmp_path / "publisher.log").open("ab")
    return subprocess.Popen(publisher_argv(daemon_url, tmp_path, **flags), stdout=log, stderr=log)


def publisher_argv(daemon_url: str, tmp_path: Path, **flags: object) -> list[str]:
    return romana_argv(
        "romana-publisher",
        host="h1",
        url=daemon_url,
        template=tmp_path / "bird.conf.j2",
        output=tmp_path / "bird.conf",
        poll_interval=0.5,
        **flags,
    )


def healthz_served(romanad_url: str) -> float:
    """How many ``GET /healthz`` romanad has answered (its request histogram's count)."""
    metrics = httpx.get(f"{romanad_url}/metrics", timeout=5).text
    found = re.search(
        r'^romana_request_seconds_count\{method="GET",route="/healthz"\} (\S+)$', metrics, re.M
    )
    return float(found.group(1)) if found else 0.0


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def test_once_mode_exit_codes(romanad: Daemon, tmp_path: Path) -> None:
    proc = run_publisher(romanad.url, tmp_path, once=True)
    assert proc.wait(30) == 0
    assert "route 10.1.0.0/17 blackhole;" in (tmp_path / "bird.conf").read_text()
    (tmp_path / "bird.conf.j2").write_text("{{ oops }")
    result = subprocess.run(
        publisher_argv(romanad.url, tmp_path, once=True),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "template syntax error" in result.stderr
    assert "route 10.1.0.0/17 blackhole;" in (tmp_path / "bird.conf").read_text()


def test_survives_romanad_absence_and_resyncs_after_compaction(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    proc = run_publisher(url, tmp_path, metrics_listen=f"127.0.0.1:{metrics_port}")
    daemon = Daemon(tmp_path / "data", "--snapshot-every", "3", "--keep-history", "0", port=port)
    try:

        def romanad_failures() -> float:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            m = re.search(r'^romana_publisher_failures_total\{stage="romanad"\} (\S+)$', text, re.M)
            return float(m.group(1)) if m else 0.0

        wait_until(
            lambda: _answers(metrics_port) and romanad_failures() >= 1,
            10,
            what="a romanad failure counted",
            interval=0.1,
        )
        assert proc.poll() is None  # waits, does not crash
        daemon.start()
        with RomanaClient(daemon.url) as client:
            seed(client)
            out = tmp_path / "bird.conf"
            wait_until(
                lambda: out.exists() and "10.1.0.0/17" in out.read_text(),
                15,
                what="the first configuration once romanad is up",
                interval=0.1,
            )
            # Freeze the publisher, let romanad compact past its revision, thaw it.
            seen = client.health()["revision"]
            wait_until(
                lambda: publisher_revision(metrics_port) >= seen,
                10,
                what="the publisher to follow the feed",
                interval=0.05,
            )
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                client.add_host("h3", "192.168.2.13", {"rack": "rack-2"})  # not h1's business
                for i in range(8):
                    client.allocate(f"n{i}", "h3", "t", f"s{i}")
                client.allocate("b1", "h2", "t", "b")  # last: h2 takes half of h1's area
                wait_until(
                    lambda: compacted(client, seen),
                    10,
                    what="romanad to compact past the publisher's revision",
                    interval=0.1,
                )
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            wait_until(
                lambda: "route 10.1.0.0/18 blackhole;" in out.read_text(),
                15,
                what="h1's smaller area after the resync",
                interval=0.1,
            )
        assert proc.poll() is None
    finally:
        code = stop(proc)
        daemon.stop()
    log = (tmp_path / "publisher.log").read_text()
    assert "re-reading" in log, log[-3000:]
    assert code == 0


def publisher_revision(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    m = re.search(r"^romana_publisher_revision (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def compacted(client: RomanaClient, since: int) -> bool:
    try:
        client.watch(since=since, timeout=0)
    except Resync:
        return True
    return False


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200
    except httpx.TransportError:
        time.sleep(0.05)
        return False


def test_a_removed_host_withdraws_everything(romanad: Daemon, tmp_path: Path) -> None:
    pub, _ = publisher(romanad, tmp_path)
    pub.refresh()
    assert pub.publish() and "route 10.1.0.0/17" in pub.bird.output.read_text()
    pub.client.remove_host("h1")  # its blocks are freed: another host may get them
    pub.follow()
    assert pub.publish()
    assert "route " not in pub.bird.output.read_text()


class Stop(BaseException):
    """Ends ``Publisher.run`` from inside a test (not an ``Exception``: never caught)."""


def test_an_unexpected_error_restarts_the_loop_and_health_shows_it(
    romanad: Daemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    slept: list[float] = []
    pub, metrics = publisher(romanad, tmp_path, poll=0.1)
    pub.sleep = slept.append
    real_watch = pub.client.watch
    script: list[object] = [ValueError("malformed answer"), real_watch, Stop()]
    seen_health: list[tuple[bool, dict[str, object]]] = []

    def watch(*args: object, **kw: object) -> object:
        step = script.pop(0)
        if isinstance(step, BaseException):
            seen_health.append(pub.health())
            raise step
        return real_watch(*args, **kw)  # type: ignore[arg-type]

    pub.client.watch = watch  # type: ignore[method-assign]
    with pytest.raises(Stop):
        pub.run()
    # The ValueError: logged with its traceback, counted, the loop started over.
    assert "unexpected error; restarting the loop" in caplog.text
    assert "ValueError: malformed answer" in caplog.text
    assert metrics.registry.get_sample_value("romana_publisher_loop_restarts_total") == 1
    assert len(slept) == 1
    assert pub.loop.restarts == 1 and pub.loop.last_error == "ValueError('malformed answer')"
    # After the restart a full round succeeded: running and healthy again.
    ok, health = seen_health[-1]
    assert ok and health["status"] == "ok" and health["config"] == "current"
    assert "route 10.1.0.0/17 blackhole;" in pub.bird.output.read_text()


def test_a_rewound_feed_keeps_the_configuration_until_restart(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    first = Daemon(tmp_path / "data-a", port=port).start()
    proc = None
    try:
        with RomanaClient(first.url) as client:
            seed(client)
        proc = run_publisher(first.url, tmp_path, metrics_listen=f"127.0.0.1:{http_port}")
        out = tmp_path / "bird.conf"
        wait_until(
            lambda: out.exists() and "10.1.0.0/17" in out.read_text(),
            15,
            what="the first configuration",
            interval=0.1,
        )
        good = out.read_text()
        first.stop()
        # Another store on the same address (a fresh data directory): h1 holds other blocks.
        second = Daemon(tmp_path / "data-b", port=port).start()
        try:
            with RomanaClient(second.url) as client:
                client.apply_topology(racks_topology(2))
                client.add_host("h2", "192.168.1.12", {"rack": "rack-1"})
                client.allocate("x", "h2", "t", "a")
                client.add_host("h1", "192.168.1.11", {"rack": "rack-1"})
                client.allocate("a1", "h1", "t", "a")

            def health() -> dict[str, object]:
                answer = httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=2)
                assert answer.status_code == 200  # reported, not a reason to restart it
                return answer.json()  # type: ignore[no-any-return]

            wait_until(
                lambda: health()["feed"] == "rewound", 15, what="feed: rewound", interval=0.1
            )
            assert "now serves store" in str(health()["feed_problem"])
            metrics = httpx.get(f"http://127.0.0.1:{http_port}/metrics").text
            assert "romana_publisher_feed_rewound 1.0" in metrics
            # Three more looks at the rewound feed (each starts with GET /healthz): still
            # the configuration of the first store.
            looked = healthz_served(second.url)
            wait_until(
                lambda: healthz_served(second.url) >= looked + 3,
                30,
                what="the publisher to look at the rewound feed three more times",
            )
            assert out.read_text() == good and proc.poll() is None
            # A restart accepts the store it finds.
            stop(proc)
            proc = run_publisher(second.url, tmp_path, metrics_listen=f"127.0.0.1:{http_port}")
            wait_until(
                lambda: out.read_text() != good, 15, what="the new store's config", interval=0.1
            )
            assert "route 10.1.0.0/17" not in out.read_text()
        finally:
            second.stop()
    finally:
        if proc is not None:
            stop(proc)
        first.stop()
    log = (tmp_path / "publisher.log").read_text()
    assert "keeping the last good state" in log
