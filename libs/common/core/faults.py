"""Crash points for fault tests: SIGKILL this process at a named step, once per stack.

Off unless SMS4SATS_CRASH_AT lists the point (comma-separated). SMS4SATS_CRASH_DIR holds
a marker per point so a restarted process does not crash again at the same place; a test
that pre-creates the markers arms a point later by deleting its marker.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

# Every named point, with the money state it leaves behind when the process dies there.
CRASH_POINTS = {
    "payments.settle_seen": "the invoice settled at the node; the paid status not saved",
    "payments.refund_sent": "the refund payment succeeded; nothing recorded",
    "payments.hold_settled": "the held payment was settled; completed not saved",
    "provider.number_bought": "the provider sold us a number; we did not record it",
    "provider.activation_finished": "finished at the provider; the finish not recorded",
    "gateway.order_invoiced": "L402 invoice made at the node; order row not committed",
    "gateway.hold_order_invoiced": "classic hold invoice made; order row not committed",
    "gateway.balance_debited": "prepaid debit and paid order written; not committed",
    "gateway.funding_invoiced": "top-up hold invoice made; funding row not written",
    "scheduler.timers_claimed": "a batch of due timers claimed and fired; not committed",
}


def marker(name: str) -> Path:
    """The file whose existence means the point has fired (or is disarmed) in this stack."""
    return Path(os.environ.get("SMS4SATS_CRASH_DIR", ".")) / f"crashed-{name}"


def crash_point(name: str) -> None:
    """Die here, like a power cut, if a fault test asked for it and it has not happened yet."""
    wanted = os.environ.get("SMS4SATS_CRASH_AT", "")
    if not wanted or name not in wanted.split(","):
        return
    try:
        marker(name).touch(exist_ok=False)  # atomic: only one process ever crashes at a point
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
