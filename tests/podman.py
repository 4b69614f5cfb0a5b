"""podman with a storage root of its own under a temporary directory: the image loaded
there, containers run from :class:`tests.podspec.ContainerSpec` s, everything removed on
:meth:`Podman.close` (containers, images, the storage, its mounts), so nothing leaks into
the machine's own podman storage.

Flags this machine needs (MACHINE-NOTES): cgroupfs (no systemd), a file events backend,
and rlimits no higher than the VM lets runc set (it lacks CAP_SYS_RESOURCE).
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .podspec import ContainerSpec

MACHINE_RUN_FLAGS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


class Podman:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        # podman refuses a runroot path longer than 50 characters
        self.runroot = Path(tempfile.mkdtemp(prefix="romana-podman-"))
        self.base = [
            "podman",
            "--root", str(workdir / "root"),
            "--runroot", str(self.runroot),
            "--tmpdir", str(workdir / "tmp"),
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
        ]  # fmt: skip
        self.containers: list[str] = []
        self.outputs: dict[str, str] = {}  # an init container's name -> its stdout

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {done.stderr.strip()}")
        return done

    def load(self, archive: Path, *names: str) -> str:
        """The OCI archive's image (its id), tagged with every name in ``names`` (so a
        manifest's image reference resolves here without a registry)."""
        image_id = self("pull", "--quiet", f"oci-archive:{archive}", timeout=600).stdout.strip()
        for name in names:
            self("tag", image_id, name)
        return image_id

    def image_config(self, image: str) -> dict[str, Any]:
        inspected = json.loads(self("image", "inspect", image).stdout)[0]
        return inspected["Config"]  # type: ignore[no-any-return]

    def run(self, spec: ContainerSpec, *extra: str) -> str:
        """Start ``spec`` detached (its name: pod-container); an init container instead
        runs to its end and must exit 0, as kubelet waits for it."""
        if spec.init:
            self.containers.append(spec.container_name)
            done = self("run", *MACHINE_RUN_FLAGS, *extra, *spec.podman_args(), check=False)
            if done.returncode != 0:
                raise RuntimeError(
                    f"init container {spec.name} exited {done.returncode}: "
                    f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
                )
            self("rm", "--force", spec.container_name)
            self.containers.remove(spec.container_name)
            self.outputs[spec.container_name] = done.stdout
            return ""
        self.containers.append(spec.container_name)
        self("run", "--detach", *MACHINE_RUN_FLAGS, *extra, *spec.podman_args())
        return spec.container_name

    def run_once(self, *args: str) -> str:
        """``podman run --rm ARGS`` to its end (exit 0): its output."""
        return self("run", "--rm", *MACHINE_RUN_FLAGS, *args).stdout

    def run_pod(self, specs: list[ContainerSpec], *extra: str) -> list[str]:
        """Init containers in order, then the containers: their names."""
        names = [self.run(s, *extra) for s in specs]
        return [n for n in names if n]

    def pid(self, name: str) -> int:
        return int(self("inspect", "--format", "{{.State.Pid}}", name).stdout.strip())

    def running(self, name: str) -> bool:
        done = self("inspect", "--format", "{{.State.Running}}", name, check=False)
        return done.stdout.strip() == "true"

    def logs(self, name: str) -> str:
        done = self("logs", name, check=False)
        return (done.stdout + done.stderr)[-4000:]

    def exec(self, name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self("exec", name, *cmd, check=check)

    def stop(self, name: str, timeout: int = 10) -> int:
        """SIGTERM (SIGKILL after ``timeout`` s), as kubelet stops a container: its exit."""
        self("stop", "--time", str(timeout), name, timeout=timeout + 60)
        return int(self("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip())

    def remove(self, name: str) -> None:
        self("rm", "--force", "--time", "2", name, check=False)
        if name in self.containers:
            self.containers.remove(name)

    def close(self) -> None:
        for name in list(self.containers):
            self.remove(name)
        # removes images and the storage's own mounts (overlay layers) as well
        self("system", "reset", "--force", check=False, timeout=300)
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(self.runroot, ignore_errors=True)


ROOT = Path(__file__).resolve().parent.parent


def build_image(timeout: float = 1500) -> dict[str, Any]:
    """``scripts/build_image.py`` (skipped when its stamp matches): its JSON summary.

    Under an exclusive lock on ``build/image.lock``: test modules in two pytest processes
    (tests/test_image.py, tests/test_runtime_pods.py) would otherwise both see a missing
    stamp and build into the same directory at once, each deleting the other's output."""
    lock = ROOT / "build" / "image.lock"
    lock.parent.mkdir(exist_ok=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "build_image.py")],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/build_image.py: {done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
