-- name: outbox_insert
INSERT INTO outbox (id, subject, payload, headers) VALUES ($1, $2, $3, $4);

-- name: outbox_insert_many
-- One statement for a whole batch (10,000 timers due at once): parallel arrays, JSON as
-- text so the jsonb columns need no array codec.
INSERT INTO outbox (id, subject, payload, headers)
SELECT id, subject, payload::jsonb, headers::jsonb
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) AS b(id, subject, payload, headers);

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
