-- Queries behind the gauges of libs/common/core/metrics.py, sampled by libs/common/messaging/ops.py.

-- name: metrics_orders_by_status
SELECT type, status, count(*) AS n FROM orders GROUP BY type, status;

-- name: metrics_invoices_by_state
-- An order's invoice state follows from its status: open while unpaid, expired with the
-- order, for a hold invoice accepted until the order ends, then settled (completed) or
-- cancelled; a standard invoice is settled once paid. Fundings are hold invoices too.
SELECT kind, state, count(*) AS n FROM (
    SELECT payment_mode AS kind,
           CASE
               WHEN status = 'pending_payment' THEN 'open'
               WHEN status = 'expired' THEN 'expired'
               WHEN payment_mode = 'standard' THEN 'settled'
               WHEN status = 'completed' THEN 'settled'
               WHEN status IN ('refunded', 'refund_failed', 'failed') THEN 'cancelled'
               ELSE 'accepted'
           END AS state
    FROM orders WHERE payment_mode <> 'balance'
    UNION ALL
    SELECT 'funding' AS kind,
           CASE status WHEN 'pending' THEN 'open' WHEN 'credited' THEN 'settled'
                       ELSE 'expired' END AS state
    FROM fundings
) invoices
GROUP BY kind, state;

-- name: metrics_paid_past_deadline
-- Paid orders still short of an outcome more than $1 seconds past their deadline.
SELECT count(*) FROM orders
WHERE paid_at IS NOT NULL
  AND status NOT IN ($TERMINAL)
  AND deadline_at < now() - make_interval(secs => $1);

-- name: order_entered_status_seconds_ago
-- How long ago the order last entered status $2 (from the trigger's status log).
SELECT EXTRACT(EPOCH FROM now() - max(at))::float8 FROM order_transitions
WHERE order_id = $1 AND to_status = $2;

-- name: metrics_fx_rate_age
-- Age of the cached BTC/USD rate by the database clock (NULL before the first fetch).
SELECT EXTRACT(EPOCH FROM now() - max(fetched_at))::float8 FROM fx_rates;
