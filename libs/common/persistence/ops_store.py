"""The operator's tables and read-only reports: alarms, metric gauges and invariant checks.

Every SQL statement that touches `provider_alarms`, and every read-only query behind the
metrics and the invariant checker, lives here.
"""

from __future__ import annotations

from datetime import datetime

from libs.common.domain.alarms import Alarm
from libs.common.persistence.db import Executor, Q


class PgAlarms:
    """The provider_alarms table: a row means the alarm is raised."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def raise_(self, alarm: Alarm, detail: str) -> datetime | None:
        """Raise the alarm; returns when it was first raised, None when it already was."""
        since: datetime | None = await self._db.fetchval(Q.alarm_raise, alarm.value, detail)
        return since

    async def clear(self, alarm: Alarm) -> bool:
        """Clear the alarm; True when it was raised."""
        return await self._db.fetchval(Q.alarm_clear, alarm.value) is not None

    async def active(self, alarm: Alarm) -> tuple[str, datetime] | None:
        """(detail, since) of a raised alarm, or None."""
        row = await self._db.fetchrow(Q.alarm_active, alarm.value)
        return None if row is None else (row["detail"], row["since"])


# --- gateway: health ---


class PgHealth:
    """Whether the database answers (the gateway's health check)."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def ping(self) -> None:
        """Run the cheapest query; raises when the database cannot answer."""
        await self._db.fetchval(Q.db_ping)


# --- metrics (scheduler & libs) ---

# --- invariants (scheduler & libs) ---
