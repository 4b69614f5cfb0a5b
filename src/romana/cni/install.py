"""`romana-cni install`: put the plugin executables into a CNI bin directory.

The plugin is one static executable (``plugin.c``, built by ``make plugin`` into
``romana/cni/bin/romana-cni-plugin``): it needs nothing on the node, no Python and no
shared library, so it runs on any Linux node (Ubuntu 22.04's Python 3.10, RHEL 9's 3.9,
COS, Talos and Flatcar with none). ``install`` copies it under two names, ``romana`` and
``romana-ipam`` (the name chooses the mode), each replaced atomically (write, then rename),
so a runtime never executes a half-written plugin, even while pods are being created.

For a node from a container (the agent DaemonSet), ``--host-root /host`` writes under that
mount while every path given stays the host's. ``--conf-dir`` also writes the network
configuration list there, last, atomically. ``romana-cni uninstall`` removes what
``install`` wrote (plugins, conflist) and the ``romana.d/`` directory of versions that
installed a Python launcher.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

PLUGIN = Path(__file__).resolve().parent / "bin" / "romana-cni-plugin"
NAMES = {"full": "romana", "ipam": "romana-ipam"}  # plugin.c takes its mode from its name
OLD_SHIM_DIR = "romana.d"  # the Python launcher's copy of the shim, before the executable
CONFLIST = "10-romana.conflist"
DEFAULT_AGENT_SOCKET = "/run/romana/cni.sock"


class NotBuilt(OSError):
    """The plugin executable is missing from the package: it is built, not written."""


def plugin_executable() -> Path:
    if not PLUGIN.is_file():
        raise NotBuilt(
            f"the CNI plugin executable {PLUGIN} was not built: run `make plugin` "
            "(needs musl-gcc or gcc)"
        )
    return PLUGIN


def conflist(agent_socket: str, network: str = "romana") -> str:
    document = {
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [{"type": "romana", "agent_socket": agent_socket}],
    }
    return json.dumps(document, indent=2) + "\n"


def write_atomically(target: Path, data: bytes, mode: int) -> None:
    """Write, then rename: a reader sees the old file or the new one, never a part."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())  # a crash right after the rename leaves a whole file
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install(
    bin_dir: Path,
    host_root: Path | None = None,
    conf_dir: Path | None = None,
    agent_socket: str = DEFAULT_AGENT_SOCKET,
) -> list[Path]:
    """Copy the executable as ``romana`` and ``romana-ipam``; with ``conf_dir``, write the
    conflist last (the runtime uses a network only once its plugins are in place)."""
    executable = plugin_executable().read_bytes()
    written = []
    for name in NAMES.values():
        target = _under(host_root, bin_dir / name)
        write_atomically(target, executable, 0o755)
        written.append(target)
    if conf_dir is not None:
        target = _under(host_root, conf_dir / CONFLIST)
        write_atomically(target, conflist(agent_socket).encode(), 0o644)
        written.append(target)
    return written


def uninstall(bin_dir: Path, host_root: Path | None, conf_dir: Path | None) -> list[Path]:
    """Remove what :func:`install` wrote, the conflist first (no new pod is sent to a
    plugin about to go); what is already gone is skipped."""
    removed = []
    targets = [conf_dir / CONFLIST] if conf_dir is not None else []
    targets += [bin_dir / name for name in NAMES.values()]
    for path in (_under(host_root, t) for t in targets):
        if path.exists():
            path.unlink()
            removed.append(path)
    old_shim_dir = _under(host_root, bin_dir / OLD_SHIM_DIR)
    if old_shim_dir.is_dir():
        shutil.rmtree(old_shim_dir)
        removed.append(old_shim_dir)
    return removed


def _under(root: Path | None, path: Path) -> Path:
    return path if root is None else root / path.relative_to(path.anchor)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="romana-cni install",
        description="Install the romana CNI plugins (romana, romana-ipam) into a CNI bin dir "
        "(or remove them: uninstall).",
    )
    parser.add_argument("command", choices=["install", "uninstall"])
    parser.add_argument(
        "--bin-dir",
        type=Path,
        default=Path("/opt/cni/bin"),
        help="the runtime's CNI plugin directory (default %(default)s)",
    )
    parser.add_argument(
        "--host-root",
        type=Path,
        help="the host's root as mounted here (e.g. /host); paths stay the host's",
    )
    parser.add_argument(
        "--conf-dir", type=Path, help=f"also write {CONFLIST} here (e.g. /etc/cni/net.d)"
    )
    parser.add_argument(
        "--agent-socket",
        default=DEFAULT_AGENT_SOCKET,
        help="the agent's CNI socket, in the conflist (default %(default)s)",
    )
    # Manifests of versions that installed a Python launcher pass --python: accepted and
    # ignored, so a new image under an old manifest still installs.
    parser.add_argument("--python", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.python is not None:
        print("romana-cni: --python is ignored: the plugin is a static executable", file=sys.stderr)
    try:
        if args.command == "uninstall":
            for path in uninstall(args.bin_dir, args.host_root, args.conf_dir):
                print(f"removed {path}")
            return 0
        written = install(args.bin_dir, args.host_root, args.conf_dir, args.agent_socket)
    except OSError as exc:
        print(f"romana-cni {args.command}: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"installed {path}")
    return 0
