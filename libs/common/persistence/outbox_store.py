"""The outbox and inbox tables: events written with the state change, and handled messages.

Every SQL statement that touches `outbox` or `inbox` lives here. The relay that publishes the
outbox to NATS is `libs.common.messaging.outbox`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from libs.common.core.logs import LOG_CONTEXT
from libs.common.domain.events import Event
from libs.common.persistence.db import Executor, Q


@dataclass(frozen=True)
class OutboxMessage:
    """An unpublished outbox row, as the relay publishes it."""

    id: uuid.UUID
    subject: str
    payload: dict[str, Any]
    headers: dict[str, str]


def _correlated(event: Event) -> Event:
    """The event, carrying the correlation id of the request or event being handled.

    Without one of its own, it takes LOG_CONTEXT's, so a chain of events can be followed
    across services.
    """
    correlation_id = (LOG_CONTEXT.get() or {}).get("correlation_id")
    if not event.correlation_id and correlation_id:
        return dataclasses.replace(event, correlation_id=correlation_id)
    return event


class PgOutbox:
    """The outbox table, bound to one database handle and the subject prefix."""

    def __init__(self, db: Executor, prefix: str) -> None:
        self._db = db
        self._prefix = prefix

    async def enqueue(self, event: Event) -> None:
        """Write an event in the caller's transaction; it is published only if that commits.

        Without a correlation id of its own, the event carries the one of the request or event
        being handled (LOG_CONTEXT), so a chain of events can be followed across services.
        """
        event = _correlated(event)
        await self._db.execute(
            Q.outbox_insert,
            uuid.UUID(event.id),
            event.subject(self._prefix),
            event.payload(),
            event.headers(),
        )

    async def enqueue_many(self, events: Sequence[Event]) -> None:
        """Write many events in one statement, as enqueue does one (a batch of fired timers).

        One round trip and one NOTIFY (the trigger is per statement) for the whole batch.
        """
        if not events:
            return
        batch = [_correlated(e) for e in events]
        await self._db.execute(
            Q.outbox_insert_many,
            [uuid.UUID(e.id) for e in batch],
            [e.subject(self._prefix) for e in batch],
            [json.dumps(e.payload()) for e in batch],
            [json.dumps(e.headers()) for e in batch],
        )

    async def claim(self, limit: int) -> list[OutboxMessage]:
        """Lock up to `limit` unpublished rows, oldest first (inside a transaction).

        SKIP LOCKED lets every service run a relay without double work.
        """
        rows = await self._db.fetch(Q.outbox_claim, limit)
        return [OutboxMessage(r["id"], r["subject"], r["payload"], r["headers"]) for r in rows]

    async def mark_published(self, ids: list[uuid.UUID]) -> None:
        """Mark claimed rows published (in the claiming transaction)."""
        await self._db.execute(Q.outbox_mark_published, ids)

    async def prune(self, older_than_seconds: float) -> None:
        """Delete rows published more than `older_than_seconds` ago."""
        await self._db.execute(Q.outbox_prune, older_than_seconds)

    @asynccontextmanager
    async def wakeups(self, wake: Callable[[], None]) -> AsyncIterator[None]:
        """Call `wake` on every NOTIFY of a new outbox row while the block runs.

        Holds one pool connection for the block: LISTEN needs a session of its own.
        """
        assert isinstance(self._db, asyncpg.Pool), "LISTEN needs the pool, not a transaction"
        pool = self._db

        def on_notify(*_args: object) -> None:
            wake()

        listener = await pool.acquire()
        try:
            await listener.add_listener("outbox", on_notify)
            try:
                yield
            finally:
                # A broken connection has no listener left to remove.
                with contextlib.suppress(Exception):
                    await listener.remove_listener("outbox", on_notify)
        finally:
            await pool.release(listener)


class PgInbox:
    """The inbox table: (consumer, message id) pairs already handled."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def seen(self, consumer: str, message_id: str) -> bool:
        """Whether this consumer already handled this message."""
        return bool(await self._db.fetchval(Q.inbox_seen, consumer, message_id))

    async def record(self, consumer: str, message_id: str) -> None:
        """Remember that this consumer handled this message."""
        await self._db.execute(Q.inbox_record, consumer, message_id)

    async def prune(self, older_than_seconds: float) -> None:
        """Forget messages handled more than `older_than_seconds` ago."""
        await self._db.execute(Q.inbox_prune, older_than_seconds)
