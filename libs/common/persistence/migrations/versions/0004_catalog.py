"""Catalog (countries, services, prices, rent prices) and the BTC/USD rate, cached from upstream."""

from alembic import op

from libs.common.persistence.db import split_sql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = """
-- What the provider sells, replaced as a whole by each catalog refresh (one transaction).
CREATE TABLE catalog_countries (
    id      integer PRIMARY KEY,                 -- the provider's numeric id
    name    text NOT NULL,                       -- English name as the provider spells it
    iso     text CHECK (iso ~ '^[A-Z]{2}$'),     -- ISO alpha-2, NULL when we do not know it
    visible boolean NOT NULL,
    rent    boolean NOT NULL,
    retry   boolean                              -- NULL when the provider does not say
);

CREATE TABLE catalog_services (
    code text PRIMARY KEY,
    name text NOT NULL
);

CREATE TABLE catalog_prices (
    country_id integer NOT NULL,
    service    text NOT NULL,
    cost_usd   numeric NOT NULL CHECK (cost_usd >= 0),
    count      integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (country_id, service)
);

CREATE TABLE catalog_rent_prices (
    country_id integer NOT NULL,
    service    text NOT NULL,
    hours      integer NOT NULL CHECK (hours > 0),
    cost_usd   numeric NOT NULL CHECK (cost_usd >= 0),
    count      integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (country_id, service, hours)
);

CREATE TABLE fx_rates (
    pair       text PRIMARY KEY,                 -- 'BTC/USD'
    rate       numeric NOT NULL CHECK (rate > 0),
    fetched_at timestamptz NOT NULL,
    source     text NOT NULL
);

-- Periodic jobs (catalog, fx) claimed by any scheduler replica: the claim moves next_run_at.
CREATE TABLE refresh_jobs (
    name        text PRIMARY KEY,
    next_run_at timestamptz NOT NULL DEFAULT '-infinity',
    last_ok_at  timestamptz,
    last_error  text,
    counts      jsonb
);
"""

DOWNGRADE = """
DROP TABLE refresh_jobs, fx_rates, catalog_rent_prices, catalog_prices, catalog_services,
    catalog_countries;
"""


def upgrade() -> None:
    """Create the catalog and rate tables."""
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    """Drop the catalog and rate tables."""
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
