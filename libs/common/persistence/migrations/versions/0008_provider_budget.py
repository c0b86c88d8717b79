"""The provider request budget: one row per provider account, shared by every replica."""

from alembic import op

from libs.common.persistence.db import split_sql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = """
-- One row per provider account (a hash of provider URL and API key, never the key). Times are
-- epoch seconds by the database clock, so every replica reads the same clock.
CREATE TABLE provider_budget (
    account text PRIMARY KEY,
    -- GCRA "theoretical arrival time": when the pace allows the next call.
    tat double precision NOT NULL DEFAULT 0,
    -- A 429 or BANNED:<until> seen by any replica holds every replica until then.
    paused_until double precision NOT NULL DEFAULT 0,
    -- What a wait too long to sleep through raises: Banned (with the provider's ban end as it
    -- wrote it) or RateLimited, and the provider's code.
    pause_banned boolean NOT NULL DEFAULT false,
    pause_code text,
    pause_until_text text
);

-- Reserve the next slot of `p_account` if it is at most `p_ahead` s away: one round trip per
-- provider call. The clock is read after the row lock is held, so a caller that queued
-- behind others never computes its slot from a stale "now". A refused call changes nothing.
CREATE FUNCTION provider_budget_take(
    p_account text, p_interval double precision, p_burst double precision,
    p_ahead double precision,
    OUT wait double precision, OUT granted boolean, OUT paused_for double precision,
    OUT pause_banned boolean, OUT pause_code text, OUT pause_until_text text
) LANGUAGE plpgsql AS $$
DECLARE
    b provider_budget%ROWTYPE;
    now_s double precision;
    base double precision;
    new_tat double precision;
    send_at double precision;
BEGIN
    SELECT * INTO b FROM provider_budget WHERE account = p_account FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO provider_budget (account) VALUES (p_account) ON CONFLICT DO NOTHING;
        SELECT * INTO b FROM provider_budget WHERE account = p_account FOR UPDATE;
    END IF;
    now_s := extract(epoch FROM clock_timestamp())::double precision;
    base := greatest(now_s, b.paused_until);
    new_tat := greatest(b.tat, base) + p_interval;
    send_at := greatest(base, new_tat - p_burst * p_interval);
    wait := send_at - now_s;
    granted := wait <= p_ahead + 1e-9;
    IF granted THEN
        UPDATE provider_budget SET tat = new_tat WHERE account = p_account;
    END IF;
    paused_for := greatest(0, b.paused_until - now_s);
    pause_banned := b.pause_banned;
    pause_code := b.pause_code;
    pause_until_text := b.pause_until_text;
END;
$$;
"""

DOWNGRADE = """
DROP FUNCTION provider_budget_take(text, double precision, double precision, double precision);
DROP TABLE provider_budget;
"""


def upgrade() -> None:
    """Apply the schema change."""
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    """Revert the schema change."""
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
