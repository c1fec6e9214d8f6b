"""Progress lines of long commands on stderr (their results go to stdout as JSON)."""

from __future__ import annotations

import sys


def progress(command: str, message: str) -> None:
    """One line `[ditscale COMMAND] MESSAGE` on stderr, flushed (a Ray task's line reaches the driver's log)."""
    print(f"[ditscale {command}] {message}", file=sys.stderr, flush=True)
