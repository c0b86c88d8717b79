"""Unit tests of the payments rules that are pure functions: refunds, holds, invoices."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise

import pytest

from libs.common.core.config import Settings
from libs.common.domain import hold_policy as hold
from libs.common.domain import payment_policy as pay
from libs.common.domain import refund_policy as refund
from libs.common.domain.orders import PaymentMode, Status, can_transition
from libs.common.domain.refund_invoices import REFUND_MAX_BACKOFF_SECONDS
from tests.unit.payments_kit import refund_invoice

S = Status


def unpaid(attempts: int, **kw: object) -> refund.Unpaid:
    args: dict[str, object] = {
        "attempts": attempts,
        "new_attempt": True,
        "counted": True,
        "definite": True,
        "max_attempts": 5,
        "base_seconds": 2.0,
    }
    args.update(kw)
    return refund.after_unpaid_attempt(**args)  # type: ignore[arg-type]


def test_a_failed_attempt_backs_off_doubling_up_to_the_cap() -> None:
    assert [unpaid(n).delay for n in range(1, 5)] == [2.0, 4.0, 8.0, 16.0]
    assert unpaid(4, max_attempts=100, base_seconds=100.0).delay == REFUND_MAX_BACKOFF_SECONDS
    assert not unpaid(4).give_up


def test_the_refund_gives_up_after_max_definite_failures_only() -> None:
    assert unpaid(5).give_up and unpaid(6).give_up
    assert unpaid(5).attempts == 5
    # The node could not say whether it paid: never a give-up, however many attempts.
    assert not unpaid(9, definite=False).give_up


def test_an_attempt_that_never_reached_the_node_is_given_back_once() -> None:
    back = unpaid(1, counted=False, definite=False)
    assert (back.give_back, back.attempts, back.give_up) == (True, 0, False)
    # A re-claim after a lease took no attempt, so it gives none back.
    reclaim = unpaid(3, counted=False, definite=False, new_attempt=False)
    assert (reclaim.give_back, reclaim.attempts) == (False, 3)


def test_the_node_is_asked_before_every_send_and_before_giving_up() -> None:
    assert refund.after_track(None) is refund.Next.SEND
    assert refund.after_track("FAILED") is refund.Next.SEND
    assert refund.after_track("SUCCEEDED") is refund.Next.RECORD_PAID
    assert refund.after_track("IN_FLIGHT") is refund.Next.WAIT
    assert refund.after_send("FAILED") is refund.Next.RETRY
    assert refund.after_send("IN_FLIGHT") is refund.Next.WAIT
    assert refund.before_giving_up(None) is refund.LastLook.GIVE_UP
    assert refund.before_giving_up("FAILED") is refund.LastLook.GIVE_UP
    assert refund.before_giving_up("SUCCEEDED") is refund.LastLook.RECORD_PAID
    assert refund.before_giving_up("IN_FLIGHT") is refund.LastLook.WAIT


def test_the_attempt_waits_and_the_claim_outlives_them() -> None:
    timing = refund.refund_timing(60)
    assert (timing.wait, timing.lease, timing.track_wait) == (65.0, 75.0, 3.0)
    assert refund.refund_timing(1).track_wait == 3.0
    assert refund.refund_timing(-4.5).track_wait == 0.5  # never waits longer than the attempt


def test_the_fee_limit_is_a_share_of_the_amount_within_floor_and_ceiling() -> None:
    settings = Settings()
    assert refund.fee_limit(100, settings) == 2  # 2 % of 100
    assert refund.fee_limit(10, settings) == 2  # the floor
    assert refund.fee_limit(100_000, settings) == 10  # the ceiling


def test_an_expired_or_foreign_refund_invoice_cannot_be_paid() -> None:
    now = int(datetime.now(UTC).timestamp())
    valid, _ = refund_invoice(expires_in=600)
    expired, _ = refund_invoice(expires_in=-1)
    assert refund.unpayable_reason(valid, currency="bcrt", now=now) is None
    assert refund.unpayable_reason(expired, currency="bcrt", now=now) == (
        "the refund invoice expired"
    )
    reason = refund.unpayable_reason(valid, currency="bc", now=now)
    assert reason is not None and reason.startswith("refund invoice unusable:")


def test_the_hold_deadline_table_walks_every_codeless_status_to_refund_pending() -> None:
    assert hold.release_path(S.PAID) == (S.ALLOCATING_NUMBER, S.REFUND_PENDING)
    assert hold.release_path(S.ALLOCATING_NUMBER) == (S.REFUND_PENDING,)
    assert hold.release_path(S.WAITING_FOR_SMS) == (S.REFUND_PENDING,)
    for status in set(S) - hold.HELD:
        assert hold.release_path(status) == ()
    for start, path in hold.RELEASE_PATH.items():
        steps = [start, *path]
        assert all(can_transition(a, b) for a, b in pairwise(steps))
    assert hold.hold_deadline_seconds(1200, 60.0) == 1260.0


def test_the_sweep_step_of_each_open_hold_status() -> None:
    assert {s: hold.sweep_step(s) for s in S} == {
        **{s: hold.Sweep.NOTHING for s in S},
        S.PAID: hold.Sweep.CHECK_HELD,
        S.ALLOCATING_NUMBER: hold.Sweep.CHECK_HELD,
        S.WAITING_FOR_SMS: hold.Sweep.CHECK_HELD,
        S.CODE_RECEIVED: hold.Sweep.SETTLE,
        S.REFUND_PENDING: hold.Sweep.RELEASE,
    }
    assert hold.still_held("ACCEPTED") and not hold.still_held(None)
    assert hold.htlc_gone("CANCELED") and not hold.htlc_gone("ACCEPTED")


def test_a_hold_is_settled_only_with_a_delivered_code() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    assert hold.may_settle(S.CODE_RECEIVED, at)
    assert not hold.may_settle(S.CODE_RECEIVED, None)
    assert not hold.may_settle(S.WAITING_FOR_SMS, at)
    assert hold.after_failed_call("SETTLED") is hold.AfterFailedCall.SETTLED
    assert hold.after_failed_call("CANCELED") is hold.AfterFailedCall.CANCELED
    assert hold.after_failed_call("ACCEPTED") is hold.AfterFailedCall.RETRY


@pytest.mark.parametrize(
    ("state", "mode", "paid_msat", "status", "expected"),
    [
        ("SETTLED", PaymentMode.STANDARD, 2_500_000, S.PENDING_PAYMENT, pay.Paid.YES),
        ("ACCEPTED", PaymentMode.STANDARD, 2_500_000, S.PENDING_PAYMENT, pay.Paid.NO),
        ("ACCEPTED", PaymentMode.HOLD, 2_500_000, S.PENDING_PAYMENT, pay.Paid.YES),
        ("OPEN", PaymentMode.HOLD, 0, S.PENDING_PAYMENT, pay.Paid.NO),
        ("SETTLED", PaymentMode.STANDARD, 2_499_999, S.PENDING_PAYMENT, pay.Paid.UNDERPAID),
        ("SETTLED", PaymentMode.STANDARD, 2_500_000, S.PAID, pay.Paid.NO),
        ("CANCELED", PaymentMode.HOLD, 2_500_000, S.PENDING_PAYMENT, pay.Paid.NO),
    ],
)
def test_which_invoice_pays_its_order(
    state: str, mode: PaymentMode, paid_msat: int, status: Status, expected: pay.Paid
) -> None:
    verdict = pay.pays_order(
        invoice_state=state,
        amt_paid_msat=paid_msat,
        status=status,
        payment_mode=mode,
        price_sats=2500,
    )
    assert verdict is expected


def test_the_top_up_step_of_each_invoice_state() -> None:
    assert pay.top_up_step("OPEN") is pay.TopUp.WAIT
    assert pay.top_up_step("ACCEPTED") is pay.TopUp.SETTLE
    assert pay.top_up_step("SETTLED") is pay.TopUp.CREDIT
    assert pay.top_up_step("CANCELED") is pay.TopUp.EXPIRE
