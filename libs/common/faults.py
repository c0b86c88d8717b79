"""Crash points for fault tests: SIGKILL this process at a named step, once per stack.

Off unless SMS4SATS_CRASH_AT lists the point (comma-separated). SMS4SATS_CRASH_DIR holds
a marker per point so a restarted process does not crash again at the same place.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def crash_point(name: str) -> None:
    """Die here, like a power cut, if a fault test asked for it and it has not happened yet."""
    wanted = os.environ.get("SMS4SATS_CRASH_AT", "")
    if not wanted or name not in wanted.split(","):
        return
    marker = Path(os.environ.get("SMS4SATS_CRASH_DIR", ".")) / f"crashed-{name}"
    try:
        marker.touch(exist_ok=False)  # atomic: only one process ever crashes at a point
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
