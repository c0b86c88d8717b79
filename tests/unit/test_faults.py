"""Crash points: every one the code names is catalogued, and a marker disarms it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from libs.common.core.faults import CRASH_POINTS, crash_point

ROOT = Path(__file__).resolve().parents[2]


def test_every_crash_point_in_the_code_is_catalogued() -> None:
    named = re.findall(
        r'crash_point\("([^"]+)"\)',
        "\n".join(p.read_text() for p in (ROOT / "services").rglob("*.py")),
    )
    assert set(named) == set(CRASH_POINTS)


def test_a_point_not_listed_or_already_marked_does_not_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMS4SATS_CRASH_AT", "gateway.order_invoiced")
    monkeypatch.setenv("SMS4SATS_CRASH_DIR", str(tmp_path))
    crash_point("scheduler.timers_claimed")  # not listed
    (tmp_path / "crashed-gateway.order_invoiced").touch()  # disarmed by its marker
    crash_point("gateway.order_invoiced")


def test_an_armed_point_kills_the_process_once(tmp_path: Path) -> None:
    code = "from libs.common.core.faults import crash_point; crash_point('gateway.order_invoiced')"
    env = {"SMS4SATS_CRASH_AT": "gateway.order_invoiced", "SMS4SATS_CRASH_DIR": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env)
    assert first.returncode == -9  # SIGKILL, like a power cut
    assert (tmp_path / "crashed-gateway.order_invoiced").exists()
    again = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env)
    assert again.returncode == 0  # a restarted process passes the point
