"""The provider worker's pure policy for finishing activations: backoff and give-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.provider.activations import finish_retry_in, provider_give_up_at


def test_finish_retries_double_up_to_the_cap_and_end_at_the_give_up_time() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    far = now + timedelta(hours=1)
    waits = [finish_retry_in(attempts=n, now=now, give_up_at=far, base=2.0) for n in range(10)]
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0]
    # The last try is made at the give-up time; past it, or without a deadline, no more.
    near = now + timedelta(seconds=5)
    assert finish_retry_in(attempts=4, now=now, give_up_at=near, base=2.0) == 5.0
    assert finish_retry_in(attempts=0, now=near, give_up_at=near, base=2.0) is None
    assert finish_retry_in(attempts=0, now=now, give_up_at=None, base=2.0) is None
    assert finish_retry_in(attempts=10_000, now=now, give_up_at=far, base=2.0) == 300.0


def test_the_give_up_time_is_the_deadline_plus_the_grace() -> None:
    deadline = datetime(2026, 1, 1, tzinfo=UTC)
    assert provider_give_up_at(deadline, 120.0) == deadline + timedelta(seconds=120)
    assert provider_give_up_at(None, 120.0) is None
