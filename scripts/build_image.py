#!/usr/bin/env python3
"""Build the one Romana image (every process, `ip`, `nft`, BIRD) from Debian packages and
PyPI only, with no container registry and no Docker: ``make image``.

1. ``make plugin`` (the self-contained CNI executable, when the Makefile has that target);
2. a wheel of the project built from a copy of exactly the hashed inputs, and every
   dependency downloaded as wheels by the host's pip (its index is the PyPI mirror);
3. a Debian bookworm root filesystem by ``mmdebstrap --variant=minbase`` with the runtime
   packages, the wheels installed offline into a venv at /opt/romana inside it (chroot),
   then pip, apt caches, docs, man pages and locales removed;
4. ``umoci``: an OCI image layout tagged with romana's version, then an OCI archive of it.

Output under ``build/image/`` (gitignored): ``layout/`` (OCI layout, tag = version),
``romana-VERSION.oci.tar`` (OCI archive: ``podman load``, ``ctr images import``,
``skopeo copy oci-archive:...``), ``stamp.json``. A build whose inputs (``src/``,
``pyproject.toml``, ``README.md``, this script) hash as the stamp says is skipped. The last
line printed is one JSON object: version, sizes, build seconds, whether it was cached.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
MIRRORS = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
]
# What the processes run at run time: python3 for every Romana process; nft for the
# agent's policy table; bird2 (bird, birdc) for romana-publisher; iproute2 (ip) and
# conntrack for an operator's `kubectl exec` while troubleshooting; ca-certificates for
# TLS to the API server and an etcd store. usr-is-merged answers init-system-helpers'
# "usrmerge | usr-is-merged" (mmdebstrap merges /usr already): usrmerge would pull perl.
PACKAGES = ["python3", "python3-venv", "iproute2", "nftables", "bird2", "conntrack",
            "ca-certificates", "usr-is-merged"]  # fmt: skip
PURGE = ["usrmerge", "libfile-find-rule-perl", "libnumber-compare-perl", "libtext-glob-perl",
         "perl", "libperl5.36", "perl-modules-5.36"]  # fmt: skip
# dpkg never unpacks these: documentation, man pages and translations are dead weight.
DPKG_EXCLUDES = ["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
                 "/usr/share/locale/*", "/usr/share/lintian/*"]  # fmt: skip
VENV = "/opt/romana"
USER_ID = 65532  # romanad and the listener run as it; the agent's manifest makes it root
PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INPUTS = ["src", "pyproject.toml", "README.md", "scripts/build_image.py"]
# Build outputs that live in src/ but are made from sources that are hashed already.
NOT_INPUTS = re.compile(r"(__pycache__|\.pyc$|\.egg-info|/cni/bin/romana-cni-plugin$)")


def version() -> str:
    text = (ROOT / "src/romana/__init__.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if found is None:
        raise SystemExit("no __version__ in src/romana/__init__.py")
    return found.group(1)


def input_files() -> list[Path]:
    files: list[Path] = []
    for name in INPUTS:
        path = ROOT / name
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        files += [p for p in found if not NOT_INPUTS.search(str(p))]
    return files


def inputs_hash() -> str:
    digest = hashlib.sha256()
    for path in input_files():
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def run(*cmd: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    line = " ".join(cmd)
    print("+", line if len(line) < 400 else line[:400] + " ...", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=cwd, env=env)


def du(path: Path) -> int:
    """Bytes of the regular files under ``path`` (hard links once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(top, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def make_plugin() -> None:
    """The CNI executable goes into the wheel as package data; build it when the Makefile
    knows how (``make -n`` fails for an unknown target)."""
    known = subprocess.run(["make", "-n", "plugin"], cwd=ROOT, capture_output=True)
    if known.returncode == 0:
        run("make", "-s", "plugin", cwd=ROOT)


def build_wheels(work: Path, python: str) -> Path:
    """The project's wheel, from a copy of the inputs (an in-tree build would write into
    the shared tree), and every dependency's wheel next to it."""
    source, wheels = work / "source", work / "wheels"
    for name in ("src", "pyproject.toml", "README.md"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, source / name)
    run(python, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(source))
    (wheel,) = wheels.glob("romana-*.whl")
    run(python, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "-d", str(wheels),
        str(wheel))  # fmt: skip
    return wheels


def build_rootfs(rootfs: Path, wheels: Path) -> None:
    inside = "/tmp/romana-wheels"
    passwd = f"romana:x:{USER_ID}:{USER_ID}:romana:/nonexistent:/usr/sbin/nologin"
    hooks = [
        f'mkdir -p "$1{inside}"',
        f"copy-in {' '.join(str(w) for w in sorted(wheels.iterdir()))} {inside}",
        f'chroot "$1" python3 -m venv {VENV}',
        f'chroot "$1" {VENV}/bin/pip install --quiet --no-index --no-cache-dir'
        f" --find-links {inside} romana",
        f'chroot "$1" {VENV}/bin/pip uninstall --quiet --yes pip setuptools',
        # apt resolves init-system-helpers' "usrmerge | usr-is-merged" to usrmerge even
        # with usr-is-merged asked for; usrmerge alone pulls perl (~50 MB): purge them
        f'chroot "$1" dpkg --purge {" ".join(PURGE)}',
        f'rm -rf "$1{inside}" "$1/root/.cache"',
        f"echo '{passwd}' >> \"$1/etc/passwd\"",
        f"echo 'romana:x:{USER_ID}:' >> \"$1/etc/group\"",
        # apt's caches and lists and the venv's seed wheels are not needed to run
        'rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*',
        'rm -rf "$1"/usr/share/python-wheels "$1"/var/cache/debconf/*-old',
    ]
    cmd = ["mmdebstrap", "--quiet", "--mode=root", "--variant=minbase", "--format=directory",
           f"--include={','.join(PACKAGES)}"]  # fmt: skip
    cmd += [f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES]
    cmd += ["--dpkgopt=path-include=/usr/share/doc/*/copyright"]  # licences stay
    cmd += [f"--customize-hook={h}" for h in hooks]
    cmd += [SUITE, str(rootfs), *MIRRORS]
    run(*cmd)
    # device nodes made by the root mode: every runtime mounts its own /dev
    for node in (rootfs / "dev").iterdir():
        if node.is_dir() and not node.is_symlink():
            shutil.rmtree(node)
        else:
            node.unlink()


def build_layout(rootfs: Path, layout: Path, bundle: Path, tag: str) -> None:
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:{tag}")
    run("umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle))
    (bundle / "rootfs").rmdir()
    rootfs.rename(bundle / "rootfs")
    run("umoci", "repack", "--image", f"{layout}:{tag}", str(bundle))
    # No entrypoint and no cmd: every manifest names its program in `args`, which then
    # is the whole command line, as with `podman run IMAGE romanad ...`.
    run("umoci", "config", "--image", f"{layout}:{tag}",
        "--config.user", f"{USER_ID}:{USER_ID}", "--config.env", f"PATH={PATH}",
        "--config.workingdir", "/", "--author", "Romana for Python",
        "--config.label", f"org.opencontainers.image.version={tag}",
        "--config.label", "org.opencontainers.image.title=romana",
        "--manifest.annotation", f"org.opencontainers.image.version={tag}",
        "--history.created_by", "scripts/build_image.py")  # fmt: skip
    run("umoci", "gc", "--layout", str(layout))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "image")
    parser.add_argument("--force", action="store_true", help="rebuild even if the stamp matches")
    parser.add_argument("--python", default=sys.executable, help="python with pip, for wheels")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    tag = version()
    archive = out / f"romana-{tag}.oci.tar"
    stamp = out / "stamp.json"
    started = time.monotonic()
    digest = inputs_hash()
    old = json.loads(stamp.read_text()) if stamp.exists() else {}
    if not args.force and old.get("inputs") == digest and archive.exists():
        print(json.dumps({**old, "cached": True, "seconds": round(time.monotonic() - started, 2)}))
        return 0
    make_plugin()
    out.mkdir(parents=True, exist_ok=True)
    for stale in (stamp, archive, out / "layout"):
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="romana-image-", dir=out) as tmp:
        work = Path(tmp)
        wheels = build_wheels(work, args.python)
        build_rootfs(work / "rootfs", wheels)
        unpacked = du(work / "rootfs")
        build_layout(work / "rootfs", out / "layout", work / "bundle", tag)
        # an OCI archive is a tar of the layout; its blobs are gzipped layers already
        partial = archive.with_suffix(".partial")
        run("tar", "--sort=name", "-cf", str(partial), "-C", str(out / "layout"), ".")
        partial.rename(archive)
    result = {
        "image": f"romana:{tag}",
        "version": tag,
        "archive": str(archive.relative_to(ROOT)) if archive.is_relative_to(ROOT) else str(archive),
        "layout": f"{out / 'layout'}:{tag}",
        "archive_bytes": archive.stat().st_size,
        "unpacked_bytes": unpacked,
        "inputs": digest,
        "built_seconds": round(time.monotonic() - started, 1),
    }
    stamp.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({**result, "cached": False, "seconds": result["built_seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
