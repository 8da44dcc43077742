-- Whether a ticket is stored, wherever it is: in `tickets`, or, while
-- `ticket-ingest partition` converts the database, still in the old
-- `tickets_unpartitioned` it moves the tickets out of in batches (each
-- ticket is in exactly one of the two at any instant, src/partition.rs).
-- An idempotency key stands for its ticket only while this is true: a key
-- whose ticket is gone (a partition dropped by the retention) is a new key
-- (src/store.rs: the key lookup and the careful path's takeover).
--
-- STABLE: both tables are read in the snapshot of the statement calling
-- it, so a ticket moved meanwhile is seen in exactly one. The old table is
-- named at run time (EXECUTE), since it exists only during a conversion.
-- COST 1000: a query filtering by key evaluates it after the key's index.
CREATE FUNCTION ticket_is_stored(ticket uuid, received timestamptz) RETURNS boolean
LANGUAGE plpgsql STABLE COST 1000 AS $$
DECLARE
    found boolean;
BEGIN
    IF EXISTS (SELECT 1 FROM tickets WHERE id = ticket AND received_at = received) THEN
        RETURN true;
    END IF;
    IF to_regclass('tickets_unpartitioned') IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM tickets_unpartitioned WHERE id = $1)' INTO found USING ticket;
    RETURN found;
END
$$;
