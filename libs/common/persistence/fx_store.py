"""The BTC/USD rate: fetched from a CoinGecko `simple/price` style source, cached in PostgreSQL."""

from __future__ import annotations

import enum
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
import asyncpg

from libs.common.persistence.db import Q

log = logging.getLogger(__name__)

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


async def fetch_rate(session: aiohttp.ClientSession, url: str, wait: float = 10.0) -> Decimal:
    """Ask the source: GET {url}?ids=bitcoin&vs_currencies=usd."""
    params = {"ids": "bitcoin", "vs_currencies": "usd"}
    try:
        async with session.get(
            url, params=params, timeout=aiohttp.ClientTimeout(total=wait)
        ) as resp:
            if resp.status != 200:
                raise FxSourceError(f"HTTP {resp.status}")
            data = await resp.json(content_type=None, loads=_loads_decimal)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise FxSourceError(type(exc).__name__) from exc
    return parse_simple_price(data)


def _loads_decimal(text: str) -> Any:
    """JSON with floats as Decimal, so the rate is stored exactly as sent."""
    return json.loads(text, parse_float=Decimal)


@dataclass(frozen=True)
class CachedRate:
    """The rate row as read from PostgreSQL, with its age by the database clock."""

    rate: Decimal
    fetched_at: datetime
    age_seconds: float
    source: str


async def store_rate(conn: asyncpg.Connection | asyncpg.Pool, rate: Decimal, source: str) -> None:
    """Record a freshly fetched rate (fetched now, by the database clock)."""
    await conn.execute(Q.fx_rate_upsert, PAIR, rate, source)


async def load_rate(conn: asyncpg.Connection | asyncpg.Pool) -> CachedRate | None:
    """The cached BTC/USD rate, or None if none was ever fetched."""
    row = await conn.fetchrow(Q.fx_rate_get, PAIR)
    if row is None:
        return None
    return CachedRate(row["rate"], row["fetched_at"], float(row["age_seconds"]), row["source"])
