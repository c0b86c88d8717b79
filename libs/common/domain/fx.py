"""The BTC/USD rate's rules (pure): how fresh a cached rate is, what move is implausible, and
how a `simple/price` answer is read."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

PAIR = "BTC/USD"


class Freshness(enum.Enum):
    """How usable a cached rate is."""

    FRESH = "fresh"
    STALE = "stale"  # usable, but someone should look at the rate source
    TOO_STALE = "too_stale"  # no new orders: never quote from a rate this old


def freshness(age_seconds: float, *, stale_after: float, max_age: float) -> Freshness:
    """Classify a rate by its age against the stale-but-usable and too-stale thresholds."""
    if age_seconds > max_age:
        return Freshness.TOO_STALE
    if age_seconds > stale_after:
        return Freshness.STALE
    return Freshness.FRESH


def implausible_change(new: Decimal, last: Decimal | None, *, max_change: float) -> bool:
    """Whether `new` moved more than `max_change` (0.5 = 50 %) away from the last stored rate.

    A rate source that answers garbage (a unit slip, a bad feed) would otherwise reprice
    every order at once; a real move this large is rare enough for a person to confirm it.
    No last rate, or `max_change` 0, accepts anything.
    """
    if last is None or last <= 0 or max_change <= 0:
        return False
    return abs(new - last) > last * Decimal(str(max_change))


class FxSourceError(Exception):
    """The rate source could not be asked or answered something unusable."""


class FxRateRejected(FxSourceError):
    """The source answered a rate too far from the stored one: not stored, the alarm is up."""


def parse_simple_price(data: Any) -> Decimal:
    """The BTC/USD rate from `{"bitcoin": {"usd": 97000.5}}`; FxSourceError if absent or bad."""
    try:
        raw = data["bitcoin"]["usd"]
    except (KeyError, TypeError) as exc:
        raise FxSourceError("no bitcoin.usd in the answer") from exc
    if isinstance(raw, bool) or not isinstance(raw, int | float | str | Decimal):
        raise FxSourceError("bitcoin.usd is not a number")
    try:
        rate = Decimal(str(raw))
    except InvalidOperation as exc:
        raise FxSourceError("bitcoin.usd is not a number") from exc
    if not rate.is_finite() or rate <= 0:
        raise FxSourceError("bitcoin.usd is not a positive number")
    return rate


@dataclass(frozen=True)
class CachedRate:
    """The stored rate, with its age by the database clock when it was read."""

    rate: Decimal
    fetched_at: datetime
    age_seconds: float
    source: str
