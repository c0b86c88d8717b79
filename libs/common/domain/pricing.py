"""Pricing: the provider's USD cost turned into the sats the customer pays (pure)."""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal

SATS_PER_BTC = Decimal(100_000_000)


def usd_to_sats(usd: Decimal, btc_usd: Decimal) -> int:
    """Convert a USD amount to sats at the given BTC/USD rate, rounding up."""
    if btc_usd <= 0:
        raise ValueError("BTC/USD rate must be positive")
    if usd < 0:
        raise ValueError("cost must not be negative")
    return int((usd * SATS_PER_BTC / btc_usd).to_integral_value(rounding=ROUND_CEILING))


def quote_sats(
    cost_usd: Decimal, *, btc_usd: Decimal, multiplier: Decimal, min_sats: int = 1
) -> int:
    """Price an order: providerCostSats x PRICE_MULTIPLIER, rounded up, never below min_sats."""
    if multiplier <= 0:
        raise ValueError("price multiplier must be positive")
    provider_sats = usd_to_sats(cost_usd, btc_usd)
    price = int((Decimal(provider_sats) * multiplier).to_integral_value(rounding=ROUND_CEILING))
    return max(price, min_sats)


def refund_fee_limit_sat(
    amount_sats: int, *, ppm: int, ceiling_sat: int, floor_sat: int = 0
) -> int:
    """The routing fee we accept on a refund: `ppm` of the amount, rounded down, within
    [floor, ceiling].

    The customer picks the refund invoice and so its route hints: a share keeps a small
    refund from costing us more in fees than a flat cap allows on a large one. The floor keeps
    a tiny refund (a rental's unused minutes) routable at all: a zero budget pays only
    fee-free routes, so it would fail every attempt and end refund_failed.
    """
    if amount_sats < 0 or ppm < 0 or ceiling_sat < 0 or floor_sat < 0:
        raise ValueError("amount, share, floor and ceiling must not be negative")
    return min(max(amount_sats * ppm // 1_000_000, floor_sat), ceiling_sat)


def unused_rent_sats(price_sats: int, *, total_seconds: int, unused_seconds: float) -> int:
    """The share of a rental's price for time it could not be used, rounded up (ours to lose).

    ceil(price x unused / total), unused clamped to [0, total]; whole seconds, rounded up.
    """
    if price_sats < 0 or total_seconds <= 0:
        raise ValueError("price must not be negative and the rental must last")
    unused = min(max(math.ceil(unused_seconds), 0), total_seconds)
    return -(-price_sats * unused // total_seconds)
