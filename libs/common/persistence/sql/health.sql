-- name: db_ping
-- The health check: the database answers.
SELECT 1;
