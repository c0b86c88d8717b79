"""The provider stage's rules, pure: price caps, deadlines, give-up, backoff and rental timing.

Nothing here does I/O or reads a clock: every `now` is passed in, and the provider worker
takes it from the database, so a worker whose clock is skewed decides as the others do.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from libs.common.domain.orders import PaymentMode
from libs.common.domain.pricing import unused_rent_sats

# A claimed finish that is neither done nor rescheduled (its worker died) is tried again
# after this long: longer than a provider call with its retries and rate-limit waits.
FINISH_LEASE_SECONDS = 120.0
# The longest wait between two tries at finishing an activation.
FINISH_RETRY_CAP_SECONDS = 300.0
# A rental the provider ends less than this before its end counts as ended on time: its
# clock and ours differ by a few seconds, which must not cost a refund payment.
EARLY_END_TOLERANCE_SECONDS = 60.0
# The smallest amount a NO_BALANCE alarm waits for when the refused purchase named none.
MIN_BALANCE_NEEDED_USD = Decimal("0.01")


def price_cap(provider_cost_usd: Decimal, multiplier: Decimal) -> Decimal:
    """The most we pay the provider for an order: its quoted cost x PRICE_MULTIPLIER."""
    return provider_cost_usd * multiplier


def allocation_deadline(paid_at: datetime, deadline_seconds: float) -> datetime:
    """Until when a transient provider error is retried before the order is refunded."""
    return paid_at + timedelta(seconds=deadline_seconds)


def retry_allocation(
    *, transient: bool, paid_at: datetime | None, now: datetime, deadline_seconds: float
) -> bool:
    """Whether a failed purchase is tried again (True) or the order is refunded (False).

    Permanent errors (no stock, a price over our quote, a bad key, no balance, ...) cannot
    be helped by buying again; a temporary ban or an outage can, until the deadline.
    """
    if not transient or paid_at is None:
        return False
    return now < allocation_deadline(paid_at, deadline_seconds)


def provider_give_up_at(deadline: datetime | None, giveup_seconds: float) -> datetime | None:
    """When an unreachable provider stops mattering: the order's deadline plus the grace."""
    return None if deadline is None else deadline + timedelta(seconds=giveup_seconds)


def provider_given_up(deadline: datetime | None, now: datetime, giveup_seconds: float) -> bool:
    """Whether an order is far enough past its deadline to stop waiting for the provider."""
    give_up_at = provider_give_up_at(deadline, giveup_seconds)
    return give_up_at is not None and now >= give_up_at


def finish_retry_in(
    *, attempts: int, now: datetime, give_up_at: datetime | None, base: float
) -> float | None:
    """Seconds until the next try at a finish that failed `attempts` + 1 times, None: give up.

    The wait doubles per failure (at most FINISH_RETRY_CAP_SECONDS); the last try is made
    at the give-up time itself.
    """
    if give_up_at is None or now >= give_up_at:
        return None
    wait = min(base * 2.0 ** min(attempts, 32), FINISH_RETRY_CAP_SECONDS)
    return min(wait, (give_up_at - now).total_seconds())


def code_window_seconds(
    *,
    payment_mode: PaymentMode,
    deadline_at: datetime | None,
    sms_received_at: datetime | None,
    window_seconds: float,
) -> float:
    """How long a code_received order stays open for another SMS (0: complete now).

    Only L402 (standard) orders can ask for another SMS; the window never outlives the
    order's deadline.
    """
    if payment_mode is not PaymentMode.STANDARD or deadline_at is None or sms_received_at is None:
        return 0.0
    left = (deadline_at - sms_received_at).total_seconds()
    return max(0.0, min(window_seconds, left))


def rent_seconds_left(ends_at: datetime, now: datetime) -> float:
    """Seconds until a rental ends (0 once it has): when its end timer fires."""
    return max(0.0, (ends_at - now).total_seconds())


def rent_early_by(ends_at: datetime, now: datetime) -> float:
    """How many seconds before its end a rental is (negative once past it)."""
    return (ends_at - now).total_seconds()


def ended_early(early_seconds: float) -> bool:
    """Whether a rental the provider ended this early owes the customer its unused time."""
    return early_seconds > EARLY_END_TOLERANCE_SECONDS


def unused_rent_refund(
    *,
    price_sats: int,
    rent_hours: int,
    payment_mode: PaymentMode,
    early_seconds: float,
    poll_interval_seconds: float,
) -> int:
    """Sats owed for a rental the provider ended `early_seconds` early (0: nothing to pay).

    It may have ended up to one poll interval before we saw it: that interval counts as
    unused too. Only a standard order can be paid back by a refund payment.
    """
    if payment_mode is not PaymentMode.STANDARD:
        return 0
    return unused_rent_sats(
        price_sats,
        total_seconds=rent_hours * 3600,
        unused_seconds=early_seconds + poll_interval_seconds,
    )


def rent_poll_given_up(ends_at: datetime, now: datetime, giveup_seconds: float) -> bool:
    """Whether a rental ended long enough ago to stop waiting for its last poll."""
    return (now - ends_at).total_seconds() >= giveup_seconds


def balance_needed(detail: str) -> Decimal:
    """The USD amount a NO_BALANCE alarm waits for (any money at all if it is unknown)."""
    try:
        return max(Decimal(detail), MIN_BALANCE_NEEDED_USD)
    except ArithmeticError:
        return MIN_BALANCE_NEEDED_USD
