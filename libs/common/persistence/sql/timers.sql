-- name: timer_set
-- Arms (or re-arms) the order's timer of this kind, due `secs` seconds from now.
INSERT INTO timers (order_id, kind, due_at) VALUES ($1, $2, now() + make_interval(secs => $3))
ON CONFLICT (order_id, kind) DO UPDATE SET due_at = EXCLUDED.due_at, fired_at = NULL;

-- name: timers_claim_due
-- Any number of scheduler replicas may run this at once; the database clock decides.
SELECT id, order_id, kind, due_at
FROM timers
WHERE fired_at IS NULL AND due_at <= now()
ORDER BY due_at
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: timers_next_due_in
-- Seconds until the earliest unfired timer is due (negative: overdue; NULL: none armed).
SELECT extract(epoch FROM min(due_at) - now())::float8 FROM timers WHERE fired_at IS NULL;

-- name: timers_mark_fired
-- clock_timestamp(): the moment of firing, not the start of the claiming transaction.
UPDATE timers SET fired_at = clock_timestamp() WHERE id = ANY($1::bigint[]);

-- name: timer_cancel
DELETE FROM timers WHERE order_id = $1 AND kind = $2 AND fired_at IS NULL;
