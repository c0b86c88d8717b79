"""The dev stack launcher restarts dead parts, except one a fault test holds down."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sandbox.devstack import Stack


def test_a_dead_process_is_restarted_unless_held_down(tmp_path: Path) -> None:
    stack = Stack(tmp_path, {})
    stack.spawn("lnsim", [sys.executable, "-c", "pass"], dict(os.environ))
    first = stack.procs["lnsim"]
    first.wait()
    (tmp_path / "hold").mkdir()
    (tmp_path / "hold" / "lnsim").touch()
    assert stack.restart_dead() == []  # held: stays down
    (tmp_path / "hold" / "lnsim").unlink()
    assert stack.restart_dead() == ["lnsim (exit 0)"]
    assert stack.procs["lnsim"] is not first
    stack.procs["lnsim"].wait()
    for log in stack.logs.values():
        log.close()
