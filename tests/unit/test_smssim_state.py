"""Unit tests of the simulator state's issue-12 bookkeeping, on a fake clock: the index of
active activations behind getActiveActivations and the rate-limit counters."""

from __future__ import annotations

from decimal import Decimal

from sandbox.smssim.state import CANCEL, FINISHED, OK, Settings, SimActivation, SimState


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        """Start at a fixed epoch."""
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        """The current time."""
        return self.now


def rich_state(clock: Clock, **settings: object) -> SimState:
    """A state with money and stock for thousands of purchases."""
    state = SimState(Settings(**settings), seed=1, clock=clock)  # type: ignore[arg-type]
    state.balance = Decimal(10**9)
    for pair in state.stock.values():
        pair.count = 100_000
    return state


def ids(activations: list[SimActivation]) -> list[int]:
    """Activation ids."""
    return [a.id for a in activations]


def test_active_index_follows_every_way_out() -> None:
    clock = Clock()
    state = rich_state(clock, early_cancel_seconds=0.0, lifetime_seconds=100.0)
    waiting, received, finished, cancelled = (state.buy("tg", "187", None) for _ in range(4))
    state.deliver_sms(received)
    state.deliver_sms(finished)
    state.set_status(finished, "6")
    state.set_status(cancelled, "8")
    assert ids(state.active_page(0, None)) == [waiting.id, received.id]
    assert received.status == OK

    clock.now += 50
    late = state.buy("tg", "187", None)
    clock.now += 50  # the first four reach their end; `late` has 50 s left
    assert ids(state.active_page(0, None)) == [late.id]
    assert (waiting.status, received.status) == (CANCEL, FINISHED)
    assert (finished.status, cancelled.status) == (FINISHED, CANCEL)

    again = state.reactivate(str(received.id))
    assert ids(state.active_page(0, None)) == [late.id, again.id]
    state.reset()
    assert state.active_page(0, None) == []


def test_pages_of_ten_thousand() -> None:
    clock = Clock()
    state = rich_state(clock)
    bought = [state.buy("wa", "187", None).id for _ in range(10_000)]
    assert ids(state.active_page(0, None)) == bought
    assert ids(state.active_page(9_990, 100)) == bought[9_990:]
    assert ids(state.active_page(200, 100)) == bought[200:300]
    assert state.active_page(10_000, 100) == []
    state.settings.active_page_limit = 100
    assert ids(state.active_page(0, None)) == bought[:100]
    assert ids(state.active_page(50, 500)) == bought[50:150]


def test_peak_is_the_busiest_sliding_second() -> None:
    clock = Clock()
    state = SimState(Settings(rate_limit_per_second=None), clock=clock)
    for offset in (0.0, 0.5, 0.99, 1.0, 1.6, 2.5):
        clock.now = 1_800_000_000.0 + offset
        assert state.rate_check("key") is None
    # (0.0, 1.0] holds 0.5, 0.99 and 1.0; no other second holds more.
    assert (state.peak_per_second, state.blocks) == (3, 0)
    for _ in range(4):
        state.rate_check("other")
    assert state.peak_per_second == 4


def test_blocks_and_refused_requests_count() -> None:
    clock = Clock()
    state = SimState(Settings(rate_limit_per_second=3, rate_block_seconds=10.0), clock=clock)
    answers = [state.rate_check("key") for _ in range(6)]
    assert answers[:3] == [None, None, None] and all(a is not None for a in answers[3:])
    assert (state.blocks, state.peak_per_second) == (1, 6)
    clock.now += 10.5
    assert [state.rate_check("key") for _ in range(4)][-1] == 10.0
    assert state.blocks == 2
    state.reset()
    assert (state.blocks, state.peak_per_second) == (0, 0)
