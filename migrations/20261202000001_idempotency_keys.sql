-- Idempotency keys in a table of their own: key -> the ticket first stored
-- under it. Written by the batch writers in the same statement as the
-- tickets (src/store.rs), looked up by a request whose key the process does
-- not remember (src/http.rs), expired after `idempotency_retention_hours`
-- (src/startup.rs). A unique index on tickets could not do this once
-- tickets are partitioned by time: its key must then include received_at,
-- and every retry has a new one.
--
-- `status` and `body_sha256` are what a repeat is answered with and
-- compared by: the same body is a duplicate (202 with `ticket_id`),
-- another one a conflict (409).
CREATE TABLE idempotency_keys (
    key         text PRIMARY KEY,
    ticket_id   uuid NOT NULL,
    received_at timestamptz NOT NULL,
    status      text NOT NULL CHECK (status IN ('ok', 'partial', 'invalid')),
    body_sha256 bytea NOT NULL
);
-- Expiry deletes the oldest keys first.
CREATE INDEX idempotency_keys_received_at ON idempotency_keys (received_at);

-- The first ticket of each key (a database partitioned before this
-- migration may hold a key twice).
INSERT INTO idempotency_keys (key, ticket_id, received_at, status, body_sha256)
SELECT DISTINCT ON (idempotency_key) idempotency_key, id, received_at, status, sha256(raw)
FROM tickets
WHERE idempotency_key IS NOT NULL
ORDER BY idempotency_key, received_at, id;

-- tickets.idempotency_key stays, as what the request carried. (A database
-- partitioned before this migration has no such index.)
DROP INDEX IF EXISTS tickets_idempotency_key;
