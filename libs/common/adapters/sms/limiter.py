"""The provider request budget: how calls to one provider account are paced and paused.

`RequestBudget` is what the HeroSMS client needs: `acquire(urgent)` before each request and
`pause(seconds, error)` after a 429 or a `BANNED:<until>`. Both implementations hand out
*slots* the same way (a GCRA, "theoretical arrival time"): each call reserves the next slot
and sleeps until it; urgent calls (purchases, cancels) may reserve up to `max_wait` ahead,
other calls (polls, finish, catalog) only a slot that is (almost) due, so they never queue in
front of an urgent one. `ProviderLimiter` keeps the state in the process (scripts and unit
tests); the PostgreSQL one (`libs.common.persistence.ops_store.PgRequestBudget`) keeps it in
one row per provider account, shared by every replica of every service.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from libs.common.adapters.sms.errors import Banned, ProviderError, RateLimited
from libs.common.core.metrics import (
    PROVIDER_BUDGET_LATE,
    PROVIDER_BUDGET_PAUSES,
    PROVIDER_BUDGET_REFUSED,
    PROVIDER_BUDGET_WAIT,
)

# A non-urgent call takes a slot only this many intervals ahead (a slot being served plus
# the next one): enough to keep the pace, never a queue in front of an urgent call.
POLL_AHEAD_INTERVALS = 2.0
# A slot served later than this is given up and a new one taken: requests sent late would
# bunch with those sent on time into one second at the provider. With a 40/s pace this keeps
# any one-second window at most 40 * (1 + 0.1) + burst requests.
LATE_AFTER = 0.1
# The code of the transient error a call gets when its budget cannot be asked (no database):
# the call is refused rather than sent unmetered.
BUDGET_UNAVAILABLE = "BUDGET_UNAVAILABLE"


@runtime_checkable
class RequestBudget(Protocol):
    """The request budget of one provider account, shared by every caller of the budget."""

    max_wait: float

    async def acquire(self, urgent: bool) -> None:
        """Wait for a slot; raise a transient RateLimited / Banned if that would exceed max_wait."""
        ...

    async def pause(self, seconds: float, error: Callable[[float], ProviderError]) -> None:
        """Hold every caller for `seconds`; `error(remaining)` is what a too-long wait raises."""
        ...


@dataclass(frozen=True)
class Take:
    """One try to reserve a slot: the wait until it, whether it was reserved, any pause.

    `asked` is the caller's clock just before the question left (after any local queueing):
    the slot was computed later, so `asked + wait` is never after the slot's true time.
    """

    asked: float
    wait: float
    granted: bool
    paused_for: float = 0.0
    pause_error: Callable[[float], ProviderError] | None = None


def take_slot(
    tat: float, paused_until: float, now: float, *, interval: float, burst: float, ahead: float
) -> tuple[float, float, bool]:
    """The GCRA step (pure): (send_at, new tat, granted) for a call that may wait `ahead` s.

    `tat` is when the pace allows the next call; `burst` calls may go at once after a quiet
    spell. A pause moves every slot past its end. A refused call leaves the state unchanged,
    so a slot nobody took is not "made up" later, and a late one is not given back.
    """
    base = max(now, paused_until)
    new_tat = max(tat, base) + interval
    send_at = max(base, new_tat - burst * interval)
    granted = send_at - now <= ahead + 1e-9  # float rounding must not refuse a due slot
    return send_at, (new_tat if granted else tat), granted


def rate_limited(remaining: float) -> ProviderError:
    """The error of a wait too long to sleep through (our own pacing, or an unnamed pause)."""
    return RateLimited("RATE_LIMITED", retry_after=remaining)


class SlotBudget:
    """What both budgets share: the acquire loop (priorities, pauses, lateness) and metrics.

    Subclasses implement `_take(ahead)`: reserve the next slot if it is at most `ahead`
    seconds away, and report the wait either way.
    """

    def __init__(
        self,
        *,
        interval: float,
        max_wait: float,
        clock: Callable[[], float],
        sleep: Callable[[float], object],
        late_after: float = LATE_AFTER,
    ) -> None:
        """Configure the shared loop; interval 0 means no pacing (pauses still apply)."""
        self.interval = interval
        self.max_wait = max_wait
        self.poll_ahead = POLL_AHEAD_INTERVALS * interval
        self.late_after = late_after
        self._clock = clock
        self._sleep = sleep
        # Non-urgent callers of this process ask one at a time, in arrival order: only the head
        # of the line asks the budget, so a crowd of polls costs one query per slot, not many.
        self._polls = asyncio.Lock()

    async def _take(self, ahead: float) -> Take:
        """Reserve the next slot if it is at most `ahead` s away (subclasses implement)."""
        raise NotImplementedError

    async def _paused_meanwhile(self) -> bool:
        """Whether a pause holds the account now (asked after a long sleep on a slot)."""
        raise NotImplementedError

    async def acquire(self, urgent: bool) -> None:
        """Wait for a slot (urgent ones go first); raise when that would exceed max_wait."""
        urgency = "urgent" if urgent else "normal"
        started = self._clock()
        try:
            while True:
                if urgent:
                    take = await self._reserve(self.max_wait, started, urgency)
                else:
                    async with self._polls:
                        take = await self._reserve(self.poll_ahead, started, urgency)
                if take.wait > 0:
                    await _call_sleep(self._sleep, take.wait)
                # Measured from just before the question, so the lateness seen is never less
                # than the true one (the slot was computed after `asked`).
                late = self._clock() - (take.asked + take.wait)
                if late > self.late_after:
                    PROVIDER_BUDGET_LATE.labels(urgency).inc()
                elif take.wait <= self.late_after or not await self._paused_meanwhile():
                    # A slot reserved before another caller's 429 must not be spent in the
                    # pause: after a long sleep, look again (one more query, only then).
                    PROVIDER_BUDGET_WAIT.labels(urgency).observe(self._clock() - started)
                    return
                if self._clock() - started > self.max_wait:
                    PROVIDER_BUDGET_REFUSED.labels(urgency, "late").inc()
                    raise rate_limited(self.max_wait)
        except RateLimited as err:
            if err.code == BUDGET_UNAVAILABLE:
                PROVIDER_BUDGET_REFUSED.labels(urgency, "no_budget").inc()
            raise

    async def _reserve(self, ahead: float, started: float, urgency: str) -> Take:
        """Ask until a slot is reserved; sleep through short pauses and a busy pace."""
        while True:
            take = await self._take(ahead)
            if take.paused_for > self.max_wait:
                PROVIDER_BUDGET_REFUSED.labels(urgency, "paused").inc()
                raise (take.pause_error or rate_limited)(take.paused_for)
            if take.granted:
                return take
            # Refused: an urgent call would wait longer than max_wait, or a non-urgent slot is
            # not yet within reach. Sleep until it is, unless the whole wait would be too long.
            if self._clock() - started + take.wait > self.max_wait:
                reason = "paused" if take.paused_for > 0 else "busy"
                PROVIDER_BUDGET_REFUSED.labels(urgency, reason).inc()
                raise (take.pause_error or rate_limited)(take.wait)
            await _call_sleep(self._sleep, max(take.wait - ahead, self.interval, 0.001))


class ProviderLimiter(SlotBudget):
    """The in-process budget: paces calls to `rate` per second (bursts up to `burst`).

    For one process only (scripts, unit tests): replicas each holding one would together send
    N times the rate. The burst is kept small on purpose: an upstream that blocks an account
    for a burst over its per-second limit counts any one-second window, which may hold
    `burst + rate` calls. A wait longer than `max_wait` is not slept: the caller gets the
    error at once, so workers can release their message instead of holding it through a ban.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        max_wait: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = asyncio.sleep,
        late_after: float = LATE_AFTER,
    ) -> None:
        """Configure the pace; rate <= 0 disables pacing (pauses still apply)."""
        super().__init__(
            interval=1.0 / rate if rate > 0 else 0.0,
            max_wait=max_wait,
            clock=clock,
            sleep=sleep,
            late_after=late_after,
        )
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self._tat = clock()
        self._paused_until = 0.0
        self._pause_error: Callable[[float], ProviderError] = rate_limited

    async def pause(self, seconds: float, error: Callable[[float], ProviderError]) -> None:
        """Hold every call for `seconds`; `error(remaining)` is raised when a wait is too long."""
        until = self._clock() + max(seconds, 0.0)
        if until > self._paused_until:
            self._paused_until = until
            self._pause_error = error
            PROVIDER_BUDGET_PAUSES.labels(pause_reason(error)).inc()

    def paused_for(self) -> float:
        """Seconds left in the current pause (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())

    async def _take(self, ahead: float) -> Take:
        """Reserve the next slot in this process."""
        now = self._clock()
        send_at, self._tat, granted = take_slot(
            self._tat,
            self._paused_until,
            now,
            interval=self.interval,
            burst=self.burst,
            ahead=ahead,
        )
        paused_for = self.paused_for()
        error = self._pause_error if paused_for else None
        return Take(now, send_at - now, granted, paused_for, error)

    async def _paused_meanwhile(self) -> bool:
        """Whether a pause began while the caller slept on its slot."""
        return self.paused_for() > 0


def pause_reason(error: Callable[[float], ProviderError]) -> str:
    """The metric label of a pause: the kind of error it would raise (bounded set)."""
    return "banned" if isinstance(error(0.0), Banned) else "rate_limited"


def budget_account(base_url: str, api_key: str) -> str:
    """The key of a provider account's budget row: a hash of URL and key, never the key."""
    url = base_url.rstrip("/")
    return hashlib.sha256(f"{url}\n{api_key}".encode()).hexdigest()


async def _call_sleep(sleep: Callable[[float], object], seconds: float) -> None:
    result = sleep(seconds)
    if asyncio.iscoroutine(result):
        await result
