"""The client address an unpaid order was created from, for the per-client cap."""

from alembic import op

from libs.common.persistence.db import split_sql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = """
-- Filled by the column default from the transaction-local setting sms4sats.client, which
-- the gateway's cap check sets in the order's insert transaction (services/gateway/unpaid.py):
-- the insert statements stay as they are. NULL for orders made without the check.
ALTER TABLE orders ADD COLUMN client_addr text
    DEFAULT nullif(current_setting('sms4sats.client', true), '');
-- The cap counts a client's unpaid orders: only those rows are indexed.
CREATE INDEX orders_unpaid_by_client ON orders (client_addr)
    WHERE status = 'pending_payment' AND client_addr IS NOT NULL;
"""

DOWNGRADE = """
DROP INDEX orders_unpaid_by_client;
ALTER TABLE orders DROP COLUMN client_addr;
"""


def upgrade() -> None:
    """Apply the schema change."""
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    """Revert the schema change."""
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
