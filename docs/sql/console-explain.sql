-- The console's list queries as src/console/queries.rs builds them, with
-- the parameters written in; after docs/sql/console-1m.sql:
--   psql "$URL" -f docs/sql/console-explain.sql
-- A cursor in the middle (ticket 500 000, 15 days back) and a day 10 days back:
SELECT id AS mid_id, received_at AS mid_at FROM tickets WHERE order_id = '500000' \gset
SELECT now() - interval '11 days' AS day_start, now() - interval '10 days' AS day_end \gset
-- id bounds of that day, ±60 s (queries::id_floor / id_ceiling)
SELECT (lpad(to_hex((extract(epoch FROM :'day_start'::timestamptz - interval '60 s') * 1000)::bigint), 12, '0') || '00000000000000000000')::uuid AS day_floor,
       (lpad(to_hex((extract(epoch FROM :'day_end'::timestamptz + interval '60 s') * 1000)::bigint), 12, '0') || 'ffffffffffffffffffff')::uuid AS day_ceiling \gset
\set columns 'SELECT t.id, t.received_at, t.status, t.order_id, t.total, t.problems, r.id AS review_id, r.decision, r.note, r.reviewer, r.reviewed_at FROM tickets t LEFT JOIN LATERAL (SELECT id, decision, note, reviewer, reviewed_at FROM ticket_reviews WHERE ticket_id = t.id ORDER BY reviewed_at DESC, id DESC LIMIT 1) r ON true WHERE true'

\echo '== 1. first page, no filter'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) :columns ORDER BY t.id DESC LIMIT 51;
\echo '== 2. a page 500 000 tickets deep, no filter'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) :columns AND t.id < :'mid_id' ORDER BY t.id DESC LIMIT 51;
\echo '== 3. status=ok'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) :columns AND t.status = 'ok' ORDER BY t.id DESC LIMIT 51;
\echo '== 4. status=invalid (3 %), first page'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) :columns AND t.status = 'invalid' AND t.status <> 'ok' ORDER BY t.received_at DESC, t.id DESC LIMIT 51;
\echo '== 5. status=invalid, a page 15 days deep'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) :columns AND t.status = 'invalid' AND t.status <> 'ok' AND (t.received_at, t.id) < (:'mid_at', :'mid_id') ORDER BY t.received_at DESC, t.id DESC LIMIT 51;
\echo '== 6. problem=bad_price (7 %)'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) :columns AND t.status <> 'ok' AND t.problems @> '[{"code": "bad_price"}]'::jsonb ORDER BY t.id DESC LIMIT 51;
\echo '== 7. problem=nul_in_order (0.01 %)'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) :columns AND t.status <> 'ok' AND t.problems @> '[{"code": "nul_in_order"}]'::jsonb ORDER BY t.id DESC LIMIT 51;
\echo '== 8. order=123456'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) :columns AND t.order_id = '123456' ORDER BY t.id DESC LIMIT 51;
\echo '== 9. since/until: one day, 10 days back'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) :columns AND t.received_at >= :'day_start' AND t.id >= :'day_floor' AND t.received_at < :'day_end' AND t.id < :'day_ceiling' ORDER BY t.id DESC LIMIT 51;
\echo '== 10. status=partial, since/until: one day, 10 days back'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) :columns AND t.status = 'partial' AND t.status <> 'ok' AND t.received_at >= :'day_start' AND t.received_at < :'day_end' ORDER BY t.received_at DESC, t.id DESC LIMIT 51;
\echo '== 11. problem=nul_in_order, since/until: one day, 10 days back'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) :columns AND t.status <> 'ok' AND t.problems @> '[{"code": "nul_in_order"}]'::jsonb AND t.received_at >= :'day_start' AND t.id >= :'day_floor' AND t.received_at < :'day_end' AND t.id < :'day_ceiling' ORDER BY t.id DESC LIMIT 51;
\echo '== 12. stats, 24h and 7d (by status, then by problem code)'
SELECT (lpad(to_hex((extract(epoch FROM now() - interval '24 hours' - interval '60 s') * 1000)::bigint), 12, '0') || '00000000000000000000')::uuid AS day_id,
       (lpad(to_hex((extract(epoch FROM now() - interval '7 days' - interval '60 s') * 1000)::bigint), 12, '0') || '00000000000000000000')::uuid AS week_id \gset
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT status, count(*) FROM tickets WHERE received_at >= now() - interval '24 hours' AND id >= :'day_id' GROUP BY status;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT code, count(*) FROM (SELECT DISTINCT t.id, problem->>'code' AS code FROM tickets t, jsonb_array_elements(t.problems) AS problem WHERE t.status IN ('partial', 'invalid') AND t.status <> 'ok' AND t.received_at >= now() - interval '24 hours') AS coded GROUP BY code;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT status, count(*) FROM tickets WHERE received_at >= now() - interval '7 days' AND id >= :'week_id' GROUP BY status;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT code, count(*) FROM (SELECT DISTINCT t.id, problem->>'code' AS code FROM tickets t, jsonb_array_elements(t.problems) AS problem WHERE t.status IN ('partial', 'invalid') AND t.status <> 'ok' AND t.received_at >= now() - interval '7 days') AS coded GROUP BY code;
