"""The scheduler: fires due timers (claimed with SKIP LOCKED) and refreshes catalog and rate."""

from __future__ import annotations

import asyncio
import logging

from libs.common.adapters.sms import HeroSmsClient
from libs.common.core import metrics
from libs.common.core.config import Settings
from libs.common.core.faults import crash_point
from libs.common.domain.events import TIMERS, Event, Timer
from libs.common.messaging import ops
from libs.common.messaging.runtime import Worker, open_worker, run_loops
from libs.common.persistence.db import Q, transaction
from libs.common.persistence.outbox_store import enqueue
from services.scheduler.catalog_refresh import refresh_forever

log = logging.getLogger(__name__)

_KINDS = frozenset(t.value for t in Timer)
OUTBOX_RETENTION_SECONDS = 24 * 3600.0
# An SMS deadline that fired this long ago without moving its order on fires again.
REARM_AFTER_SECONDS = 60.0
INBOX_RETENTION_SECONDS = 8 * 24 * 3600.0  # longer than the stream's 7-day max_age


async def fire_due(worker: Worker, limit: int = 200) -> int:
    """Fire one batch of due timers in one transaction; returns how many fired."""
    prefix = worker.settings.subject_prefix
    async with transaction(worker.pool) as conn:
        rows = await conn.fetch(Q.timers_claim_due, limit)
        for row in rows:
            kind = row["kind"]
            event = TIMERS.get(Timer(kind)) if kind in _KINDS else None
            if event is not None:
                await enqueue(conn, Event(event, row["order_id"]), prefix=prefix)
            elif kind == Timer.PURGE_CODE:
                # SMS codes are deleted once the retention after completion has passed.
                await conn.execute(Q.order_purge_code, row["order_id"])
                await conn.execute(Q.messages_purge, row["order_id"])
            else:
                log.error("unknown timer kind %s", kind, extra={"order_id": row["order_id"]})
        if rows:
            crash_point("scheduler.timers_claimed")
            await conn.execute(Q.timers_mark_fired, [r["id"] for r in rows])
    for row in rows:  # counted once committed
        metrics.TIMERS_FIRED.labels(row["kind"]).inc()
    return len(rows)


async def tick_forever(worker: Worker) -> None:
    """Fire due timers until stop, sleeping until the next one is due (bounded by the tick)."""
    tick = worker.settings.scheduler_tick_seconds
    loop = asyncio.get_running_loop()
    next_prune = next_rearm = loop.time()
    while not worker.stop.is_set():
        ops.beat("scheduler-tick")
        try:
            while await fire_due(worker) > 0:
                pass
            if loop.time() >= next_rearm:
                await worker.pool.execute(Q.orders_overdue_rearm, REARM_AFTER_SECONDS)
                next_rearm = loop.time() + 10.0
            if loop.time() >= next_prune:
                await worker.pool.execute(Q.outbox_prune, OUTBOX_RETENTION_SECONDS)
                await worker.pool.execute(Q.inbox_prune, INBOX_RETENTION_SECONDS)
                next_prune = loop.time() + 60.0
        except Exception:
            log.exception("scheduler tick failed")
        try:
            await asyncio.wait_for(worker.stop.wait(), tick)
        except TimeoutError:
            pass
    ops.HEALTH.forget("scheduler-tick")


async def main(settings: Settings, stop: asyncio.Event) -> None:
    """Run the scheduler until stop."""
    async with open_worker("scheduler", settings, stop) as worker:
        provider = HeroSmsClient.from_settings(settings)
        try:
            await run_loops(
                stop,
                tick_forever(worker),
                refresh_forever(worker.pool, provider, settings, worker.stop),
            )
        finally:
            await provider.close()
