"""Following many activations at once: find orders by activation id, one bulk poll per turn."""

from alembic import op

from libs.common.persistence.db import split_sql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = """
-- An incoming SMS names its activation (webhook, bulk poll): its order is found by it in one
-- indexed lookup, however many orders the table holds (rental pushes name theirs the same way).
CREATE INDEX orders_by_activation ON orders (activation_id)
    WHERE activation_id IS NOT NULL;
-- One bulk poll per provider account and interval, whatever the number of replicas: the
-- replica that moves next_at forward has the turn (the database clock decides).
CREATE TABLE sms_poll_turns (
    account text PRIMARY KEY,
    next_at timestamptz NOT NULL
);
"""

DOWNGRADE = """
DROP TABLE sms_poll_turns;
DROP INDEX orders_by_activation;
"""


def upgrade() -> None:
    """Apply the schema change."""
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    """Revert the schema change."""
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
