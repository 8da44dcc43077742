-- Index only the rows that are looked up, so that the writers insert two
-- index entries fewer per ticket (docs/performance.md, Where the time goes):
-- - the idempotency key is unique where there is one; tickets without a key
--   (most of them) no longer get a NULL entry;
-- - `reprocess` reads tickets by status only for those with problems, in
--   (received_at, id) order; ok tickets, the bulk, are not indexed by status.
ALTER TABLE tickets DROP CONSTRAINT tickets_idempotency_key_key;
CREATE UNIQUE INDEX tickets_idempotency_key ON tickets (idempotency_key) WHERE idempotency_key IS NOT NULL;
DROP INDEX tickets_status_received_at;
CREATE INDEX tickets_with_problems ON tickets (status, received_at, id) WHERE status <> 'ok';
