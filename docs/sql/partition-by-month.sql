-- Monthly partitions of tickets and ticket_lines by received_at.
--
-- Not applied by `ticket-ingest migrate`: it is a one-time conversion an
-- operator runs in a maintenance window once one table outgrows what
-- VACUUM and index maintenance can handle (see docs/scaling.md). It
-- assumes the service is stopped (its WAL keeps whatever arrives meanwhile
-- only if it runs; stop the producers or let them get 503s).
--
-- A partitioned table's primary key must contain the partition key, so the
-- keys become (id, received_at) and (ticket_id, received_at, line_no); lines
-- already carry their ticket's received_at. The service's statements work
-- unchanged: a replayed id carries the same received_at, so INSERT … ON
-- CONFLICT DO NOTHING still skips it. The idempotency_key uniqueness becomes
-- per partition (a repeat months later would be stored again).

BEGIN;

ALTER TABLE tickets RENAME TO tickets_unpartitioned;
ALTER TABLE ticket_lines RENAME TO ticket_lines_unpartitioned;

CREATE TABLE tickets (
    id              uuid NOT NULL,
    received_at     timestamptz NOT NULL,
    idempotency_key text,
    status          text NOT NULL CHECK (status IN ('ok', 'partial', 'invalid')),
    order_id        text,
    vat             numeric(12, 2),
    total           numeric(12, 2),
    problems        jsonb,
    raw             bytea NOT NULL,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
CREATE UNIQUE INDEX ON tickets (idempotency_key, received_at) WHERE idempotency_key IS NOT NULL;
CREATE INDEX ON tickets (status, received_at, id) WHERE status <> 'ok';
CREATE INDEX ON tickets (order_id);

CREATE TABLE ticket_lines (
    ticket_id   uuid NOT NULL,
    received_at timestamptz NOT NULL,
    line_no     int NOT NULL,
    product_id  text NOT NULL,
    name        text NOT NULL,
    price       numeric(12, 2) NOT NULL,
    PRIMARY KEY (ticket_id, received_at, line_no)
) PARTITION BY RANGE (received_at);

-- One partition per month from the oldest ticket to three months ahead;
-- a monthly job (cron, pg_cron, pg_partman) keeps creating the next ones.
DO $$
DECLARE
    month date := date_trunc('month', coalesce((SELECT min(received_at) FROM tickets_unpartitioned), now()));
BEGIN
    WHILE month < date_trunc('month', now()) + interval '3 months' LOOP
        EXECUTE format('CREATE TABLE tickets_%s PARTITION OF tickets FOR VALUES FROM (%L) TO (%L)',
                       to_char(month, 'YYYY_MM'), month, month + interval '1 month');
        EXECUTE format('CREATE TABLE ticket_lines_%s PARTITION OF ticket_lines FOR VALUES FROM (%L) TO (%L)',
                       to_char(month, 'YYYY_MM'), month, month + interval '1 month');
        month := month + interval '1 month';
    END LOOP;
END $$;

INSERT INTO tickets SELECT * FROM tickets_unpartitioned;
INSERT INTO ticket_lines (ticket_id, received_at, line_no, product_id, name, price)
SELECT ticket_id, received_at, line_no, product_id, name, price FROM ticket_lines_unpartitioned;

DROP TABLE ticket_lines_unpartitioned;
DROP TABLE tickets_unpartitioned;

COMMIT;

-- Retention: dropping a month is instant and leaves no bloat, e.g.
--   ALTER TABLE tickets DETACH PARTITION tickets_2025_01; DROP TABLE tickets_2025_01;
--   ALTER TABLE ticket_lines DETACH PARTITION ticket_lines_2025_01; DROP TABLE ticket_lines_2025_01;
