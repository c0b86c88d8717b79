"""The scheduler: fires due timers (claimed with SKIP LOCKED) and refreshes catalog and rate."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

from libs.common.core import metrics
from libs.common.core.config import Settings
from libs.common.core.faults import crash_point
from libs.common.domain.events import TIMERS, Event, Timer
from libs.common.messaging import ops
from libs.common.messaging.runtime import Worker, open_worker, provider_client, run_loops
from libs.common.persistence.ports import Stores
from libs.common.persistence.stores import PgStores
from services.scheduler.catalog_refresh import refresh_forever

log = logging.getLogger(__name__)

OUTBOX_RETENTION_SECONDS = 24 * 3600.0
# An SMS deadline that fired this long ago without moving its order on fires again.
REARM_AFTER_SECONDS = 60.0
INBOX_RETENTION_SECONDS = 8 * 24 * 3600.0  # longer than the stream's 7-day max_age

# The scheduler's own action on a timer kind, run in the transaction that claimed it.
Housekeeping = Callable[[Stores, str], Awaitable[None]]


async def purge_code(stores: Stores, order_id: str) -> None:
    """SMS codes are deleted once the retention after completion has passed."""
    await stores.orders.purge_code(order_id)


# What the scheduler does itself for each timer kind that fires no event (`TIMERS` -> None).
# Adding a housekeeping step: its Timer and TIMERS row in events.py, its action here.
HOUSEKEEPING: dict[Timer, Housekeeping] = {
    Timer.PURGE_CODE: purge_code,
}


def check_housekeeping(table: Mapping[Timer, Housekeeping]) -> None:
    """Fail unless `table` acts on exactly the timers that fire no event."""
    expected = {timer for timer, event in TIMERS.items() if event is None}
    if set(table) != expected:
        missing = sorted(expected - set(table))
        extra = sorted(set(table) - expected)
        raise ValueError(f"scheduler: no action for {missing}; not housekeeping: {extra}")


check_housekeeping(HOUSEKEEPING)
_KINDS = frozenset(t.value for t in Timer)


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def fire_due(
    stores: Stores, limit: int = 1000, *, now: Callable[[], datetime] = _utcnow
) -> int:
    """Fire one batch of due timers in one transaction; returns how many fired.

    Set-based so 10,000 timers due at once fire in seconds: one claim, one outbox insert for
    every event of the batch, one update marking them fired. Exactly once: the claim locks
    the rows (SKIP LOCKED, so replicas take disjoint batches) and the events commit with the
    mark; a crash before the commit leaves every timer of the batch due again. `now` is
    the clock the lateness metric is read with (fire time - due time).
    """
    async with stores.transaction() as tx:
        due = await tx.timers.claim_due(limit)
        events: list[Event] = []
        for timer in due:
            kind = Timer(timer.kind) if timer.kind in _KINDS else None
            if kind is None:
                log.error("unknown timer kind %s", timer.kind, extra={"order_id": timer.order_id})
                continue
            event = TIMERS[kind]
            if event is not None:
                events.append(Event(event, timer.order_id))
            else:
                await HOUSEKEEPING[kind](tx, timer.order_id)
        await tx.outbox.enqueue_many(events)
        if due:
            crash_point("scheduler.timers_claimed")
            await tx.timers.mark_fired([t.id for t in due])
    fired_at = now()
    for timer in due:  # counted once committed
        metrics.TIMERS_FIRED.labels(timer.kind).inc()
        metrics.TIMER_LATENESS.labels(timer.kind).observe(lateness(timer.due_at, fired_at))
    return len(due)


def lateness(due_at: datetime, fired_at: datetime) -> float:
    """Seconds between a timer's due time and its firing (never negative: clocks may differ)."""
    return max(0.0, (fired_at - due_at).total_seconds())


# The shortest sleep between looks: a timer due but held by another replica's batch must
# not make this one spin.
MIN_WAIT_SECONDS = 0.02


def until_next(tick: float, next_due_in: float | None) -> float:
    """How long to sleep: until the next timer is due, at most a tick (a timer armed meanwhile
    for sooner is then at most a tick late), never less than MIN_WAIT_SECONDS."""
    if next_due_in is None:
        return tick
    return min(tick, max(MIN_WAIT_SECONDS, next_due_in))


async def tick_forever(worker: Worker) -> None:
    """Fire due timers until stop, sleeping until the next one is due (bounded by the tick)."""
    stores: PgStores = worker.stores
    tick = worker.settings.scheduler_tick_seconds
    batch = max(1, worker.settings.timer_batch_size)
    loop = asyncio.get_running_loop()
    next_prune = next_rearm = loop.time()
    while not worker.stop.is_set():
        ops.beat("scheduler-tick")
        wait = tick
        try:
            while await fire_due(stores, batch) > 0:
                pass
            if loop.time() >= next_rearm:
                await stores.timers.rearm_overdue(REARM_AFTER_SECONDS)
                next_rearm = loop.time() + 10.0
            if loop.time() >= next_prune:
                await stores.outbox.prune(OUTBOX_RETENTION_SECONDS)
                await stores.inbox.prune(INBOX_RETENTION_SECONDS)
                next_prune = loop.time() + 60.0
            wait = until_next(tick, await stores.timers.next_due_in())
        except Exception:
            log.exception("scheduler tick failed")
        try:
            await asyncio.wait_for(worker.stop.wait(), wait)
        except TimeoutError:
            pass
    ops.HEALTH.forget("scheduler-tick")


async def main(settings: Settings, stop: asyncio.Event) -> None:
    """Run the scheduler until stop."""
    async with open_worker("scheduler", settings, stop) as worker:
        provider = provider_client(worker.pool, settings)
        try:
            await run_loops(
                stop,
                tick_forever(worker),
                refresh_forever(worker.stores, provider, settings, worker.stop),
            )
        finally:
            await provider.close()
