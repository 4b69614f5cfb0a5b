"""`romana-cni install`: put the plugin executables into a CNI bin directory.

Each installed file is a six-line launcher: it runs this project's interpreter with
``-IS`` (isolated, no ``site``), appends the directory of ``romana/cni/shim.py`` to the
module path and runs the shim from its cached bytecode. Measured here: ~9.5 ms to the
shim's answer, against ~11.5 ms for a copy of the shim as the script itself (Python
compiles a script's source on every run) and ~40 ms for a console-script wrapper (it
imports ``site`` and the package). The launcher depends on this interpreter and this
installation of the package, like a console script does: re-run ``install`` after
moving either. Files are replaced atomically (write, then rename), so a runtime never
executes a half-written plugin.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import py_compile
import sys
import tempfile
from pathlib import Path

from romana.cni import shim

LAUNCHER = """\
#!{python} -IS
# romana CNI plugin ({mode}), installed by `romana-cni install`; the code: {source}
import posix, sys
sys.path.append({directory!r})
import shim
posix._exit(shim.run({mode!r}))
"""


def launcher(python: str, mode: str) -> str:
    source = Path(shim.__file__).resolve()
    return LAUNCHER.format(python=python, mode=mode, source=source, directory=str(source.parent))


def compile_shim() -> None:
    """Write the shim's bytecode cache now, so no plugin run has to compile it."""
    # On a read-only installation Python compiles it in memory on each run instead.
    with contextlib.suppress(OSError, py_compile.PyCompileError):
        py_compile.compile(shim.__file__, doraise=True)


def install(bin_dir: Path, python: str, names: dict[str, str]) -> list[Path]:
    """Write one executable per mode (``{"full": "romana", "ipam": "romana-ipam"}``)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    compile_shim()
    written = []
    for mode, name in names.items():
        target = bin_dir / name
        fd, tmp = tempfile.mkstemp(dir=bin_dir, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(launcher(python, mode))
            os.chmod(tmp, 0o755)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="romana-cni install",
        description="Install the romana CNI plugins (romana, romana-ipam) into a CNI bin dir.",
    )
    parser.add_argument("command", choices=["install"])
    parser.add_argument(
        "--bin-dir",
        type=Path,
        default=Path("/opt/cni/bin"),
        help="the runtime's CNI plugin directory (default %(default)s)",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for the plugins (default: this one, %(default)s)",
    )
    parser.add_argument("--name", default="romana", help="full plugin (default %(default)s)")
    parser.add_argument(
        "--ipam-name", default="romana-ipam", help="IPAM-only plugin (default %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        written = install(args.bin_dir, args.python, {"full": args.name, "ipam": args.ipam_name})
    except OSError as exc:
        print(f"romana-cni install: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"installed {path}")
    return 0
