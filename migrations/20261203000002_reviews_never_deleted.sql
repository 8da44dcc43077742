-- The review trail is append-only against DELETE and TRUNCATE too, not
-- only UPDATE (migration 20261201000002): with the service's role, a review
-- once written cannot be taken back. A superuser, or the table's owner,
-- can still drop the triggers, disable them (ALTER TABLE ... DISABLE
-- TRIGGER), skip them (session_replication_role = replica) or drop the
-- table: docs/console.md says so.
CREATE FUNCTION ticket_reviews_never_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ticket_reviews is an audit trail: a review is never deleted'
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER ticket_reviews_never_deleted BEFORE DELETE ON ticket_reviews
    FOR EACH ROW EXECUTE FUNCTION ticket_reviews_never_deleted();
CREATE TRIGGER ticket_reviews_never_truncated BEFORE TRUNCATE ON ticket_reviews
    FOR EACH STATEMENT EXECUTE FUNCTION ticket_reviews_never_deleted();
