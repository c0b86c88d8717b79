"""Settle first, finish later: when a hold invoice was settled, and the provider finish to do."""

from alembic import op

from libs.common.persistence.db import split_sql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = """
-- When the payments worker saw the hold invoice SETTLED at the node. The classic API shows
-- a hold order's code only from then on (written in the transaction that completes it).
ALTER TABLE orders ADD COLUMN settled_at timestamptz;
-- Finishing the activation at the provider (setStatus 6) is housekeeping done after the
-- order's outcome: the next try is due at finish_due_at (NULL: nothing left to do), claimed
-- with SKIP LOCKED by the provider worker and pushed back with a backoff per failed try.
ALTER TABLE orders ADD COLUMN finish_due_at timestamptz;
ALTER TABLE orders ADD COLUMN finish_attempts integer NOT NULL DEFAULT 0;
CREATE INDEX orders_finish_due ON orders (finish_due_at) WHERE finish_due_at IS NOT NULL;
-- The hold sweep looks for completed hold orders whose settle was not recorded (few, and
-- only until their code is purged): an index of just those keeps the look cheap.
CREATE INDEX orders_hold_completed_unsettled ON orders (id)
WHERE payment_mode = 'hold' AND status = 'completed' AND settled_at IS NULL
  AND code IS NOT NULL;
-- Hold orders completed before this column existed were completed after their settle (or
-- showed their code already): they keep showing it.
UPDATE orders SET settled_at = finished_at WHERE payment_mode = 'hold' AND status = 'completed';
"""

DOWNGRADE = """
DROP INDEX orders_hold_completed_unsettled;
DROP INDEX orders_finish_due;
ALTER TABLE orders DROP COLUMN finish_attempts;
ALTER TABLE orders DROP COLUMN finish_due_at;
ALTER TABLE orders DROP COLUMN settled_at;
"""


def upgrade() -> None:
    """Apply the schema change."""
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    """Revert the schema change."""
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
