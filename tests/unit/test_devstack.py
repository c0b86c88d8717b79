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


def test_activation_webhooks_point_the_simulator_at_our_sms_webhook(tmp_path: Path) -> None:
    stack = Stack(tmp_path, {"gateway": 18080})
    secret = {"SMS4SATS_WEBHOOK_SECRET": "s3cret/+="}

    assert stack.sim_webhook_args(secret) == []  # off by default: polling only
    assert stack.sim_webhook_args({**secret, "SMS4SATS_ACTIVATION_WEBHOOKS": "false"}) == []
    on = {**secret, "SMS4SATS_ACTIVATION_WEBHOOKS": "true"}
    assert stack.sim_webhook_args(on) == [
        "--webhook-url",
        "http://127.0.0.1:18080/v2/l402/webhooks/sms?token=s3cret%2F%2B%3D",
    ]
    # The stack's own secret when the caller set none; a URL of the caller's own is kept.
    made = stack.sim_webhook_args({"SMS4SATS_ACTIVATION_WEBHOOKS": "1"})
    assert made[1].endswith("?token=" + stack.webhook_secret())
    assert stack.sim_webhook_args({**on, "SMSSIM_WEBHOOK_URL": "http://elsewhere/hook"}) == []
