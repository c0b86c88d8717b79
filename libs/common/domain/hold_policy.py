"""The hold-invoice rules (pure): when a held HTLC is settled, cancelled or looked after.

A hold invoice (classic API) is settled only once the code was delivered; without a code it is
cancelled by the hold deadline at the latest, whatever the provider says. The payments worker
(`services/payments/hold.py`) does the I/O and asks these functions what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from libs.common.domain.orders import Status

S = Status

# The hold deadline, walked from each status an order may still be in without a code: the
# guarded transitions to refund_pending (the release). Any other status moves nothing.
RELEASE_PATH: Final[Mapping[Status, tuple[Status, ...]]] = MappingProxyType(
    {
        S.PAID: (S.ALLOCATING_NUMBER, S.REFUND_PENDING),
        S.ALLOCATING_NUMBER: (S.REFUND_PENDING,),
        S.WAITING_FOR_SMS: (S.REFUND_PENDING,),
    }
)

# Paid hold orders whose HTLC must still be ACCEPTED at the node (no code yet).
HELD: Final = frozenset(RELEASE_PATH)

# Invoice states as LND names them.
ACCEPTED: Final = "ACCEPTED"
SETTLED: Final = "SETTLED"
CANCELED: Final = "CANCELED"


def release_path(status: Status) -> tuple[Status, ...]:
    """The transitions that take a held order without a code to refund_pending."""
    return RELEASE_PATH.get(status, ())


def hold_deadline_seconds(order_timeout_seconds: float, hold_grace_seconds: float) -> float:
    """When, from payment, the hold is released at the latest, code or not.

    The SMS deadline plus the grace the provider gets to cancel the activation: the docs
    promise the hold is released by 21 minutes at the latest (1200 s + 60 s).
    """
    return order_timeout_seconds + hold_grace_seconds


def may_settle(status: Status, sms_received_at: datetime | None) -> bool:
    """Whether the held payment may be taken: only once a code was delivered."""
    return status is S.CODE_RECEIVED and sms_received_at is not None


class Sweep(StrEnum):
    """What the hold sweep does with one open hold order."""

    CHECK_HELD = "check_held"  # no code yet: the HTLC must still be held at the node
    SETTLE = "settle"  # the code is recorded: settle at once
    RELEASE = "release"  # being refunded: cancel the invoice
    NOTHING = "nothing"


def sweep_step(status: Status) -> Sweep:
    """The sweep's step for an open hold order in this status."""
    if status in HELD:
        return Sweep.CHECK_HELD
    if status is S.CODE_RECEIVED:
        return Sweep.SETTLE
    if status is S.REFUND_PENDING:
        return Sweep.RELEASE
    return Sweep.NOTHING


def still_held(listed_state: str | None) -> bool:
    """Whether the node's pending list shows the HTLC held, so there is nothing to look up."""
    return listed_state == ACCEPTED


class AfterFailedCall(StrEnum):
    """What a settle or cancel that errored means, once the invoice was looked up."""

    SETTLED = "settled"  # the payment was taken
    CANCELED = "canceled"  # the HTLC went back to the payer
    RETRY = "retry"  # still held: try again


def after_failed_call(invoice_state: str) -> AfterFailedCall:
    """Classify the node's invoice state after a settle or cancel call failed."""
    if invoice_state == SETTLED:
        return AfterFailedCall.SETTLED
    if invoice_state == CANCELED:
        return AfterFailedCall.CANCELED
    return AfterFailedCall.RETRY


def htlc_gone(invoice_state: str) -> bool:
    """Drift: the node gave a held HTLC back (e.g. near its expiry); nothing can be settled."""
    return invoice_state == CANCELED
