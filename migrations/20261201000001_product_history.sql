-- Every (name, price) a product id was sold under: when first and last seen,
-- and on how many lines. Written by the batch writers in the same statement
-- as `products` (src/store.rs), kept exact by `reprocess`.
--
-- The name is kept to its first 200 characters (`store::HISTORY_NAME_MAX_CHARS`):
-- a B-tree entry cannot exceed ~2.7 kB, names are not bounded by the parser,
-- and an index entry too large would fail every batch holding it.
CREATE TABLE product_history (
    product_id    text NOT NULL,
    name          text NOT NULL,
    price         numeric(12, 2) NOT NULL,
    first_seen_at timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL,
    times_seen    bigint NOT NULL,
    PRIMARY KEY (product_id, name, price)
);

-- The history of the lines already stored.
INSERT INTO product_history (product_id, name, price, first_seen_at, last_seen_at, times_seen)
SELECT product_id, left(name, 200), price, min(received_at), max(received_at), count(*)
FROM ticket_lines
GROUP BY product_id, left(name, 200), price;
