-- name: account_create
INSERT INTO accounts (key_hash, label) VALUES ($1, $2) RETURNING id;

-- name: account_revoke
UPDATE accounts SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id;

-- name: account_by_key
SELECT id, balance_sats FROM accounts WHERE key_hash = $1 AND revoked_at IS NULL;

-- name: account_move
-- One balance movement, atomically: the balance row is locked by the UPDATE, the CHECK
-- (and the WHERE) refuse an overdraft, and (kind, ref) can be recorded only once.
WITH moved AS (
    UPDATE accounts SET balance_sats = balance_sats + $2
    WHERE id = $1 AND balance_sats + $2 >= 0
    RETURNING id, balance_sats
)
INSERT INTO ledger (account_id, amount_sats, kind, ref, balance_after)
SELECT id, $2, $3, $4, balance_sats FROM moved
RETURNING balance_after;

-- name: ledger_has
SELECT 1 FROM ledger WHERE kind = $1 AND ref = $2;

-- name: ledger_history
SELECT amount_sats, kind, ref, balance_after, created_at FROM ledger
WHERE account_id = $1 ORDER BY id DESC LIMIT $2;

-- name: funding_insert
INSERT INTO fundings (id, account_id, amount_sats, payment_hash, preimage, payment_request,
                      expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: fundings_pending
SELECT * FROM fundings WHERE status = 'pending' ORDER BY created_at LIMIT $1;

-- name: funding_mark
UPDATE fundings SET status = $2 WHERE id = $1 AND status = 'pending' RETURNING id;

-- name: invariant_ledger_mismatch
SELECT a.id, a.balance_sats, COALESCE(sum(l.amount_sats), 0) AS ledger_sum
FROM accounts a LEFT JOIN ledger l ON l.account_id = a.id
GROUP BY a.id HAVING a.balance_sats <> COALESCE(sum(l.amount_sats), 0);

-- name: invariant_balance_orders
-- Balance orders: debited once; credited back exactly when refunded.
SELECT o.id, o.status,
       (SELECT count(*) FROM ledger l WHERE l.kind = 'order' AND l.ref = o.id) AS debits,
       (SELECT count(*) FROM ledger l WHERE l.kind = 'refund' AND l.ref = o.id) AS credits
FROM orders o WHERE o.payment_mode = 'balance';

-- name: orders_balance_refund_pending
SELECT id FROM orders WHERE payment_mode = 'balance' AND status = 'refund_pending' LIMIT $1;
