"""Initial schema: orders, their transition log, L402 tokens, refunds, outbox, inbox, timers."""

from alembic import op

from libs.common.persistence.db import split_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE orders (
    id                  text PRIMARY KEY,
    type                text NOT NULL,
    status              text NOT NULL,
    service             text NOT NULL,
    country_id          integer NOT NULL,
    price_sats          bigint NOT NULL CHECK (price_sats > 0),
    provider_cost_usd   numeric(14, 6) NOT NULL,
    payment_hash        bytea NOT NULL UNIQUE,
    payment_request     text NOT NULL,
    invoice_expires_at  timestamptz NOT NULL,
    refund_invoice      text,
    refund_payment_hash bytea,
    activation_id       text,
    phone_number        text,
    code                text,
    sms_text            text,
    sms_received_at     timestamptz,
    next_poll_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    paid_at             timestamptz,
    deadline_at         timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
-- The provider's SMS poller claims due orders through this index.
CREATE INDEX orders_poll_due ON orders (next_poll_at)
    WHERE status IN ('waiting_for_sms', 'code_received');
CREATE INDEX orders_by_status ON orders (status) WHERE status NOT IN
    ('completed', 'refunded', 'refund_failed', 'failed', 'expired');
-- A refund invoice can be paid only once, so it may back only one order.
CREATE UNIQUE INDEX orders_refund_hash ON orders (refund_payment_hash);

-- Every status change, written by a trigger so no writer can forget it.
CREATE TABLE order_transitions (
    id          bigserial PRIMARY KEY,
    order_id    text NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    from_status text,
    to_status   text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_transitions_order ON order_transitions (order_id);

CREATE FUNCTION log_order_transition() RETURNS trigger AS $$
BEGIN
    INSERT INTO order_transitions (order_id, from_status, to_status)
    VALUES (NEW.id, CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status);
    RETURN NEW;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER orders_insert_transition AFTER INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION log_order_transition();
CREATE TRIGGER orders_update_transition AFTER UPDATE OF status ON orders
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION log_order_transition();

-- Per-token root keys, stored under sha256(identifier); deleting a row revokes the token.
CREATE TABLE l402_tokens (
    key_id     bytea PRIMARY KEY,
    root_key   bytea NOT NULL,
    order_id   text NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX l402_tokens_order ON l402_tokens (order_id);

-- One refund per order; the refund invoice's payment hash can never be paid twice.
CREATE TABLE refunds (
    order_id        text PRIMARY KEY REFERENCES orders (id),
    payment_request text NOT NULL,
    payment_hash    bytea NOT NULL UNIQUE,
    amount_sats     bigint NOT NULL CHECK (amount_sats > 0),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'in_flight', 'succeeded', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    claim_id        uuid,
    last_error      text,
    fee_sat         bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    paid_at         timestamptz
);
CREATE INDEX refunds_due ON refunds (next_attempt_at) WHERE status IN ('pending', 'in_flight');

-- Transactional outbox: events written with the state change, relayed to NATS afterwards.
CREATE TABLE outbox (
    id           uuid PRIMARY KEY,
    subject      text NOT NULL,
    payload      jsonb NOT NULL,
    headers      jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL;

CREATE FUNCTION notify_outbox() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox();

-- Idempotent consumers: a message id is recorded with the effect it caused.
CREATE TABLE inbox (
    consumer     text NOT NULL,
    message_id   text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

-- Durable timers; any number of schedulers claim due rows with SKIP LOCKED.
CREATE TABLE timers (
    id       bigserial PRIMARY KEY,
    order_id text NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    kind     text NOT NULL,
    due_at   timestamptz NOT NULL,
    fired_at timestamptz,
    UNIQUE (order_id, kind)
);
CREATE INDEX timers_due ON timers (due_at) WHERE fired_at IS NULL;
"""

DOWNGRADE = """
DROP TABLE timers, inbox, outbox, refunds, l402_tokens, order_transitions, orders CASCADE;
DROP FUNCTION log_order_transition, notify_outbox;
"""


def upgrade() -> None:
    """Create the initial schema."""
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    """Drop the initial schema."""
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
