-- name: order_create
-- Every new order, whatever its API and payment mode; client_addr comes from the
-- transaction's sms4sats.client setting (the unpaid cap), through the column default.
INSERT INTO orders (
    id, type, status, service, country_id, price_sats, provider_cost_usd,
    payment_hash, payment_request, invoice_expires_at, payment_mode, refund_invoice,
    refund_payment_hash, rent_hours, reactivates, preimage, account_id
) VALUES ($1, $2, 'pending_payment', $3, $4, $5, $6, $7, $8, COALESCE($9, now()), $10, $11,
          $12, $13, $14, $15, $16)
RETURNING *;

-- name: order_stop_polling
UPDATE orders SET next_poll_at = NULL WHERE id = $1 AND status = 'code_received';

-- name: order_mark_settled
-- The hold invoice is SETTLED at the node: from now on the classic API shows the code.
UPDATE orders SET settled_at = COALESCE(settled_at, now()) WHERE id = $1 AND payment_mode = 'hold';

-- name: orders_hold_completed_unsettled
-- Completed hold orders still holding a code but no settled_at: completed by a payments
-- worker that did not record the settle (an older release, mid deploy), or whose HTLC the
-- node gave back (never shown). Codes are purged after the retention, which ends the list.
SELECT id, status, payment_hash FROM orders
WHERE payment_mode = 'hold' AND status = 'completed' AND settled_at IS NULL
  AND code IS NOT NULL
LIMIT $1;

-- name: order_finish_arm
-- The order has its outcome (or its settle is under way): finish the activation at the
-- provider as housekeeping, first try now.
UPDATE orders SET finish_due_at = now(), finish_attempts = 0
WHERE id = $1 AND activation_id IS NOT NULL;

-- name: orders_claim_finish
-- Activations due to be finished at the provider, claimed and pushed back by a lease so a
-- worker that dies mid-call leaves them to be tried again.
WITH due AS (
    SELECT id FROM orders
    WHERE finish_due_at <= now()
    ORDER BY finish_due_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE orders o SET finish_due_at = now() + make_interval(secs => $2)
FROM due WHERE o.id = due.id
RETURNING o.*;

-- name: order_finish_retry
-- A failed finish: try again in $2 seconds.
UPDATE orders SET finish_due_at = now() + make_interval(secs => $2),
                  finish_attempts = finish_attempts + 1
WHERE id = $1;

-- name: order_finish_done
-- Finished at the provider (or given up on): nothing left to do.
UPDATE orders SET finish_due_at = NULL, finish_attempts = finish_attempts + 1 WHERE id = $1;

-- name: orders_hold_open
-- Paid hold orders the payments worker keeps in step with the node: held (the HTLC must
-- still be ACCEPTED), to settle, to cancel. Unpaid ones are found through the node's list
-- of pending invoices instead, so however many there are, they never crowd these out.
SELECT id, status, payment_hash FROM orders
WHERE payment_mode = 'hold'
  AND status IN ('paid', 'allocating_number', 'waiting_for_sms', 'code_received',
                 'refund_pending')
ORDER BY created_at
LIMIT $1;

-- name: order_get
SELECT * FROM orders WHERE id = $1;

-- name: db_now
-- The database's clock: every deadline is judged by it, whatever a worker's clock says.
SELECT now();

-- name: order_by_payment_hash
SELECT * FROM orders WHERE payment_hash = $1;

-- name: order_refund_invoice_in_use
SELECT 1 FROM orders WHERE refund_payment_hash = $1 LIMIT 1;

-- name: orders_pending_payment
SELECT id, status, payment_hash FROM orders
WHERE status = 'pending_payment'
ORDER BY created_at DESC
LIMIT $1;

-- name: orders_claim_sms_poll
-- The provider's SMS poller: due orders that have a number, claimed and pushed back.
WITH due AS (
    SELECT id FROM orders
    WHERE status IN ('waiting_for_sms', 'code_received') AND next_poll_at <= now()
    ORDER BY next_poll_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE orders o SET next_poll_at = now() + make_interval(secs => $2)
FROM due WHERE o.id = due.id
RETURNING o.*;

-- name: order_purge_code
UPDATE orders SET code = NULL, sms_text = NULL, updated_at = now()
WHERE id = $1 AND status IN ('completed', 'refunded', 'refund_failed');

-- name: order_transitions
SELECT from_status, to_status, at FROM order_transitions WHERE order_id = $1 ORDER BY id;

-- name: token_insert
INSERT INTO l402_tokens (key_id, root_key, order_id) VALUES ($1, $2, $3);

-- name: tokens_delete_for_order
DELETE FROM l402_tokens WHERE order_id = $1;

-- name: order_by_token
-- The whole authenticated poll in one indexed read: root key, order, refund and messages.
SELECT t.root_key, t.order_id AS token_order_id, o.*,
       r.status AS refund_status, r.amount_sats AS refund_amount_sats, r.paid_at AS refund_paid_at,
       (SELECT json_agg(json_build_object(
                   'text', m.text, 'code', m.code, 'phoneFrom', m.phone_from,
                   'receivedAt', extract(epoch FROM m.received_at))
                ORDER BY m.received_at, m.id)
        FROM order_messages m WHERE m.order_id = o.id) AS messages
FROM l402_tokens t
JOIN orders o ON o.id = t.order_id
LEFT JOIN refunds r ON r.order_id = o.id
WHERE t.key_id = $1;

-- name: orders_overdue_rearm
-- Safety net: a paid order still short of an outcome after its timer fired has the timer
-- fired again (a lost or given-up message must not leave money hanging or an order open).
UPDATE timers t SET fired_at = NULL, due_at = now()
FROM orders o
WHERE t.order_id = o.id
  AND t.fired_at < now() - make_interval(secs => $1)
  AND ((t.kind = 'sms_timeout' AND o.status IN ('paid', 'allocating_number', 'waiting_for_sms'))
       OR (t.kind = 'code_window' AND o.status = 'code_received')
       OR (t.kind = 'rent_end' AND o.status = 'rent_active'));

-- name: invariant_stuck_paid
-- Paid orders still short of an outcome well past their deadline.
SELECT id, status, deadline_at FROM orders
WHERE paid_at IS NOT NULL
  AND status NOT IN ($TERMINAL)
  AND deadline_at < now() - make_interval(secs => $1);

-- name: invariant_refund_state_mismatch
-- The refund row and the order must agree on how the refund ended.
-- (Standard orders only: a hold order is "refunded" by cancelling its invoice.)
SELECT o.id, o.status, r.status AS refund_status
FROM orders o LEFT JOIN refunds r ON r.order_id = o.id
WHERE o.payment_mode = 'standard' AND ((r.status IS NOT DISTINCT FROM 'succeeded') <> (o.status = 'refunded')
   OR (r.status IS NOT DISTINCT FROM 'failed') <> (o.status = 'refund_failed'));

-- name: invariant_refund_after_code
-- Nobody is paid back for a code they received. (A rental's refund pays back time the
-- provider took away, not its SMS: only the amount is checked, below.)
SELECT o.id, o.status FROM orders o
WHERE o.sms_received_at IS NOT NULL AND o.type <> 'rent-number'
  AND (o.status IN ('refund_pending', 'refunded', 'refund_failed')
       OR EXISTS (SELECT 1 FROM refunds r WHERE r.order_id = o.id));

-- name: invariant_refund_above_price
-- A refund never pays back more than the order's price.
SELECT o.id, o.price_sats, r.amount_sats FROM orders o JOIN refunds r ON r.order_id = o.id
WHERE r.amount_sats > o.price_sats;

-- name: invariant_completed_without_code
SELECT id FROM orders WHERE status = 'completed' AND sms_received_at IS NULL
  AND type IN ('receive-sms', 'receive-sms-reactivate');

-- name: invariant_terminal_entered_twice
-- Every order enters at most one terminal state, once.
SELECT order_id, count(*) AS n FROM order_transitions
WHERE to_status IN ($TERMINAL)
GROUP BY order_id HAVING count(*) > 1;

-- name: invariant_paid_orders
SELECT id, payment_hash, price_sats, status, payment_mode, sms_received_at
FROM orders WHERE paid_at IS NOT NULL AND payment_mode <> 'balance'  -- no invoice
ORDER BY paid_at DESC LIMIT $1;

-- name: invariant_unpaid_orders
SELECT id, payment_hash, status FROM orders WHERE paid_at IS NULL
ORDER BY created_at DESC LIMIT $1;

-- name: invariant_refunds_paid
SELECT order_id, payment_hash, amount_sats FROM refunds WHERE status = 'succeeded'
ORDER BY paid_at DESC LIMIT $1;
