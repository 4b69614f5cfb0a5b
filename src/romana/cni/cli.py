"""The console scripts ``romana-cni`` and ``romana-ipam``: the plugin's protocol in Python
(:mod:`romana.cni.shim`, for trying things out: nodes run ``plugin.c``), and
``romana-cni install|uninstall`` (:mod:`romana.cni.install`).

The dispatch lives here, not in the shim, so that the shim imports nothing of the project.
The installer and the version line are imported only when asked for: a CNI call through
these scripts pays for the shim alone.
"""

from __future__ import annotations

import os
import sys

from romana.cni import shim


def main() -> None:
    """``romana-cni``: the full plugin; ``romana-cni install ...`` (outside a CNI call, where
    a runtime always sets ``CNI_COMMAND``) installs or uninstalls it."""
    _version_flag("romana-cni")
    if len(sys.argv) > 1 and not os.environ.get("CNI_COMMAND"):
        from romana.cni.install import main as install

        sys.exit(install(sys.argv[1:]))
    sys.exit(shim.run("full"))


def main_ipam() -> None:
    """``romana-ipam``: the IPAM-only plugin."""
    _version_flag("romana-ipam")
    sys.exit(shim.run("ipam"))


def _version_flag(program: str) -> None:
    """``--version``: the one version of the project (``romana.__version__``)."""
    if sys.argv[1:] == ["--version"]:
        from romana.buildinfo import version_line

        print(version_line(program))
        sys.exit(0)
