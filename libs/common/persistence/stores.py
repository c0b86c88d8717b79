"""The PostgreSQL stores bundled: bound once to the pool and the subject prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from libs.common.persistence.account_store import PgAccounts
from libs.common.persistence.catalog_store import PgCatalog
from libs.common.persistence.db import Executor
from libs.common.persistence.ops_store import PgAlarms, PgHealth, PgMetrics
from libs.common.persistence.order_store import PgMessages, PgOrders, PgTimers, PgTokens
from libs.common.persistence.outbox_store import PgInbox, PgOutbox
from libs.common.persistence.refund_store import PgRefunds


class PgStores:
    """Every PostgreSQL store over one handle: the pool, or one transaction's connection."""

    def __init__(self, db: Executor, prefix: str) -> None:
        self._db = db
        self._prefix = prefix
        self.timers = PgTimers(db)
        self.outbox = PgOutbox(db, prefix)
        self.inbox = PgInbox(db)
        self.messages = PgMessages(db)
        self.tokens = PgTokens(db)
        self.orders = PgOrders(db, timers=self.timers, outbox=self.outbox)
        self.alarms = PgAlarms(db)
        self.refunds = PgRefunds(db)
        self.accounts = PgAccounts(db)
        # --- gateway: more stores ---
        self.health = PgHealth(db)

        # --- payments: more stores ---

        # --- provider: more stores ---

        # --- scheduler: more stores ---
        self.catalog = PgCatalog(db)
        self.metrics = PgMetrics(db)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgStores]:
        """The same stores inside one transaction that commits when the block succeeds."""
        if isinstance(self._db, asyncpg.Connection):
            # Already on a connection: a savepoint, so an inner failure stays inner.
            async with self._db.transaction():
                yield self
            return
        async with self._db.acquire() as conn, conn.transaction():
            yield PgStores(conn, self._prefix)
