"""Unit tests of the in-process request budget (ProviderLimiter) on virtual time: the GCRA step,
urgent calls before polls, late slots given up, pauses that begin while a caller sleeps."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable

import pytest

from libs.common.adapters.sms import Banned, HeroSmsClient, RateLimited, budget_account
from libs.common.adapters.sms.herosms import is_urgent
from libs.common.adapters.sms.limiter import ProviderLimiter, rate_limited, take_slot
from libs.common.core.config import Settings


class VirtualTime:
    """A clock for many tasks: time jumps to the next wake-up once every task is blocked."""

    def __init__(self) -> None:
        """Start at 1000 s with nobody asleep."""
        self.now = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.oversleep: list[float] = []  # extra lateness given to the next sleeps, in turn

    def __call__(self) -> float:
        """Current time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Block until the clock reaches now + seconds (plus any oversleep queued)."""
        extra = self.oversleep.pop(0) if self.oversleep else 0.0
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds + extra, next(self._seq), future))
        await future

    async def run(self, *calls: Awaitable[object]) -> None:
        """Run the calls to the end, moving time whenever all of them wait."""
        tasks = [asyncio.ensure_future(c) for c in calls]
        while not all(t.done() for t in tasks):
            for _ in range(50):  # let every runnable task reach its next sleep
                await asyncio.sleep(0)
            if self._sleepers and not all(t.done() for t in tasks):
                when, _, future = heapq.heappop(self._sleepers)
                self.now = max(self.now, when)
                future.set_result(None)
        for task in tasks:
            task.result()


def test_take_slot_paces_and_refuses_without_reserving() -> None:
    # Quiet account: the call goes now and the pace moves one interval on.
    assert take_slot(0.0, 0.0, 10.0, interval=0.025, burst=1, ahead=0) == (10.0, 10.025, True)
    # Busy account: the slot is 0.5 s away; a call that may wait 0.05 s is refused, state kept.
    assert take_slot(10.5, 0.0, 10.0, interval=0.025, burst=1, ahead=0.05) == (10.5, 10.5, False)
    # A pause moves every slot past its end.
    send_at, tat, granted = take_slot(10.0, 15.0, 10.0, interval=0.025, burst=1, ahead=30)
    assert (send_at, granted) == (15.0, True) and tat == pytest.approx(15.025)


async def test_urgent_calls_go_before_queued_polls() -> None:
    clock = VirtualTime()
    limiter = ProviderLimiter(40, burst=1, clock=clock, sleep=clock.sleep)
    done: dict[str, float] = {}

    async def call(name: str, urgent: bool, start: float = 0.0) -> None:
        if start:
            await clock.sleep(start)
        await limiter.acquire(urgent)
        done[name] = clock.now

    polls = [call(f"poll{i}", False) for i in range(40)]
    # Two purchases arrive a quarter second in, when 30 polls still wait for their slots.
    urgent = [call(f"buy{i}", True, start=0.25) for i in range(2)]
    await clock.run(*polls, *urgent)

    times = sorted(done.values())
    assert len(times) == 42
    # The pace holds: never two calls closer than one interval (40/s).
    assert all(b - a >= 0.025 - 1e-9 for a, b in itertools.pairwise(times))
    # Each purchase waits at most the two poll slots already handed out plus its own turn,
    # not behind the 30 polls queued before it (which would take 0.75 s).
    for i in range(2):
        assert done[f"buy{i}"] - 1000.25 <= 0.1
    later_polls = [t for name, t in done.items() if name.startswith("poll") and t > 1000.25]
    assert len(later_polls) >= 25
    assert max(done[f"buy{i}"] for i in range(2)) < sorted(later_polls)[3]


async def test_a_slot_served_late_is_given_up_not_made_up() -> None:
    clock = VirtualTime()
    limiter = ProviderLimiter(10, burst=1, late_after=0.1, clock=clock, sleep=clock.sleep)
    await clock.run(limiter.acquire(True))  # the quiet account's first call goes at once
    clock.oversleep = [0.5]  # the process wakes 0.5 s after its slot (event-loop lag)
    await clock.run(limiter.acquire(True))
    # The late slot (1000.1) was dropped: the call took a new one and was sent on it.
    assert clock.now == pytest.approx(1000.6)
    assert limiter._tat == pytest.approx(1000.7)


async def test_a_pause_that_begins_during_the_wait_holds_the_call() -> None:
    clock = VirtualTime()
    limiter = ProviderLimiter(2, burst=1, clock=clock, sleep=clock.sleep)
    sent: list[float] = []

    async def purchase() -> None:
        await limiter.acquire(True)
        sent.append(clock.now)

    async def someone_gets_a_429() -> None:
        await clock.sleep(0.2)
        await limiter.pause(5, rate_limited)

    # The second purchase sleeps on its slot (1000.5) when the 429 pauses the account.
    await clock.run(purchase(), purchase(), someone_gets_a_429())
    assert sent[0] == 1000.0
    assert sent[1] >= 1005.2


async def test_a_slot_beyond_max_wait_is_refused_at_once() -> None:
    clock = VirtualTime()
    limiter = ProviderLimiter(10, burst=1, max_wait=1.0, clock=clock, sleep=clock.sleep)
    refused: list[tuple[float, float | None]] = []

    async def purchase() -> None:
        try:
            await limiter.acquire(True)
        except RateLimited as err:
            assert err.transient
            refused.append((clock.now, err.retry_after))

    # Eleven slots fit within a second at 10/s (now .. now + 1.0); the twelfth does not.
    await clock.run(*(purchase() for _ in range(12)))
    assert refused == [(1000.0, pytest.approx(1.1))]


async def test_polls_give_up_after_max_wait_behind_purchases() -> None:
    clock = VirtualTime()
    limiter = ProviderLimiter(10, burst=1, max_wait=1.0, clock=clock, sleep=clock.sleep)
    outcome: list[str] = []

    async def poll() -> None:
        await clock.sleep(0.01)
        try:
            await limiter.acquire(False)
            outcome.append("sent")
        except RateLimited:
            outcome.append("refused")

    # Purchases hold every slot of the next second: the poll is refused, not queued past it.
    await clock.run(*(limiter.acquire(True) for _ in range(11)), poll())
    assert outcome == ["refused"]


async def test_a_long_pause_is_raised_with_its_error() -> None:
    clock = VirtualTime()
    limiter = ProviderLimiter(40, max_wait=30, clock=clock, sleep=clock.sleep)
    await limiter.pause(120, lambda left: Banned("BANNED", retry_after=left, transient=True))
    for urgent in (True, False):
        with pytest.raises(Banned) as info:
            await limiter.acquire(urgent)
        assert info.value.retry_after == pytest.approx(120)


@pytest.mark.parametrize(
    ("action", "params", "urgent"),
    [
        ("getNumberV2", {}, True),
        ("getNumber", {}, True),
        ("setStatus", {"status": "8"}, True),
        ("setStatus", {"status": "3"}, True),
        ("setStatus", {"status": "6"}, False),
        ("reactivate", {}, True),
        ("getExtraActivation", {}, True),
        ("getRentNumber", {}, True),
        ("setRentStatus", {"status": "2"}, True),
        ("continueRentNumber", {}, True),
        ("getStatus", {}, False),
        ("getStatusV2", {}, False),
        ("getActiveActivations", {}, False),
        ("getBalance", {}, False),
        ("getPrices", {}, False),
        ("getRentStatus", {}, False),
        ("someActionAddedLater", {}, False),
    ],
)
def test_priority_of_each_action(action: str, params: dict[str, str], urgent: bool) -> None:
    assert is_urgent(action, params) is urgent


def test_budget_account_hides_the_key() -> None:
    account = budget_account("http://sms.test/", "s3cret-key")
    assert "s3cret" not in account and len(account) == 64
    assert account == budget_account("http://sms.test", "s3cret-key")
    assert account != budget_account("http://sms.test", "other-key")


def test_client_takes_the_given_budget() -> None:
    budget = ProviderLimiter(5)
    assert HeroSmsClient("http://sms.test", "k", budget=budget).budget is budget


def test_from_settings_uses_the_given_budget_or_its_own() -> None:
    budget = ProviderLimiter(5)
    settings = Settings(provider_url="http://sms.test", provider_budget_max_wait_seconds=7)
    assert HeroSmsClient.from_settings(settings, budget).budget is budget
    own = HeroSmsClient.from_settings(settings).budget
    assert isinstance(own, ProviderLimiter) and own.max_wait == 7 and own.rate == 40
