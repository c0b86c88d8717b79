"""Hold-invoice orders (classic API): payment mode, our preimage, the accepted HTLC."""

from alembic import op

from libs.common.persistence.db import split_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = """
-- standard: an ordinary invoice settled at once (L402); refunds pay the refundInvoice.
-- hold: our own payment hash; settled only when the code was delivered, else cancelled.
ALTER TABLE orders ADD COLUMN payment_mode text NOT NULL DEFAULT 'standard'
    CHECK (payment_mode IN ('standard', 'hold'));
-- The hold invoice's preimage: the secret that takes the customer's money. Never logged.
ALTER TABLE orders ADD COLUMN preimage bytea;
ALTER TABLE orders ADD COLUMN amt_paid_msat bigint;
ALTER TABLE orders ADD COLUMN htlc_expiry_height integer;
ALTER TABLE orders ADD CONSTRAINT hold_has_preimage
    CHECK (payment_mode <> 'hold' OR preimage IS NOT NULL);
CREATE INDEX orders_hold_open ON orders (created_at)
    WHERE payment_mode = 'hold'
      AND status NOT IN ('completed', 'refunded', 'refund_failed', 'failed', 'expired');
"""

DOWNGRADE = """
DROP INDEX orders_hold_open;
ALTER TABLE orders DROP CONSTRAINT hold_has_preimage;
ALTER TABLE orders DROP COLUMN htlc_expiry_height, DROP COLUMN amt_paid_msat,
    DROP COLUMN preimage, DROP COLUMN payment_mode;
"""


def upgrade() -> None:
    """Add hold-invoice columns."""
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    """Remove hold-invoice columns."""
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
