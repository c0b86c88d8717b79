-- name: catalog_countries_all
SELECT id, name, iso, visible, rent, retry FROM catalog_countries ORDER BY id;

-- name: catalog_services_all
SELECT code, name FROM catalog_services ORDER BY code;

-- name: catalog_prices_all
SELECT country_id, service, cost_usd, count FROM catalog_prices ORDER BY country_id, service;

-- name: catalog_rent_prices_all
SELECT country_id, service, hours, cost_usd, count
FROM catalog_rent_prices ORDER BY country_id, service, hours;

-- name: catalog_clear
-- Run in the same transaction as the inserts below: readers see the old or the new catalog
-- (DELETE, not TRUNCATE, which is not MVCC-safe for readers with an older snapshot).
DELETE FROM catalog_prices; DELETE FROM catalog_services; DELETE FROM catalog_countries;

-- name: catalog_rent_clear
DELETE FROM catalog_rent_prices;

-- name: catalog_countries_insert
INSERT INTO catalog_countries (id, name, iso, visible, rent, retry)
SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::bool[], $5::bool[], $6::bool[]);

-- name: catalog_services_insert
INSERT INTO catalog_services (code, name) SELECT * FROM unnest($1::text[], $2::text[]);

-- name: catalog_prices_insert
INSERT INTO catalog_prices (country_id, service, cost_usd, count)
SELECT * FROM unnest($1::int[], $2::text[], $3::numeric[], $4::int[]);

-- name: catalog_rent_prices_insert
INSERT INTO catalog_rent_prices (country_id, service, hours, cost_usd, count)
SELECT * FROM unnest($1::int[], $2::text[], $3::int[], $4::numeric[], $5::int[]);

-- name: fx_rate_get
SELECT rate, fetched_at, source,
       greatest(extract(epoch FROM (now() - fetched_at)), 0)::float8 AS age_seconds
FROM fx_rates WHERE pair = $1;

-- name: fx_rate_upsert
INSERT INTO fx_rates (pair, rate, fetched_at, source) VALUES ($1, $2, now(), $3)
ON CONFLICT (pair) DO UPDATE SET rate = EXCLUDED.rate, fetched_at = EXCLUDED.fetched_at,
    source = EXCLUDED.source;

-- name: refresh_job_claim
-- Returns a row only to the one caller that finds the job due; it is then not due for `secs`.
-- Concurrent claimers wait on the row lock and re-check next_run_at against the new version.
INSERT INTO refresh_jobs (name, next_run_at) VALUES ($1, now() + make_interval(secs => $2))
ON CONFLICT (name) DO UPDATE SET next_run_at = EXCLUDED.next_run_at
WHERE refresh_jobs.next_run_at <= now()
RETURNING name;

-- name: refresh_job_ok
-- A success (periodic or on demand) also postpones the next periodic run by the interval $3.
INSERT INTO refresh_jobs (name, last_ok_at, counts, next_run_at)
VALUES ($1, now(), $2, now() + make_interval(secs => $3))
ON CONFLICT (name) DO UPDATE SET last_ok_at = now(), last_error = NULL, counts = EXCLUDED.counts,
    next_run_at = greatest(refresh_jobs.next_run_at, EXCLUDED.next_run_at);

-- name: refresh_job_failed
-- A failed run is retried sooner than the regular interval.
UPDATE refresh_jobs
SET last_error = $2, next_run_at = least(next_run_at, now() + make_interval(secs => $3))
WHERE name = $1;

-- name: catalog_version
-- When the catalog was last replaced: readers reload the tables only when this changes.
SELECT last_ok_at FROM refresh_jobs WHERE name = $1;

-- name: refresh_job_get
SELECT name, next_run_at, last_ok_at, last_error, counts FROM refresh_jobs WHERE name = $1;

-- name: catalog_try_lock
-- Single flight across replicas and the on-demand command (session lock: gone if we die).
SELECT pg_try_advisory_lock(hashtext($1));

-- name: catalog_lock
SELECT pg_advisory_lock(hashtext($1));

-- name: catalog_unlock
SELECT pg_advisory_unlock(hashtext($1));
