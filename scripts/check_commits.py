#!/usr/bin/env python3
"""Commit messages since the code review (14da496) follow CONTRIBUTING.md: a subject of at
most 72 characters, then a blank line and a body saying why; no "wip" commits. Merge
commits are left out: the commits they bring in carry the bodies.

    python scripts/check_commits.py [REVISION_RANGE]   (default: 14da496..HEAD)

Exits 1 listing every commit that does not. Outside a git checkout (an unpacked sdist) there
is no history to check: it says so and exits 0.
"""

from __future__ import annotations

import subprocess
import sys

# The last commit of the old style (subjects up to 828 characters, no bodies): its history
# stays as it is; everything after it is held to the rule.
SINCE = "14da496"
SUBJECT_MAX = 72


def problems(log: str) -> list[str]:
    found = []
    for record in log.split("\x00"):
        if not record.strip():
            continue
        commit, _, message = record.strip("\n").partition("\n")
        subject, _, rest = message.partition("\n")
        body = rest.strip()
        if len(subject) > SUBJECT_MAX:
            found.append(f"{commit}: subject of {len(subject)} characters (at most {SUBJECT_MAX})")
        if not body:
            found.append(f"{commit}: no body saying why ({subject[:50]!r})")
        elif not rest.startswith("\n"):
            found.append(f"{commit}: no blank line after the subject")
        if subject.lower().startswith("wip"):
            found.append(f"{commit}: a work-in-progress commit ({subject[:50]!r})")
    return found


def main() -> int:
    span = sys.argv[1] if len(sys.argv) > 1 else f"{SINCE}..HEAD"
    try:
        log = subprocess.run(
            ["git", "log", "--no-merges", "--format=%h%n%B%x00", span],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        print(f"check_commits: no git history to check ({str(detail).strip()})")
        return 0
    found = problems(log)
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
