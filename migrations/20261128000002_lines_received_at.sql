-- Lines carry their ticket's received_at, so that ticket_lines can be
-- partitioned and expired by time exactly like tickets (docs/scaling.md)
-- without a join.
ALTER TABLE ticket_lines ADD COLUMN received_at timestamptz;
UPDATE ticket_lines l SET received_at = t.received_at FROM tickets t WHERE t.id = l.ticket_id;
ALTER TABLE ticket_lines ALTER COLUMN received_at SET NOT NULL;
