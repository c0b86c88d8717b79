"""The order state machine: statuses, allowed transitions, and the rules on top (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum


class Status(StrEnum):
    """Every status an order can be in; the values are what the API shows."""

    PENDING_PAYMENT = "pending_payment"
    PAID = "paid"
    ALLOCATING_NUMBER = "allocating_number"
    WAITING_FOR_SMS = "waiting_for_sms"
    CODE_RECEIVED = "code_received"
    RENT_ACTIVE = "rent_active"
    COMPLETED = "completed"
    REFUND_PENDING = "refund_pending"
    REFUNDED = "refunded"
    REFUND_FAILED = "refund_failed"
    FAILED = "failed"
    EXPIRED = "expired"


class OrderType(StrEnum):
    """The kinds of order the API sells."""

    RECEIVE_SMS = "receive-sms"
    RECEIVE_SMS_REACTIVATE = "receive-sms-reactivate"
    RENT_NUMBER = "rent-number"


class PaymentMode(StrEnum):
    """How an order is paid: a plain invoice, a hold invoice (classic API) or a prepaid balance."""

    STANDARD = "standard"
    HOLD = "hold"
    BALANCE = "balance"


S = Status

# The whole life of an order. Anything not listed here is refused by every writer.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.PENDING_PAYMENT: frozenset({S.PAID, S.EXPIRED}),
    S.PAID: frozenset({S.ALLOCATING_NUMBER}),
    # FAILED only where nothing is owed; a paid refundable order goes to REFUND_PENDING.
    S.ALLOCATING_NUMBER: frozenset({S.WAITING_FOR_SMS, S.RENT_ACTIVE, S.REFUND_PENDING, S.FAILED}),
    # FAILED: a non-refundable order (reactivation) whose SMS never came.
    S.WAITING_FOR_SMS: frozenset({S.CODE_RECEIVED, S.REFUND_PENDING, S.FAILED}),
    S.CODE_RECEIVED: frozenset({S.COMPLETED}),
    # REFUND_PENDING: the provider ended the rental early; the unused time is paid back.
    S.RENT_ACTIVE: frozenset({S.COMPLETED, S.REFUND_PENDING}),
    S.REFUND_PENDING: frozenset({S.REFUNDED, S.REFUND_FAILED}),
    S.COMPLETED: frozenset(),
    S.REFUNDED: frozenset(),
    S.REFUND_FAILED: frozenset(),
    S.FAILED: frozenset(),
    S.EXPIRED: frozenset(),
}

TERMINAL: frozenset[Status] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)

# The refund rule of the API (docs/api.md): only receive-sms is refunded when no SMS comes (a
# reactivation whose SMS never came fails unrefunded); every paid type is refunded when no
# number could be allocated.
REFUNDABLE_WITHOUT_SMS: frozenset[OrderType] = frozenset({OrderType.RECEIVE_SMS})

# Once an SMS has arrived the customer has what they paid for: no cancel, no refund.
SMS_ARRIVED: frozenset[Status] = frozenset({S.CODE_RECEIVED, S.COMPLETED})


class InvalidTransition(Exception):
    """A writer asked for a transition the table does not allow."""

    def __init__(self, current: Status, target: Status) -> None:
        super().__init__(f"order cannot go from {current} to {target}")
        self.current = current
        self.target = target


def can_transition(current: Status, target: Status) -> bool:
    """Tell whether the table allows current -> target."""
    return target in TRANSITIONS[current]


def check_transition(current: Status, target: Status) -> None:
    """Raise InvalidTransition unless the table allows current -> target."""
    if not can_transition(current, target):
        raise InvalidTransition(current, target)


def is_terminal(status: Status) -> bool:
    """Tell whether an order in this status will never change again."""
    return status in TERMINAL


class CancelRefused(Exception):
    """A customer cancel that the rules refuse; code is the API error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_customer_cancel(
    *,
    order_type: OrderType,
    status: Status,
    paid_at: datetime | None,
    now: datetime,
    min_age: timedelta,
) -> None:
    """Raise CancelRefused unless a customer may cancel this order now."""
    if order_type is not OrderType.RECEIVE_SMS:
        raise CancelRefused("VALIDATION_ERROR", "only receive-sms orders can be cancelled")
    if status in SMS_ARRIVED:
        raise CancelRefused("CANCEL_SMS_RECEIVED", "an SMS already arrived; cannot cancel")
    if status is not S.WAITING_FOR_SMS or paid_at is None:
        raise CancelRefused(
            "CANCEL_NOT_ALLOWED", f"an order in status {status} cannot be cancelled"
        )
    if now - paid_at < min_age:
        wait = int((paid_at + min_age - now).total_seconds()) + 1
        raise CancelRefused("CANCEL_TOO_SOON", f"cancel is possible {wait} s from now")


def check_another_sms(*, order_type: OrderType, status: Status, payment_mode: PaymentMode) -> None:
    """Raise CancelRefused unless the customer may ask for another SMS on the number now."""
    if order_type is OrderType.RENT_NUMBER or payment_mode is not PaymentMode.STANDARD:
        raise CancelRefused("VALIDATION_ERROR", "another SMS is only for L402 verification orders")
    if status is not S.CODE_RECEIVED:
        raise CancelRefused(
            "ANOTHER_SMS_NOT_ALLOWED",
            f"another SMS needs an order in code_received; this one is {status}",
        )


@dataclass(frozen=True, slots=True)
class Order:
    """One order as stored: every column of `orders`, typed (built only by the order store)."""

    id: str
    type: OrderType
    status: Status
    payment_mode: PaymentMode
    service: str
    country_id: int
    price_sats: int
    provider_cost_usd: Decimal
    payment_hash: bytes
    payment_request: str
    invoice_expires_at: datetime
    created_at: datetime
    updated_at: datetime
    finish_attempts: int = 0
    refund_invoice: str | None = None
    refund_payment_hash: bytes | None = None
    activation_id: str | None = None
    phone_number: str | None = None
    code: str | None = None
    sms_text: str | None = None
    sms_received_at: datetime | None = None
    next_poll_at: datetime | None = None
    paid_at: datetime | None = None
    deadline_at: datetime | None = None
    finished_at: datetime | None = None
    # Hold invoices (classic API): the preimage we chose and what the HTLC carried.
    preimage: bytes | None = None
    amt_paid_msat: int | None = None
    htlc_expiry_height: int | None = None
    settled_at: datetime | None = None
    account_id: int | None = None
    rent_hours: int | None = None
    rent_ends_at: datetime | None = None
    reactivates: str | None = None
    another_sms_at: datetime | None = None
    client_addr: str | None = None
    finish_due_at: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether this order will never change again."""
        return self.status in TERMINAL

    @property
    def is_hold(self) -> bool:
        """Whether it is paid by a hold invoice (settled only once the code is delivered)."""
        return self.payment_mode is PaymentMode.HOLD

    @property
    def is_balance(self) -> bool:
        """Whether it is paid from a prepaid account's balance."""
        return self.payment_mode is PaymentMode.BALANCE


@dataclass(frozen=True, slots=True)
class NewOrder:
    """What a new order is created with; the store adds the status and the clock's columns."""

    id: str
    type: OrderType
    service: str
    country_id: int
    price_sats: int
    provider_cost_usd: Decimal
    payment_hash: bytes
    payment_request: str
    # None for an order with no invoice (paid from a balance): the database's now().
    invoice_expires_at: datetime | None
    payment_mode: PaymentMode = PaymentMode.STANDARD
    refund_invoice: str | None = None
    refund_payment_hash: bytes | None = None
    rent_hours: int | None = None
    reactivates: str | None = None
    preimage: bytes | None = None
    account_id: int | None = None
