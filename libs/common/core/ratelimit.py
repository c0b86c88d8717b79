"""Per-client token buckets (pure: the caller passes the clock)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Allows `per_minute` requests per key on average, with bursts up to `burst`."""

    def __init__(self, per_minute: float, *, burst: int | None = None, max_keys: int = 100_000):
        self._rate = per_minute / 60.0
        self._burst = float(burst if burst is not None else max(1, int(per_minute // 6)))
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def hit(self, key: str, now: float) -> float | None:
        """Take a token for key; None if allowed, else seconds until the next token."""
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(self._burst, now)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
        self._buckets[key] = bucket  # most recently used last
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)  # forget the least recently seen client
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self._rate if self._rate > 0 else 60.0
