"""The BTC/USD rate source: a CoinGecko `simple/price` style HTTP endpoint."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import aiohttp

from libs.common.domain.fx import FxSourceError, parse_simple_price


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
