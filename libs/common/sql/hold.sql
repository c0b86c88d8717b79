-- name: orders_hold_in_progress
-- Paid hold orders the payments worker keeps in step with the node: held (the HTLC must
-- still be ACCEPTED), to settle, to cancel. Unpaid ones are found through the node's list
-- of pending invoices instead, so however many there are, they never crowd these out.
SELECT id, status, next_poll_at, payment_hash FROM orders
WHERE payment_mode = 'hold'
  AND status IN ('paid', 'allocating_number', 'waiting_for_sms', 'code_received',
                 'refund_pending')
ORDER BY created_at
LIMIT $1;

-- name: orders_awaiting_payment_by_hash
-- Which of these payment hashes belong to orders still waiting for their payment.
SELECT id, payment_hash FROM orders
WHERE payment_hash = ANY($1::bytea[]) AND status = 'pending_payment';
