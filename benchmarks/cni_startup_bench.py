"""Start-up of the CNI plugin nodes run (static C, ``romana/cni/plugin.c``) against the
Python shim it replaced, run as ``romana-cni install`` used to install it: a launcher
executed by this venv's ``python -IS`` that imports ``shim`` from its bytecode cache.
Prints one JSON object.

Each sample is one ``posix_spawn`` of the plugin to its exit, the way a runtime runs a
plugin (environment + config on stdin), alternating between the two so drift in the
machine's load hits both alike:

- ``VERSION``: answered by the plugin itself, so pure start-up;
- ``ADD``: a round trip to a trivial agent (a Unix socket server in this process that
  reads the request and answers ``0\\n{}``), so start-up + the protocol, without any work.

Also reported: ``python -IS -c pass`` (the floor of anything run by the interpreter), the
executable's size, whether it is static, and every answer checked (``answers_ok``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import py_compile
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.elf import is_static  # noqa: E402  (the check the tests use)

SHIM = ROOT / "src" / "romana" / "cni" / "shim.py"
PLUGIN = ROOT / "src" / "romana" / "cni" / "bin" / "romana-cni-plugin"
# What `romana-cni install` wrote before the static executable (see git history).
LAUNCHER = """\
#!{python} -IS
import posix, sys
sys.path.append({directory!r})
import shim
posix._exit(shim.run("full"))
"""
AGENT_REPLY = b"0\n{}\n"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 3),
        "p95": round(percentile(values, 0.95), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def spawn(argv: list[str], env: dict[str, str], stdin: bytes) -> tuple[float, int, bytes]:
    """(milliseconds from spawn to exit, exit status, stdout) of one run."""
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    os.write(in_write, stdin)  # a few hundred bytes: fits the pipe's buffer
    os.close(in_write)
    actions = [
        (os.POSIX_SPAWN_DUP2, in_read, 0),
        (os.POSIX_SPAWN_DUP2, out_write, 1),
        (os.POSIX_SPAWN_CLOSE, out_read),
    ]
    started = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
    os.close(in_read)
    os.close(out_write)
    chunks = []
    while chunk := os.read(out_read, 65536):
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    elapsed = (time.perf_counter() - started) * 1000
    os.close(out_read)
    return elapsed, os.waitstatus_to_exitcode(status), b"".join(chunks)


class TrivialAgent:
    """Answers every request with AGENT_REPLY; counts them."""

    def __init__(self, path: Path) -> None:
        self.requests = 0
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(64)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                while conn.recv(65536):
                    pass
                self.requests += 1
                conn.sendall(AGENT_REPLY)

    def close(self) -> None:
        self.server.close()


def bench(iterations: int, warmup: int) -> dict[str, Any]:
    if not PLUGIN.is_file():
        sys.exit(f"cni_startup_bench: {PLUGIN} is not built: run `make plugin`")
    with tempfile.TemporaryDirectory(prefix="cni-startup-") as tmp_dir:
        tmp = Path(tmp_dir)
        (tmp / "shim.py").write_bytes(SHIM.read_bytes())
        py_compile.compile(str(tmp / "shim.py"), doraise=True)  # as install did
        launcher = tmp / "romana-shim"
        launcher.write_text(LAUNCHER.format(python=sys.executable, directory=str(tmp)))
        launcher.chmod(0o755)
        static = tmp / "romana"
        static.write_bytes(PLUGIN.read_bytes())
        static.chmod(0o755)
        agent = TrivialAgent(tmp / "agent.sock")
        conf = json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "net",
                "type": "romana",
                "agent_socket": str(tmp / "agent.sock"),
                "agent_wait_seconds": 0,
            }
        ).encode()
        env = {
            "CNI_CONTAINERID": "0123456789abcdef",
            "CNI_NETNS": "/var/run/netns/pod",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(tmp),
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod",
        }
        plugins = {"static": [str(static)], "shim": [str(launcher)]}
        times: dict[str, dict[str, list[float]]] = {
            name: {"VERSION": [], "ADD": []} for name in plugins
        }
        ok: dict[str, dict[str, int]] = {name: {"VERSION": 0, "ADD": 0} for name in plugins}
        floor: list[float] = []
        try:
            for round_number in range(warmup + iterations):
                measured = round_number >= warmup
                for name, argv in plugins.items():
                    for command in ("VERSION", "ADD"):
                        elapsed, status, out = spawn(argv, {**env, "CNI_COMMAND": command}, conf)
                        good = status == 0 and (
                            out == b"{}\n" if command == "ADD" else b"supportedVersions" in out
                        )
                        if measured:
                            times[name][command].append(elapsed)
                            ok[name][command] += good
                if measured:
                    floor.append(spawn([sys.executable, "-IS", "-c", "pass"], {}, b"")[0])
        finally:
            agent.close()
        requests = agent.requests
    ratio = {
        command: round(
            statistics.median(times["shim"][command]) / statistics.median(times["static"][command]),
            1,
        )
        for command in ("VERSION", "ADD")
    }
    return {
        "benchmark": "cni_startup",
        "iterations": iterations,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        "static": {
            "plugin": "romana/cni/plugin.c, static",
            "bytes": PLUGIN.stat().st_size,
            "static_executable": is_static(PLUGIN),
            "version_ms": summary(times["static"]["VERSION"]),
            "add_round_trip_ms": summary(times["static"]["ADD"]),
            "answers_ok": ok["static"],
        },
        "shim": {
            "plugin": "launcher: python -IS, shim.py from its bytecode cache",
            "version_ms": summary(times["shim"]["VERSION"]),
            "add_round_trip_ms": summary(times["shim"]["ADD"]),
            "answers_ok": ok["shim"],
        },
        "python_IS_pass_ms": summary(floor),
        "shim_over_static_p50": ratio,
        "agent_requests": requests - warmup * len(plugins),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--iterations", type=int, default=300, help="samples per plugin")
    parser.add_argument("--warmup", type=int, default=5, help="rounds not measured")
    args = parser.parse_args()
    print(json.dumps(bench(args.iterations, args.warmup), indent=2))


if __name__ == "__main__":
    main()
