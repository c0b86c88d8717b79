-- name: refund_insert
-- The intent to pay, written in the same transaction that moves the order to
-- refund_pending, before any payment is sent. One per order and per refund invoice, ever.
-- Hold-invoice orders need no payout: their invoice is cancelled instead.
INSERT INTO refunds (order_id, payment_request, payment_hash, amount_sats)
SELECT id, refund_invoice, refund_payment_hash, price_sats FROM orders
WHERE id = $1 AND payment_mode = 'standard'
ON CONFLICT DO NOTHING;

-- name: refund_insert_amount
-- refund_insert for part of the price ($2 sats): a rental the provider ended early.
INSERT INTO refunds (order_id, payment_request, payment_hash, amount_sats)
SELECT id, refund_invoice, refund_payment_hash, $2 FROM orders
WHERE id = $1 AND payment_mode = 'standard'
ON CONFLICT DO NOTHING;

-- name: refund_get
SELECT * FROM refunds WHERE order_id = $1;

-- name: refund_claim
-- Claims a refund for one attempt: a due pending one, or an in-flight one whose lease ran
-- out (its worker died). The claimer always tracks the payment at the node before sending,
-- and every later write names the claim, so a slow former claimer cannot overwrite it.
-- new_attempt says whether this claim counted an attempt (only then may it give one back).
WITH before AS (SELECT order_id, status FROM refunds WHERE order_id = $1 FOR UPDATE)
UPDATE refunds r
SET status = 'in_flight',
    -- Re-claiming an in-flight refund after its lease is not a new attempt.
    attempts = r.attempts + CASE WHEN r.status = 'pending' THEN 1 ELSE 0 END,
    lease_until = now() + make_interval(secs => $2),
    claim_id = $3,
    updated_at = now()
FROM before b
WHERE r.order_id = b.order_id
  AND ((r.status = 'pending' AND r.next_attempt_at <= now())
       OR (r.status = 'in_flight' AND r.lease_until < now()))
RETURNING r.*, b.status = 'pending' AS new_attempt;

-- name: refunds_due
SELECT order_id FROM refunds
WHERE (status = 'pending' AND next_attempt_at <= now())
   OR (status = 'in_flight' AND lease_until < now())
ORDER BY next_attempt_at
LIMIT $1;

-- name: refund_succeeded
-- Success is recorded whoever holds the claim: the node said the money went out.
UPDATE refunds
SET status = 'succeeded', fee_sat = $2, paid_at = now(), updated_at = now(),
    lease_until = NULL, claim_id = NULL
WHERE order_id = $1 AND status = 'in_flight'
RETURNING order_id;

-- name: refund_retry_later
UPDATE refunds
SET status = 'pending', last_error = $3, lease_until = NULL, claim_id = NULL,
    updated_at = now(), next_attempt_at = now() + make_interval(secs => $4)
WHERE order_id = $1 AND status = 'in_flight' AND claim_id = $2;

-- name: refund_retry_uncounted
-- As refund_retry_later, and the claim's attempt is given back: the send never reached the
-- node (and the node confirmed it knows no payment), so it was no attempt to pay.
UPDATE refunds
SET status = 'pending', last_error = $3, lease_until = NULL, claim_id = NULL,
    attempts = greatest(attempts - 1, 0),
    updated_at = now(), next_attempt_at = now() + make_interval(secs => $4)
WHERE order_id = $1 AND status = 'in_flight' AND claim_id = $2;

-- name: refund_given_up
UPDATE refunds
SET status = 'failed', last_error = $3, lease_until = NULL, claim_id = NULL, updated_at = now()
WHERE order_id = $1 AND status = 'in_flight' AND claim_id = $2
RETURNING order_id;

-- name: refunds_failed
-- For operators: refunds that ended refund_failed and must be paid by hand.
SELECT * FROM refunds WHERE status = 'failed' ORDER BY updated_at;
