"""The token-bucket rate limiter."""

from __future__ import annotations

import pytest

from libs.common.core.ratelimit import RateLimiter


def test_burst_then_refused_with_retry_after() -> None:
    limiter = RateLimiter(60, burst=3)  # one token per second
    assert [limiter.hit("a", 0.0) for _ in range(3)] == [None, None, None]
    wait = limiter.hit("a", 0.0)
    assert wait == pytest.approx(1.0)
    assert limiter.hit("a", 0.5) == pytest.approx(0.5)
    assert limiter.hit("a", 1.0) is None


def test_clients_are_independent() -> None:
    limiter = RateLimiter(60, burst=1)
    assert limiter.hit("a", 0.0) is None
    assert limiter.hit("a", 0.0) is not None
    assert limiter.hit("b", 0.0) is None


def test_tokens_never_exceed_the_burst() -> None:
    limiter = RateLimiter(60, burst=2)
    assert limiter.hit("a", 0.0) is None
    # A long idle period refills to the burst, not beyond.
    results = [limiter.hit("a", 1000.0) for _ in range(3)]
    assert results[:2] == [None, None] and results[2] is not None


def test_memory_is_bounded() -> None:
    limiter = RateLimiter(60, burst=1, max_keys=10)
    for i in range(100):
        limiter.hit(f"client-{i}", 0.0)
    assert len(limiter._buckets) == 10
    assert limiter.hit("client-0", 0.0) is None  # forgotten, so a fresh bucket
