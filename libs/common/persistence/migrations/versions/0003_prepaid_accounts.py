"""Prepaid accounts: API keys (hashed), a ledger of every movement, funding invoices."""

from alembic import op

from libs.common.persistence.db import split_sql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE accounts (
    id           bigserial PRIMARY KEY,
    key_hash     bytea NOT NULL UNIQUE,          -- sha256 of the API key; the key is never stored
    label        text NOT NULL DEFAULT '',
    -- Kept in step with the ledger in the same transaction; the CHECK makes overdraft impossible.
    balance_sats bigint NOT NULL DEFAULT 0 CHECK (balance_sats >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

-- Every movement of a balance, once: a funding credited once, an order debited once and
-- credited back at most once.
CREATE TABLE ledger (
    id            bigserial PRIMARY KEY,
    account_id    bigint NOT NULL REFERENCES accounts (id),
    amount_sats   bigint NOT NULL CHECK (amount_sats <> 0),
    kind          text NOT NULL CHECK (kind IN ('fund', 'order', 'refund')),
    ref           text NOT NULL,
    balance_after bigint NOT NULL CHECK (balance_after >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, ref)
);
CREATE INDEX ledger_account ON ledger (account_id, id);

CREATE TABLE fundings (
    id              text PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts (id),
    amount_sats     bigint NOT NULL CHECK (amount_sats > 0),
    payment_hash    bytea NOT NULL UNIQUE,
    preimage        bytea NOT NULL,
    payment_request text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'credited', 'expired')),
    expires_at      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fundings_pending ON fundings (created_at) WHERE status = 'pending';

ALTER TABLE orders ADD COLUMN account_id bigint REFERENCES accounts (id);
ALTER TABLE orders DROP CONSTRAINT orders_payment_mode_check;
ALTER TABLE orders ADD CONSTRAINT orders_payment_mode_check
    CHECK (payment_mode IN ('standard', 'hold', 'balance'));
ALTER TABLE orders ADD CONSTRAINT balance_has_account
    CHECK (payment_mode <> 'balance' OR account_id IS NOT NULL);
"""

DOWNGRADE = """
ALTER TABLE orders DROP CONSTRAINT balance_has_account;
ALTER TABLE orders DROP CONSTRAINT orders_payment_mode_check;
ALTER TABLE orders ADD CONSTRAINT orders_payment_mode_check
    CHECK (payment_mode IN ('standard', 'hold'));
ALTER TABLE orders DROP COLUMN account_id;
DROP TABLE fundings, ledger, accounts;
"""


def upgrade() -> None:
    """Create the prepaid-account tables."""
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    """Drop the prepaid-account tables."""
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
