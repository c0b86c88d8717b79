"""When an invoice pays an order or a top-up (pure): the node's invoice state, read once."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from libs.common.domain.orders import PaymentMode, Status

# Invoice states as LND names them.
OPEN: Final = "OPEN"
ACCEPTED: Final = "ACCEPTED"
SETTLED: Final = "SETTLED"
CANCELED: Final = "CANCELED"


def may_pay(invoice_state: str) -> bool:
    """Whether an invoice in this state can pay anything (settled, or an accepted hold)."""
    return invoice_state in (SETTLED, ACCEPTED)


class Paid(StrEnum):
    """Whether an invoice update pays its order."""

    YES = "yes"
    NO = "no"
    UNDERPAID = "underpaid"  # paid less than the price: the order stays pending, loudly


def pays_order(
    *,
    invoice_state: str,
    amt_paid_msat: int,
    status: Status,
    payment_mode: PaymentMode,
    price_sats: int,
) -> Paid:
    """Whether this invoice makes the order paid.

    A standard invoice counts once SETTLED; a hold invoice once ACCEPTED (its HTLC is locked
    in and we hold the preimage). Only an order still waiting for its payment is paid.
    """
    if not may_pay(invoice_state) or status is not Status.PENDING_PAYMENT:
        return Paid.NO
    if payment_mode is PaymentMode.STANDARD and invoice_state != SETTLED:
        return Paid.NO
    if amt_paid_msat < price_sats * 1000:
        return Paid.UNDERPAID
    return Paid.YES


class TopUp(StrEnum):
    """What the top-up sweep does with a pending funding, given its invoice."""

    WAIT = "wait"  # open: not paid yet
    SETTLE = "settle"  # accepted: settle first, then credit
    CREDIT = "credit"  # settled: credit the balance, once
    EXPIRE = "expire"  # canceled: never paid


def top_up_step(invoice_state: str) -> TopUp:
    """The sweep's step for a top-up whose invoice is in this state."""
    return {ACCEPTED: TopUp.SETTLE, SETTLED: TopUp.CREDIT, CANCELED: TopUp.EXPIRE}.get(
        invoice_state, TopUp.WAIT
    )
