-- name: message_insert
-- At-least-once sources (webhook retries, polling) meet here: the dedup key keeps one copy.
INSERT INTO order_messages (order_id, dedup_key, phone_from, text, code, received_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (order_id, dedup_key) DO NOTHING
RETURNING id;

-- name: messages_for_order
SELECT phone_from, text, code, received_at FROM order_messages
WHERE order_id = $1 ORDER BY received_at, id;

-- name: messages_purge
-- SMS contents are deleted once the retention after the order ended has passed.
UPDATE order_messages SET text = NULL, code = NULL
WHERE order_id = $1 AND (text IS NOT NULL OR code IS NOT NULL);

-- name: order_by_rent_id
SELECT * FROM orders WHERE type = 'rent-number' AND activation_id = $1;

-- name: order_another_sms
-- Re-open polling of an order whose customer asked for another SMS.
UPDATE orders SET another_sms_at = now(), next_poll_at = now(), updated_at = now()
WHERE id = $1 AND status = 'code_received'
RETURNING activation_id;

-- name: order_new_code
-- Another SMS arrived on a code_received order: it becomes the order's code. Guarded so each
-- SMS is taken once: only while another SMS is asked for (the first taker clears the ask; a
-- racing webhook or poll re-checks after the row lock and finds nothing), and only when it
-- differs from the code shown (a late report of it never consumes a newer ask).
UPDATE orders SET code = $2, sms_text = $3, sms_received_at = now(), another_sms_at = NULL,
                  updated_at = now()
WHERE id = $1 AND status = 'code_received' AND another_sms_at IS NOT NULL
  AND (code IS DISTINCT FROM $2 OR sms_text IS DISTINCT FROM $3)
RETURNING *;

-- name: orders_claim_rent_poll
-- Polling fallback for rentals (webhooks may be lost): due rentals, claimed and pushed back.
WITH due AS (
    SELECT id FROM orders
    WHERE status = 'rent_active' AND next_poll_at <= now()
    ORDER BY next_poll_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE orders o SET next_poll_at = now() + make_interval(secs => $2)
FROM due WHERE o.id = due.id
RETURNING o.*;

-- name: alarm_raise
INSERT INTO provider_alarms (name, detail) VALUES ($1, $2)
ON CONFLICT (name) DO NOTHING
RETURNING since;

-- name: alarm_clear
DELETE FROM provider_alarms WHERE name = $1 RETURNING since;

-- name: alarm_active
SELECT detail, since FROM provider_alarms WHERE name = $1;

-- name: order_poll_now
-- An activation webhook: have the poller look at the order now (polling decides).
UPDATE orders SET next_poll_at = now()
WHERE activation_id = $1 AND type <> 'rent-number'
  AND status IN ('waiting_for_sms', 'code_received') AND next_poll_at IS NOT NULL
RETURNING id;

-- name: order_reactivation_in_progress
-- A paid reactivation of this order not over yet (unpaid ones may race; the provider refuses
-- the second reactivation and that order is refunded).
SELECT 1 FROM orders
WHERE reactivates = $1
  AND status NOT IN ('pending_payment', $TERMINAL)
LIMIT 1;

-- name: orders_awaiting_sms
-- The bulk poll's batch: of these activations, the orders waiting for an SMS (the first, or
-- another one asked for). One indexed lookup per round, whatever the number of orders.
SELECT * FROM orders
WHERE activation_id = ANY($1::text[]) AND type <> 'rent-number'
  AND (status = 'waiting_for_sms' OR (status = 'code_received' AND another_sms_at IS NOT NULL));

-- name: order_by_activation
-- The one-time order of this provider activation, whatever its status.
SELECT * FROM orders WHERE activation_id = $1 AND type <> 'rent-number';

-- name: orders_claim_sms_poll_missing
-- The bulk poll's fallback: due orders whose activation the bulk answer ($3) lacked, claimed
-- and pushed back like orders_claim_sms_poll. Orders the answer covered are left due (not
-- rewritten every round); a hash anti-join keeps the round one pass over the due rows.
WITH due AS (
    SELECT o.id FROM orders o
    WHERE o.status IN ('waiting_for_sms', 'code_received') AND o.next_poll_at <= now()
      AND NOT EXISTS (
          SELECT 1 FROM unnest($3::text[]) AS seen (activation_id)
          WHERE seen.activation_id = o.activation_id
      )
    ORDER BY o.next_poll_at
    LIMIT $1
    FOR UPDATE OF o SKIP LOCKED
)
UPDATE orders o SET next_poll_at = now() + make_interval(secs => $2)
FROM due WHERE o.id = due.id
RETURNING o.*;

-- name: sms_poll_turn_hurry
-- A push without its code: the account's next bulk poll is due now, not at its interval.
UPDATE sms_poll_turns SET next_at = now() WHERE account = $1 AND next_at > now();

-- name: sms_poll_turn_claim
-- The bulk poll's turn of one provider account: a row only for the one caller that finds it
-- due, which makes it not due again for $2 seconds. Concurrent claimers wait on the row lock
-- and re-check next_at against the new version.
INSERT INTO sms_poll_turns (account, next_at) VALUES ($1, now() + make_interval(secs => $2))
ON CONFLICT (account) DO UPDATE SET next_at = EXCLUDED.next_at
WHERE sms_poll_turns.next_at <= now()
RETURNING account;
