"""The outbox relay: publishes events written with the state change to NATS after commit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from nats.js import JetStreamContext

from libs.common.persistence.stores import PgStores

log = logging.getLogger(__name__)


class OutboxRelay:
    """Publishes unpublished outbox rows with Nats-Msg-Id = event id, then marks them."""

    def __init__(
        self, stores: PgStores, js: JetStreamContext, *, tick: float = 0.5, batch: int = 500
    ) -> None:
        self._stores = stores
        self._js = js
        self._tick = tick
        self._batch = max(1, batch)
        self._wake = asyncio.Event()

    async def publish_pending(self, limit: int = 0) -> int:
        """Publish one batch (default: the relay's batch size); returns how many rows."""
        async with self._stores.transaction() as tx:
            # Claimed with SKIP LOCKED, so every service can run a relay without double work;
            # a crash between publish and commit republishes, which JetStream deduplicates.
            rows = await tx.outbox.claim(limit or self._batch)
            # All at once, then marked: one round trip of acks per batch instead of one per
            # event. If any publish fails the batch stays unpublished and goes out again;
            # those that did get through are dropped as duplicates by their Nats-Msg-Id.
            await asyncio.gather(
                *(
                    self._js.publish(
                        row.subject, json.dumps(row.payload).encode(), headers=row.headers
                    )
                    for row in rows
                )
            )
            if rows:
                await tx.outbox.mark_published([r.id for r in rows])
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until stop is set, woken by NOTIFY and by a periodic tick."""
        async with self._stores.outbox.wakeups(self._wake.set):
            while not stop.is_set():
                self._wake.clear()
                try:
                    while await self.publish_pending() > 0:
                        pass
                except Exception:
                    log.exception("outbox relay failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._tick)
