"""A refund owed to a customer: the intent written before any payment is sent (pure)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class RefundStatus(StrEnum):
    """Where paying a refund stands."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Refund:
    """One refund row, typed (built only by the refund store)."""

    order_id: str
    payment_request: str
    payment_hash: bytes
    amount_sats: int
    status: RefundStatus
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime
    lease_until: datetime | None = None
    claim_id: uuid.UUID | None = None
    last_error: str | None = None
    fee_sat: int | None = None
    paid_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RefundClaim:
    """A refund claimed for one attempt, and whether the claim counted a new attempt."""

    refund: Refund
    # False for a re-claim after a lease ran out: it took no attempt, so it may give none back.
    new_attempt: bool
