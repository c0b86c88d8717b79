"""Deprecated module-level access to order_messages; use `PgMessages` in order_store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from libs.common.domain.messages import Message as Message
from libs.common.domain.messages import extract_code as extract_code
from libs.common.domain.messages import storable as storable
from libs.common.persistence.db import Q


async def record(conn: asyncpg.Connection | asyncpg.Pool, order_id: str, msg: Message) -> bool:
    """Store a message once; returns False when it was already there (a redelivery)."""
    text, phone_from = storable(msg.text), storable(msg.phone_from)
    code = storable(msg.code) or extract_code(text)
    inserted = await conn.fetchval(
        Q.message_insert, order_id, msg.dedup_key(), phone_from, text, code, msg.received_at
    )
    return inserted is not None


def from_json(items: list[dict[str, Any]] | None) -> list[Message]:
    """The messages as order_by_token aggregates them (receivedAt in epoch seconds)."""
    return [
        Message(
            received_at=datetime.fromtimestamp(float(m["receivedAt"]), UTC),
            text=m["text"],
            code=m["code"],
            phone_from=m["phoneFrom"],
        )
        for m in items or []
    ]


async def for_order(conn: asyncpg.Connection | asyncpg.Pool, order_id: str) -> list[Message]:
    """Every message of an order, oldest first."""
    rows = await conn.fetch(Q.messages_for_order, order_id)
    return [
        Message(
            received_at=r["received_at"], text=r["text"], code=r["code"], phone_from=r["phone_from"]
        )
        for r in rows
    ]
