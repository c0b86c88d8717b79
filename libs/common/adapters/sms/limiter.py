"""Client-side rate limiter shared by all calls of one provider client: a token bucket plus a
pause that a 429 or a BANNED answer imposes on every caller."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from libs.common.adapters.sms.errors import ProviderError, RateLimited


class ProviderLimiter:
    """Paces calls to `rate` per second (bursts up to `burst`) and honours upstream pauses.

    The burst is kept small on purpose: an upstream that blocks an account for a burst over
    its per-second limit counts any one-second window, which may hold `burst + rate` calls.
    A wait longer than `max_wait` is not slept: the caller gets the error at once, so workers
    can release their message instead of holding it through a long ban.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        max_wait: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = asyncio.sleep,
    ) -> None:
        """Configure the bucket; rate <= 0 disables pacing (pauses still apply)."""
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self.max_wait = max_wait
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._updated = clock()
        self._paused_until = 0.0
        self._pause_error: Callable[[float], ProviderError] = _rate_limited
        self._lock = asyncio.Lock()

    def pause(self, seconds: float, error: Callable[[float], ProviderError] | None = None) -> None:
        """Hold every call for `seconds`; `error(remaining)` is raised when a wait is too long."""
        until = self._clock() + max(seconds, 0.0)
        if until > self._paused_until:
            self._paused_until = until
            self._pause_error = error or _rate_limited

    def paused_for(self) -> float:
        """Seconds left in the current pause (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())

    async def acquire(self) -> None:
        """Wait for a token (and for any pause to end); raise if that would exceed max_wait."""
        async with self._lock:  # one waiter at a time keeps the order fair and the math simple
            while True:
                remaining = self.paused_for()
                if remaining > self.max_wait:
                    raise self._pause_error(remaining)
                if remaining > 0:
                    await _call_sleep(self._sleep, remaining)
                    continue
                if self.rate <= 0:
                    return
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                # The tolerance stops float rounding from asking for sleeps too short to count.
                if self._tokens >= 1.0 - 1e-9:
                    self._tokens = max(0.0, self._tokens - 1.0)
                    return
                await _call_sleep(self._sleep, (1.0 - self._tokens) / self.rate)


def _rate_limited(remaining: float) -> ProviderError:
    return RateLimited("RATE_LIMITED", retry_after=remaining)


async def _call_sleep(sleep: Callable[[float], object], seconds: float) -> None:
    result = sleep(seconds)
    if asyncio.iscoroutine(result):
        await result
