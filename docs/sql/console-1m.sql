-- 1 000 000 tickets over 30 days, for measuring the console's queries
-- (docs/console.md). Run on an empty database with the migrations applied:
--   psql "$URL" -f docs/sql/console-1m.sql
-- 90 % ok, 7 % partial (bad_price + total_mismatch), 3 % invalid
-- (not_a_ticket), 0.01 % with a rare code (nul_in_order); ids are UUIDv7
-- minted from received_at, as NewTicket::arrived does.
\timing on
INSERT INTO tickets (id, received_at, status, order_id, vat, total, problems, raw)
SELECT
    (lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0') || '7' || substr(h, 1, 3) || '8'
        || substr(h, 4, 15))::uuid,
    at,
    status,
    i::text,
    3.10,
    16.90,
    CASE status
        WHEN 'ok' THEN NULL
        WHEN 'partial' THEN
            CASE WHEN i % 10000 = 7 THEN '[{"line": 1, "code": "nul_in_order", "message": "NUL byte in the order id"}]'
                 ELSE '[{"line": 7, "code": "bad_price", "message": "price \"deux\" is not a number"},
                        {"line": 0, "code": "total_mismatch", "message": "lines sum to 14.90, Total says 16.90"}]'
            END::jsonb
        ELSE '[{"line": 0, "code": "not_a_ticket", "message": "no header and no table"}]'::jsonb
    END,
    convert_to('Order: ' || i || E'\nVAT: 3.10\nTotal: 16.90\n\nproduct,product_id,price\nFormule(s) midi,aZde,14.90\nCafé,IZ8z,2\n', 'UTF8')
FROM (
    SELECT i, now() - i * interval '2.592 seconds' AS at, md5(i::text) AS h,
           CASE WHEN i % 10000 = 7 OR i % 100 BETWEEN 90 AND 96 THEN 'partial'
                WHEN i % 100 >= 97 THEN 'invalid' ELSE 'ok' END AS status
    FROM generate_series(1, 1000000) AS i
) AS g;
-- A review on every 1 000th ticket.
INSERT INTO ticket_reviews (id, ticket_id, decision, note, reviewer, reviewed_at)
SELECT gen_random_uuid(), id, 'rejected', '', 'alice', now() FROM tickets WHERE order_id::bigint % 1000 = 0;
VACUUM ANALYZE tickets;
VACUUM ANALYZE ticket_reviews;
