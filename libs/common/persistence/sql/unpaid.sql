-- name: unpaid_count_for_client
-- A client's unpaid orders that can still be paid, and when the oldest of them expires (its
-- Retry-After). An order whose invoice expired holds no slot even while it is still
-- pending_payment (the payments worker down or behind): else a client waits on it forever.
-- The partial index orders_unpaid_by_client still serves it; the expiry is filtered on its rows.
SELECT count(*) AS unpaid, min(invoice_expires_at) AS first_expiry FROM orders
WHERE client_addr = $1 AND status = 'pending_payment' AND invoice_expires_at > now();

-- name: unpaid_lock_client
-- Serialises one client's order inserts until commit, so two cannot both take the last slot.
SELECT pg_advisory_xact_lock(hashtextextended('sms4sats.unpaid:' || $1, 0));

-- name: unpaid_tag_transaction
-- The new order's client_addr default reads this (transaction-local) setting.
SELECT set_config('sms4sats.client', $1, true);
