-- name: orders_awaiting_payment_by_hash
-- Which of these payment hashes belong to orders still waiting for their payment.
SELECT id, status, payment_hash FROM orders
WHERE payment_hash = ANY($1::bytea[]) AND status = 'pending_payment';
