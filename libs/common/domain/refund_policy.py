"""The refund rules (pure): how long to wait on the node, when to retry, when to give up.

The payer (`services/payments/refunds.py`) does the I/O; every decision it takes about a
refund is one of these functions, with the clock passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from libs.common.core.config import Settings
from libs.common.domain.pricing import refund_fee_limit_sat
from libs.common.domain.refund_invoices import (
    REFUND_INVOICE_EXPIRES_TOO_SOON,
    REFUND_LEASE_SLACK_SECONDS,
    REFUND_MAX_BACKOFF_SECONDS,
    REFUND_NODE_WAIT_SLACK_SECONDS,
    RefundInvoiceError,
    check_refund_invoice,
)

# How long a track waits for an in-flight payment to end before leaving it to the lease.
TRACK_WAIT_SECONDS: Final = 3.0
# When the node cannot say whether a refund we are about to give up on was paid: look again
# this much later instead of giving up blind.
GIVE_UP_UNKNOWN_RETRY_SECONDS: Final = 30.0
# The statuses LND reports for an outgoing payment that has ended.
SUCCEEDED: Final = "SUCCEEDED"
FAILED: Final = "FAILED"


@dataclass(frozen=True, slots=True)
class RefundTiming:
    """How long one attempt may take: on the node, under its claim, tracking in-flight ones."""

    wait: float
    lease: float
    track_wait: float


def refund_timing(timeout_seconds: float) -> RefundTiming:
    """The waits of an attempt whose payment times out after `timeout_seconds`.

    An attempt waits on the node a little past the payment timeout; its claim lasts a little
    longer, so a payment held longer (a hold invoice, a stuck HTLC) stays in_flight and is
    tracked again once the lease runs out. A track only looks (at most TRACK_WAIT_SECONDS):
    waiting would let refunds held by their receivers keep the money connections busy.
    """
    wait = timeout_seconds + REFUND_NODE_WAIT_SLACK_SECONDS
    return RefundTiming(
        wait=wait,
        lease=wait + REFUND_LEASE_SLACK_SECONDS,
        track_wait=min(wait, TRACK_WAIT_SECONDS),
    )


def fee_limit(amount_sats: int, settings: Settings) -> int:
    """The routing fee we pay on top of a refund of `amount_sats` (the customer gets it all)."""
    return refund_fee_limit_sat(
        amount_sats,
        ppm=settings.refund_fee_limit_ppm,
        ceiling_sat=settings.refund_fee_limit_sat,
        floor_sat=settings.refund_fee_limit_floor_sat,
    )


def unpayable_reason(payment_request: str, *, currency: str, now: int) -> str | None:
    """Why the customer's refund invoice can no longer be paid at `now`, or None if it can."""
    try:
        check_refund_invoice(
            payment_request,
            currency=currency,
            now=now,
            min_validity_seconds=1,  # expiring this second counts as expired
        )
    except RefundInvoiceError as exc:
        if exc.code == REFUND_INVOICE_EXPIRES_TOO_SOON:
            return "the refund invoice expired"
        return f"refund invoice unusable: {exc.message}"
    return None


class Next(StrEnum):
    """What to do with a refund once the node said what it knows of its payment."""

    SEND = "send"  # the node knows no payment, or only a failed one: (re)send
    RECORD_PAID = "record_paid"  # the money went out: record it, refund the order
    RETRY = "retry"  # the payment failed: count it and retry later (or give up)
    WAIT = "wait"  # still in flight: keep the claim; the lease brings it back


def after_track(status: str | None) -> Next:
    """The step after asking the node about our payment before sending (None: never seen)."""
    if status is None or status == FAILED:
        return Next.SEND
    return Next.RECORD_PAID if status == SUCCEEDED else Next.WAIT


def after_send(status: str) -> Next:
    """The step after a send whose outcome the node reported."""
    if status == SUCCEEDED:
        return Next.RECORD_PAID
    return Next.RETRY if status == FAILED else Next.WAIT


class LastLook(StrEnum):
    """What the last look before giving up decides."""

    RECORD_PAID = "record_paid"  # paid after all
    GIVE_UP = "give_up"  # the node confirms nothing was paid
    WAIT = "wait"  # in flight after all: the lease brings it back


def before_giving_up(status: str | None) -> LastLook:
    """Give up only when the node confirms no payment (None: it never saw one)."""
    if status == SUCCEEDED:
        return LastLook.RECORD_PAID
    if status is None or status == FAILED:
        return LastLook.GIVE_UP
    return LastLook.WAIT


@dataclass(frozen=True, slots=True)
class Unpaid:
    """The decision after an attempt that paid nothing."""

    give_up: bool
    # Attempts counted once this decision is written.
    attempts: int
    # Whether the claim's attempt is given back (it never reached the node).
    give_back: bool
    # Seconds until the next attempt (0 when giving up).
    delay: float


def after_unpaid_attempt(
    *,
    attempts: int,
    new_attempt: bool,
    counted: bool,
    definite: bool,
    max_attempts: int,
    base_seconds: float,
) -> Unpaid:
    """Retry with a doubling backoff, or give up once `max_attempts` definite failures counted.

    `attempts` is the count after the claim; `new_attempt` whether that claim counted one (a
    re-claim after a lease does not). counted=False gives back the claim's attempt, if it took
    one: nothing reached the node, so a busy pool can never end an order refund_failed. Only a
    definite failure (the node confirms no payment) may end in a give-up.
    """
    give_back = not counted and new_attempt
    counted_attempts = attempts - 1 if give_back else attempts
    if definite and counted_attempts >= max_attempts:
        return Unpaid(give_up=True, attempts=counted_attempts, give_back=False, delay=0.0)
    delay = min(base_seconds * 2 ** max(counted_attempts - 1, 0), REFUND_MAX_BACKOFF_SECONDS)
    return Unpaid(give_up=False, attempts=counted_attempts, give_back=give_back, delay=delay)
