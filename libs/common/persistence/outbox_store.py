"""The outbox and inbox tables: events written with the state change, and handled messages.

Every SQL statement that touches `outbox` or `inbox` lives here. The relay that publishes the
outbox to NATS is `libs.common.messaging.outbox`.
"""

from __future__ import annotations

import dataclasses
import uuid

import asyncpg

from libs.common.core.logs import LOG_CONTEXT
from libs.common.domain.events import Event
from libs.common.persistence.db import Executor, Q


async def enqueue(conn: asyncpg.Connection, event: Event, *, prefix: str) -> None:
    """Write an event in the caller's transaction; it is published only if that commits.

    Without a correlation id of its own, the event carries the one of the request or event
    being handled (LOG_CONTEXT), so a chain of events can be followed across services.
    """
    correlation_id = (LOG_CONTEXT.get() or {}).get("correlation_id")
    if not event.correlation_id and correlation_id:
        event = dataclasses.replace(event, correlation_id=correlation_id)
    await conn.execute(
        Q.outbox_insert,
        uuid.UUID(event.id),
        event.subject(prefix),
        event.payload(),
        event.headers(),
    )


class PgOutbox:
    """The outbox table, bound to one database handle and the subject prefix."""

    def __init__(self, db: Executor, prefix: str) -> None:
        self._db = db
        self._prefix = prefix

    async def enqueue(self, event: Event) -> None:
        """Write an event in the caller's transaction; it is published only if that commits."""
        await enqueue(self._db, event, prefix=self._prefix)


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
