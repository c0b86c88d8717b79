"""Operator alarms: conditions kept raised in provider_alarms until they clear."""

from __future__ import annotations

from enum import StrEnum


class Alarm(StrEnum):
    """The alarms; a row in provider_alarms means raised."""

    # The provider account ran out of money: nothing can be bought until it is topped up.
    NO_BALANCE = "no_balance"
    # The BTC/USD source answered a rate too far from the stored one; it was not stored.
    FX_RATE_JUMP = "fx_rate_jump"
