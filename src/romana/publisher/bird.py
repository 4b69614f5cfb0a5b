"""Putting a configuration into a running BIRD without ever breaking it.

The order is what makes it safe:

1. the new text goes to a temporary file next to the output and ``bird -p -c`` parses it
   (a rejected text is kept as ``OUTPUT.rejected`` for the operator, the output is not
   touched);
2. the parsed file is renamed over the output: readers (and a BIRD restarting at that
   moment) see the old file or the new one, never half of one;
3. BIRD is told to re-read it over its control socket (what ``birdc configure`` does).
   BIRD reconfigures in place: a changed ``protocol static`` announces and withdraws only
   the routes that changed, sessions whose configuration did not change stay up. If BIRD
   still refuses the file, the previous one is put back, so the file always matches what
   BIRD runs. If BIRD cannot be reached (not started yet, restarting), the new file stays
   (BIRD reads it when it starts) and the reload is retried.

The control socket protocol is BIRD's own: numbered reply lines, ``DDDD-`` continued,
``DDDD `` final (``doc/reply_codes`` in BIRD's sources).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from romana.errors import BirdError

RECONFIGURED = 3
IN_PROGRESS = 4
QUEUED = 5
SHUTTING_DOWN = 6
STATUS = 13
CONFIG_ERROR = 8002


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str


class BirdControl:
    """A client of BIRD's control socket, one connection per command."""

    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        self.path = str(path)
        self.timeout = timeout

    def command(self, line: str) -> list[Reply]:
        """Send one command; the reply lines up to and including the final one."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            reader = sock.makefile("r", encoding="utf-8", errors="replace")
            self._read_reply(reader)  # "0001 BIRD x.y.z ready."
            sock.sendall(line.encode() + b"\n")
            return self._read_reply(reader)

    @staticmethod
    def _read_reply(reader: TextIO) -> list[Reply]:
        replies: list[Reply] = []
        code = 0
        for raw in reader:
            text = raw.rstrip("\n")
            if text.startswith("+"):  # spontaneous message (log echo): not ours
                continue
            if text.startswith(" "):  # continuation of the previous code
                replies.append(Reply(code, text[1:]))
                continue
            if len(text) >= 5 and text[:4].isdigit() and text[4] in "- ":
                code = int(text[:4])
                replies.append(Reply(code, text[5:]))
                if text[4] == " ":
                    return replies
                continue
            replies.append(Reply(code, text))
        raise ConnectionError("BIRD closed the control connection mid-reply")

    def configure(self, timeout: float = 30.0) -> None:
        """Re-read the configuration file; returns once BIRD runs it (raises BirdError)."""
        try:
            replies = self.command("configure")
        except OSError as exc:
            raise BirdError(
                "reload", f"cannot reach BIRD at {self.path}: {exc}", retry=True
            ) from exc
        codes = {r.code for r in replies}
        if CONFIG_ERROR in codes or any(r.code >= 8000 for r in replies):
            raise BirdError(
                "reload",
                "BIRD refused the configuration: "
                + "; ".join(r.text for r in replies if r.code >= 8000),
            )
        if SHUTTING_DOWN in codes:
            raise BirdError("reload", "BIRD is shutting down", retry=True)
        if RECONFIGURED in codes:
            return
        if codes & {IN_PROGRESS, QUEUED}:
            # Protocols are being restarted for the new configuration: wait until BIRD
            # reports itself up and running again.
            self._wait_configured(timeout)
            return
        raise BirdError(
            "reload",
            "unexpected answer to configure: "
            + "; ".join(f"{r.code:04d} {r.text}" for r in replies),
        )

    def _wait_configured(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status = self.command("show status")
            except OSError as exc:
                raise BirdError("reload", f"lost BIRD at {self.path}: {exc}", retry=True) from exc
            if any(r.code == STATUS and "up and running" in r.text for r in status):
                return
            time.sleep(0.1)
        raise BirdError("reload", f"BIRD still reconfiguring after {timeout:.0f} s", retry=True)


class BirdConfig:
    """The output file of one BIRD, and the reload of that BIRD (``socket`` optional)."""

    def __init__(
        self, output: Path, socket_path: str | Path | None = None, bird: str = "bird"
    ) -> None:
        self.output = output
        self.control = BirdControl(socket_path) if socket_path else None
        self.bird = bird
        self.reload_pending = False

    @property
    def rejected(self) -> Path:
        return self.output.with_name(self.output.name + ".rejected")

    def current(self) -> str | None:
        try:
            return self.output.read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def check(self, text: str) -> None:
        """Parse ``text`` with ``bird -p`` without installing it (raises BirdError)."""
        tmp = self._validated_temp(text)
        tmp.unlink()

    def apply(self, text: str) -> bool:
        """Validate, install atomically, reload. False when nothing had to be done."""
        previous = self.current()
        if text == previous and not self.reload_pending:
            return False
        if text != previous:
            tmp = self._validated_temp(text)
            try:
                os.replace(tmp, self.output)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise BirdError("write", f"cannot write {self.output}: {exc}") from exc
            with contextlib.suppress(OSError):
                self.rejected.unlink()
        if self.control is None:
            return True
        self.reload_pending = True
        try:
            self.control.configure()
        except BirdError as exc:
            if not exc.retry and previous is not None and text != previous:
                # BIRD runs the previous configuration: keep the file saying so.
                self._write_plain(previous)
                self.reload_pending = False
            raise
        self.reload_pending = False
        return True

    def _validated_temp(self, text: str) -> Path:
        """``text`` in a temporary file next to the output, parsed by ``bird -p``."""
        directory = self.output.parent
        try:
            fd, name = tempfile.mkstemp(
                prefix=f".{self.output.name}.", suffix=".tmp", dir=directory
            )
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(name, 0o644)
        except OSError as exc:
            raise BirdError("write", f"cannot write in {directory}: {exc}") from exc
        tmp = Path(name)
        try:
            result = subprocess.run(
                [self.bird, "-p", "-c", str(tmp)], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            tmp.unlink(missing_ok=True)
            raise BirdError("validate", f"cannot run {self.bird} -p: {exc}") from exc
        if result.returncode != 0:
            message = (result.stderr.strip() or result.stdout.strip()).replace(
                str(tmp), str(self.rejected)
            )
            with contextlib.suppress(OSError):
                os.replace(tmp, self.rejected)
            tmp.unlink(missing_ok=True)
            raise BirdError(
                "validate",
                f"BIRD rejects the rendered configuration (kept as {self.rejected}): {message}",
            )
        return tmp

    def _write_plain(self, text: str) -> None:
        fd, name = tempfile.mkstemp(
            prefix=f".{self.output.name}.", suffix=".tmp", dir=self.output.parent
        )
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(name, 0o644)
        os.replace(name, self.output)
