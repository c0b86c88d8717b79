-- The provider request budget (table provider_budget, one row per provider account), run by
-- PgRequestBudget in libs/common/persistence/ops_store.py. Times are epoch seconds by the
-- database clock.

-- name: budget_take
-- Reserve the next slot of account $1 (pace interval $2 s, burst $3) if at most $4 s away.
SELECT wait, granted, paused_for, pause_banned, pause_code, pause_until_text
FROM provider_budget_take($1, $2, $3, $4);

-- name: budget_pause
-- Hold every replica of account $1 for $2 s (a longer pause already on wins); $3 banned,
-- $4 the provider's code, $5 its ban end as written.
INSERT INTO provider_budget AS b (account, paused_until, pause_banned, pause_code, pause_until_text)
VALUES ($1, extract(epoch FROM clock_timestamp())::double precision + $2, $3, $4, $5)
ON CONFLICT (account) DO UPDATE
SET paused_until = excluded.paused_until,
    pause_banned = excluded.pause_banned,
    pause_code = excluded.pause_code,
    pause_until_text = excluded.pause_until_text
WHERE excluded.paused_until > b.paused_until;

-- name: budget_paused_for
-- Seconds left in account $1's pause (0 when none; NULL when the account has no row yet).
SELECT greatest(0, paused_until - extract(epoch FROM clock_timestamp())::double precision)
FROM provider_budget WHERE account = $1;
