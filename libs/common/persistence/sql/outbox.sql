-- name: outbox_insert
INSERT INTO outbox (id, subject, payload, headers) VALUES ($1, $2, $3, $4);

-- name: outbox_claim
SELECT id, subject, payload, headers
FROM outbox
WHERE published_at IS NULL
ORDER BY created_at
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: outbox_mark_published
UPDATE outbox SET published_at = now() WHERE id = ANY($1::uuid[]);

-- name: outbox_prune
DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1);

-- name: inbox_seen
SELECT 1 FROM inbox WHERE consumer = $1 AND message_id = $2;

-- name: inbox_record
INSERT INTO inbox (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING;

-- name: inbox_prune
-- Older than the stream keeps messages: no redelivery can ask about them any more.
DELETE FROM inbox WHERE processed_at < now() - make_interval(secs => $1);
