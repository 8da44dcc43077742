-- The review desk (src/console/): reviews as an audit trail, corrections
-- linked to the tickets they correct, and what its filters need.

-- Every review ever made; the latest one of a ticket is its current review.
-- Rows are appended, never updated (the trigger below refuses it), so the
-- trail of who decided what, and when, cannot be rewritten. No foreign key,
-- as for ticket_lines: tickets may be partitioned and expired by time
-- (docs/scaling.md); the console inserts a review only for a stored ticket.
CREATE TABLE ticket_reviews (
    id          uuid PRIMARY KEY,                 -- UUIDv7
    ticket_id   uuid NOT NULL,
    decision    text NOT NULL CHECK (decision IN ('accepted', 'rejected')),
    note        text NOT NULL DEFAULT '',
    reviewer    text NOT NULL,                    -- the name of the token used
    reviewed_at timestamptz NOT NULL
);
-- A ticket's trail in order, and its latest review for the listings.
CREATE INDEX ticket_reviews_by_ticket ON ticket_reviews (ticket_id, reviewed_at, id);

CREATE FUNCTION ticket_reviews_never_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ticket_reviews is an audit trail: a review is never updated, add another one'
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER ticket_reviews_never_updated BEFORE UPDATE ON ticket_reviews
    FOR EACH ROW EXECUTE FUNCTION ticket_reviews_never_updated();

-- A correction is a new ticket; `corrects` names the original, which is
-- `superseded_by` it. Nullable columns without a default: adding them
-- rewrites nothing, and the writers, which name their columns, leave them
-- NULL.
ALTER TABLE tickets ADD COLUMN corrects uuid, ADD COLUMN superseded_by uuid;

-- Indexes on tickets cost every insert of the hot path, so the console adds
-- only partial ones, which the bulk of tickets (ok, never corrected) skip:
-- - one correction per ticket, enforced; entries only for corrections;
CREATE UNIQUE INDEX tickets_corrects ON tickets (corrects) WHERE corrects IS NOT NULL;
-- - `problem=<code>`: containment in the problems array, for the tickets
--   with problems only (ok tickets have none).
CREATE INDEX tickets_problem_codes ON tickets USING gin (problems jsonb_path_ops) WHERE status <> 'ok';
-- Listings newest first use the UUIDv7 primary key (ids are minted on
-- arrival from the clock of received_at), the filters by status the
-- existing partial index tickets_with_problems, by order tickets_order_id:
-- no index on received_at (src/console/queries.rs, docs/console.md).
