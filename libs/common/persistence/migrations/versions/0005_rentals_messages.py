"""Rentals, reactivations and repeated SMS: every message of an order, and provider alarms."""

from alembic import op

from libs.common.persistence.db import split_sql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE orders ADD COLUMN rent_hours integer CHECK (rent_hours > 0);
ALTER TABLE orders ADD COLUMN rent_ends_at timestamptz;
-- receive-sms-reactivate: the earlier completed order whose number is reused.
ALTER TABLE orders ADD COLUMN reactivates text REFERENCES orders (id);
-- The customer asked for another SMS on the same number (setStatus 3) at this time.
ALTER TABLE orders ADD COLUMN another_sms_at timestamptz;
ALTER TABLE orders ADD CONSTRAINT rent_has_hours
    CHECK (type <> 'rent-number' OR rent_hours IS NOT NULL);
ALTER TABLE orders ADD CONSTRAINT reactivation_has_origin
    CHECK (type <> 'receive-sms-reactivate' OR reactivates IS NOT NULL);
-- The gateway looks up reactivations in progress of an order through this index.
CREATE INDEX orders_reactivates ON orders (reactivates) WHERE reactivates IS NOT NULL;

-- Every SMS an order received: one for a verification, any number for a rental. Webhooks and
-- polling both write here; the dedup key makes a message land once whichever comes first.
CREATE TABLE order_messages (
    id          bigserial PRIMARY KEY,
    order_id    text NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    dedup_key   text NOT NULL,
    phone_from  text,
    text        text,
    code        text,
    received_at timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (order_id, dedup_key)
);

-- Conditions an operator must see (e.g. NO_BALANCE at the provider); a row means "raised".
CREATE TABLE provider_alarms (
    name   text PRIMARY KEY,
    detail text NOT NULL DEFAULT '',
    since  timestamptz NOT NULL DEFAULT now()
);
"""

DOWNGRADE = """
DROP TABLE provider_alarms;
DROP TABLE order_messages;
DROP INDEX orders_reactivates;
ALTER TABLE orders DROP CONSTRAINT reactivation_has_origin;
ALTER TABLE orders DROP CONSTRAINT rent_has_hours;
ALTER TABLE orders DROP COLUMN another_sms_at;
ALTER TABLE orders DROP COLUMN reactivates;
ALTER TABLE orders DROP COLUMN rent_ends_at;
ALTER TABLE orders DROP COLUMN rent_hours;
"""


def upgrade() -> None:
    """Apply the schema change."""
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    """Revert the schema change."""
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
