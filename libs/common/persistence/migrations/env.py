"""Alembic environment: runs migrations over asyncpg against SMS4SATS_DATABASE_URL."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from libs.common.core.config import load_settings
from libs.common.persistence.db import sqlalchemy_url


def _run(connection: Connection) -> None:
    """Run the migrations on one connection."""
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    """Connect and migrate."""
    url = context.config.attributes.get("database_url") or load_settings().database_url
    engine = create_async_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    async with engine.connect() as conn:
        await conn.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline mode is not supported; point SMS4SATS_DATABASE_URL at a server")
asyncio.run(_main())
