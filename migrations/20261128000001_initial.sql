-- Tickets as received: every one, whatever its status, with its raw bytes.
-- Time-ordered ids (UUIDv7) keep the primary key's B-tree appends local.
CREATE TABLE tickets (
    id              uuid PRIMARY KEY,
    received_at     timestamptz NOT NULL,
    idempotency_key text UNIQUE,
    status          text NOT NULL CHECK (status IN ('ok', 'partial', 'invalid')),
    order_id        text,
    vat             numeric(12, 2),
    total           numeric(12, 2),
    problems        jsonb,            -- NULL for ok tickets
    raw             bytea NOT NULL
);
CREATE INDEX tickets_status_received_at ON tickets (status, received_at);
CREATE INDEX tickets_order_id ON tickets (order_id);

-- Lines of ok and partial tickets. No foreign key: a ticket and its lines
-- are written in the same transaction, so the reference holds by construction.
CREATE TABLE ticket_lines (
    ticket_id  uuid NOT NULL,
    line_no    int NOT NULL,
    product_id text NOT NULL,
    name       text NOT NULL,
    price      numeric(12, 2) NOT NULL,
    PRIMARY KEY (ticket_id, line_no)
);

-- The catalogue: the latest name and price seen for each product id.
CREATE TABLE products (
    product_id     text PRIMARY KEY,
    name           text NOT NULL,
    price          numeric(12, 2) NOT NULL,
    first_seen_at  timestamptz NOT NULL,
    last_seen_at   timestamptz NOT NULL,
    last_ticket_id uuid NOT NULL,
    times_seen     bigint NOT NULL
);
