"""The outbox relay: publishes events written with the state change to NATS after commit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import asyncpg
from nats.js import JetStreamContext

from libs.common.persistence.db import Q

log = logging.getLogger(__name__)


class OutboxRelay:
    """Publishes unpublished outbox rows with Nats-Msg-Id = event id, then marks them."""

    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext, *, tick: float = 0.5) -> None:
        self._pool = pool
        self._js = js
        self._tick = tick
        self._wake = asyncio.Event()

    async def publish_pending(self, limit: int = 200) -> int:
        """Publish one batch; returns how many rows were published."""
        async with self._pool.acquire() as conn, conn.transaction():
            # SKIP LOCKED lets every service run a relay without double work; a crash
            # between publish and commit republishes, which JetStream deduplicates.
            rows = await conn.fetch(Q.outbox_claim, limit)
            for row in rows:
                headers = row["headers"]
                await self._js.publish(
                    row["subject"], json.dumps(row["payload"]).encode(), headers=headers
                )
            if rows:
                await conn.execute(Q.outbox_mark_published, [r["id"] for r in rows])
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until stop is set, woken by NOTIFY and by a periodic tick."""
        listener = await self._pool.acquire()
        try:
            await listener.add_listener("outbox", self._on_notify)
            while not stop.is_set():
                self._wake.clear()
                try:
                    while await self.publish_pending() > 0:
                        pass
                except Exception:
                    log.exception("outbox relay failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._tick)
        finally:
            with contextlib.suppress(Exception):
                await listener.remove_listener("outbox", self._on_notify)
            await self._pool.release(listener)

    def _on_notify(self, *_args: object) -> None:
        """Wake the relay loop."""
        self._wake.set()
