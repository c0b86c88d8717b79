"""The provider stage's pure policy: price cap, deadlines, give-up, backoff, windows, rentals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from libs.common.domain.activation_policy import (
    balance_needed,
    code_window_seconds,
    ended_early,
    finish_retry_in,
    price_cap,
    provider_give_up_at,
    provider_given_up,
    rent_early_by,
    rent_poll_given_up,
    rent_seconds_left,
    retry_allocation,
    unused_rent_refund,
)
from libs.common.domain.orders import PaymentMode

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def test_finish_retries_double_up_to_the_cap_and_end_at_the_give_up_time() -> None:
    now = NOW
    far = now + timedelta(hours=1)
    waits = [finish_retry_in(attempts=n, now=now, give_up_at=far, base=2.0) for n in range(10)]
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0]
    # The last try is made at the give-up time; past it, or without a deadline, no more.
    near = now + timedelta(seconds=5)
    assert finish_retry_in(attempts=4, now=now, give_up_at=near, base=2.0) == 5.0
    assert finish_retry_in(attempts=0, now=near, give_up_at=near, base=2.0) is None
    assert finish_retry_in(attempts=0, now=now, give_up_at=None, base=2.0) is None
    assert finish_retry_in(attempts=10_000, now=now, give_up_at=far, base=2.0) == 300.0


def test_the_give_up_time_is_the_deadline_plus_the_grace() -> None:
    deadline = NOW
    assert provider_give_up_at(deadline, 120.0) == deadline + timedelta(seconds=120)
    assert provider_give_up_at(None, 120.0) is None
    assert not provider_given_up(deadline, at(119), 120.0)
    assert provider_given_up(deadline, at(120), 120.0)
    assert not provider_given_up(None, at(10_000), 120.0)


def test_the_price_cap_is_the_quote_times_the_multiplier() -> None:
    assert price_cap(Decimal("0.48"), Decimal("1.5")) == Decimal("0.72")


def test_only_a_transient_error_before_the_allocation_deadline_is_retried() -> None:
    def retry(transient: bool, now: datetime) -> bool:
        return retry_allocation(transient=transient, paid_at=NOW, now=now, deadline_seconds=120)

    assert retry(True, at(0)) and retry(True, at(119.9))
    assert not retry(True, at(120)) and not retry(True, at(3600))
    assert not retry(False, at(0))
    assert not retry_allocation(transient=True, paid_at=None, now=NOW, deadline_seconds=120)


def test_the_another_sms_window_never_outlives_the_deadline() -> None:
    def window(mode: PaymentMode, left: float) -> float:
        return code_window_seconds(
            payment_mode=mode, deadline_at=at(left), sms_received_at=NOW, window_seconds=300.0
        )

    assert window(PaymentMode.STANDARD, 1200) == 300.0
    assert window(PaymentMode.STANDARD, 100) == 100.0
    assert window(PaymentMode.STANDARD, 0) == 0.0
    assert window(PaymentMode.STANDARD, -5) == 0.0  # the SMS came after the deadline
    # Classic orders (hold, prepaid) have no way to ask for another SMS.
    assert window(PaymentMode.HOLD, 1200) == 0.0
    assert window(PaymentMode.BALANCE, 1200) == 0.0


def test_rental_timing() -> None:
    ends = at(3600)
    assert rent_seconds_left(ends, NOW) == 3600.0
    assert rent_seconds_left(ends, at(4000)) == 0.0
    assert rent_early_by(ends, NOW) == 3600.0 and rent_early_by(ends, at(3700)) == -100.0
    # Within a minute of its end, a rental ended by the provider ended on time.
    assert not ended_early(60.0) and ended_early(60.5)
    assert not rent_poll_given_up(ends, at(3600 + 119), 120.0)
    assert rent_poll_given_up(ends, at(3600 + 120), 120.0)


def test_an_early_rental_end_refunds_the_unused_share_plus_one_poll_interval() -> None:
    def refund(mode: PaymentMode, early: float) -> int:
        return unused_rent_refund(
            price_sats=1440,
            rent_hours=4,
            payment_mode=mode,
            early_seconds=early,
            poll_interval_seconds=10.0,
        )

    # One sat per 10 s: 2 h + 10 s unused -> 721 sats.
    assert refund(PaymentMode.STANDARD, 7200) == 721
    assert refund(PaymentMode.STANDARD, 14_400) == 1440  # never more than the price
    assert refund(PaymentMode.HOLD, 7200) == 0  # no refund payment for a classic order
    assert refund(PaymentMode.BALANCE, 7200) == 0


def test_the_balance_alarm_waits_for_what_the_refused_purchase_needed() -> None:
    assert balance_needed("0.75") == Decimal("0.75")
    assert balance_needed("0") == Decimal("0.01")
    assert balance_needed("not a number") == Decimal("0.01")
