"""The order state machine's table and rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.common.domain.orders import (
    REFUNDABLE_WITHOUT_SMS,
    TERMINAL,
    TRANSITIONS,
    CancelRefused,
    InvalidTransition,
    OrderType,
    PaymentMode,
    Status,
    can_transition,
    check_another_sms,
    check_customer_cancel,
    check_transition,
    is_terminal,
)

S = Status


def test_every_status_is_in_the_table() -> None:
    assert set(TRANSITIONS) == set(Status)
    for targets in TRANSITIONS.values():
        assert targets <= set(Status)


def test_terminal_states_are_exactly_the_seed_ones() -> None:
    assert TERMINAL == {S.COMPLETED, S.REFUNDED, S.REFUND_FAILED, S.FAILED, S.EXPIRED}
    for status in TERMINAL:
        assert is_terminal(status)
        for target in Status:
            assert not can_transition(status, target)


def test_every_status_reaches_a_terminal_state() -> None:
    for start in Status:
        seen, frontier = {start}, [start]
        while frontier:
            for nxt in TRANSITIONS[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert seen & TERMINAL, f"{start} can never finish"


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.PENDING_PAYMENT, S.PAID),
        (S.PENDING_PAYMENT, S.EXPIRED),
        (S.PAID, S.ALLOCATING_NUMBER),
        (S.ALLOCATING_NUMBER, S.WAITING_FOR_SMS),
        (S.ALLOCATING_NUMBER, S.REFUND_PENDING),
        (S.WAITING_FOR_SMS, S.CODE_RECEIVED),
        (S.WAITING_FOR_SMS, S.REFUND_PENDING),
        (S.CODE_RECEIVED, S.COMPLETED),
        (S.REFUND_PENDING, S.REFUNDED),
        (S.REFUND_PENDING, S.REFUND_FAILED),
    ],
)
def test_the_order_life_of_the_reference_is_allowed(current: Status, target: Status) -> None:
    check_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.PENDING_PAYMENT, S.REFUND_PENDING),  # nothing was paid
        (S.PENDING_PAYMENT, S.COMPLETED),
        (S.CODE_RECEIVED, S.REFUND_PENDING),  # the code was delivered: no refund
        (S.WAITING_FOR_SMS, S.COMPLETED),  # not without a code
        (S.REFUNDED, S.REFUND_PENDING),  # never a second refund
        (S.PAID, S.PENDING_PAYMENT),
    ],
)
def test_forbidden_transitions_raise(current: Status, target: Status) -> None:
    with pytest.raises(InvalidTransition):
        check_transition(current, target)


NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MIN_AGE = timedelta(minutes=3)


def _cancel(
    status: Status, paid_ago: timedelta | None, kind: OrderType = OrderType.RECEIVE_SMS
) -> None:
    check_customer_cancel(
        order_type=kind,
        status=status,
        paid_at=None if paid_ago is None else NOW - paid_ago,
        now=NOW,
        min_age=MIN_AGE,
    )


def test_cancel_allowed_after_the_window_while_waiting() -> None:
    _cancel(S.WAITING_FOR_SMS, timedelta(minutes=3))


@pytest.mark.parametrize(
    ("status", "paid_ago", "kind", "code"),
    [
        (
            S.WAITING_FOR_SMS,
            timedelta(minutes=2, seconds=59),
            OrderType.RECEIVE_SMS,
            "CANCEL_TOO_SOON",
        ),
        (S.CODE_RECEIVED, timedelta(minutes=5), OrderType.RECEIVE_SMS, "CANCEL_SMS_RECEIVED"),
        (S.COMPLETED, timedelta(minutes=5), OrderType.RECEIVE_SMS, "CANCEL_SMS_RECEIVED"),
        (S.WAITING_FOR_SMS, timedelta(minutes=5), OrderType.RENT_NUMBER, "VALIDATION_ERROR"),
        (S.PENDING_PAYMENT, None, OrderType.RECEIVE_SMS, "CANCEL_NOT_ALLOWED"),
        (S.REFUNDED, timedelta(minutes=30), OrderType.RECEIVE_SMS, "CANCEL_NOT_ALLOWED"),
    ],
)
def test_cancel_refusals(
    status: Status, paid_ago: timedelta | None, kind: OrderType, code: str
) -> None:
    with pytest.raises(CancelRefused) as err:
        _cancel(status, paid_ago, kind)
    assert err.value.code == code


def test_only_receive_sms_is_refunded_when_no_sms_comes() -> None:
    assert REFUNDABLE_WITHOUT_SMS == {OrderType.RECEIVE_SMS}
    # A reactivation that gets no SMS fails; a receive-sms one is refunded.
    assert can_transition(S.WAITING_FOR_SMS, S.FAILED)
    assert can_transition(S.WAITING_FOR_SMS, S.REFUND_PENDING)
    # Every type can be refunded when no number was allocated.
    assert can_transition(S.ALLOCATING_NUMBER, S.REFUND_PENDING)
    # A rental runs until its end; once active only the time the provider took away is paid
    # back (the customer cannot cancel one: see the cancel rules).
    assert TRANSITIONS[S.RENT_ACTIVE] == {S.COMPLETED, S.REFUND_PENDING}


@pytest.mark.parametrize("order_type", [OrderType.RECEIVE_SMS, OrderType.RECEIVE_SMS_REACTIVATE])
def test_another_sms_is_allowed_on_a_code_received_l402_order(order_type: OrderType) -> None:
    check_another_sms(
        order_type=order_type, status=S.CODE_RECEIVED, payment_mode=PaymentMode.STANDARD
    )


@pytest.mark.parametrize(
    ("order_type", "status", "mode", "code"),
    [
        (OrderType.RECEIVE_SMS, S.WAITING_FOR_SMS, "standard", "ANOTHER_SMS_NOT_ALLOWED"),
        (OrderType.RECEIVE_SMS, S.COMPLETED, "standard", "ANOTHER_SMS_NOT_ALLOWED"),
        (OrderType.RECEIVE_SMS, S.REFUNDED, "standard", "ANOTHER_SMS_NOT_ALLOWED"),
        (OrderType.RENT_NUMBER, S.RENT_ACTIVE, "standard", "VALIDATION_ERROR"),
        (OrderType.RECEIVE_SMS, S.CODE_RECEIVED, "hold", "VALIDATION_ERROR"),
    ],
)
def test_another_sms_is_refused_otherwise(
    order_type: OrderType, status: Status, mode: str, code: str
) -> None:
    with pytest.raises(CancelRefused) as refused:
        check_another_sms(order_type=order_type, status=status, payment_mode=PaymentMode(mode))
    assert refused.value.code == code
