//! The batch statements: one batch of tickets written atomically, one
//! statement per table.
//!
//! Two ways to write a batch:
//! - **Fast path**, [`WRITE_FRESH_BATCH`]: tickets, their idempotency
//!   keys, lines, product history and products in *one* statement
//!   (data-modifying CTEs), hence one round trip and one implicit
//!   transaction. Live tickets have fresh UUIDv7 ids, so their insert
//!   cannot conflict; if it does (a replayed ticket already stored, a key
//!   already taken), the statement fails as a whole with a unique violation
//!   and the batch goes the careful way.
//! - **Careful path**, in one transaction:
//!   1. `tickets`, `ON CONFLICT DO NOTHING RETURNING id`: a replayed ticket
//!      is skipped, and only the tickets actually inserted go on, so nothing
//!      is stored twice.
//!   2. `idempotency_keys` of those tickets (`keys.rs`), `ON CONFLICT DO
//!      NOTHING`: a key already taken by another ticket keeps pointing at
//!      that one. The ticket is stored all the same — it was answered `202`
//!      with its own id (its request could not look the key up, see
//!      `src/http.rs`) — and reported in [`Written::keys_taken`].
//!   3. `ticket_lines` of those tickets.
//!   4. `product_history` of those tickets.
//!   5. `products` of those tickets.
//!
//! Every writer, and `reprocess`, takes `product_history` rows first and
//! `products` rows second, each set in key order (see `columns.rs`), so
//! the two sets cannot deadlock each other, and the products, the hottest
//! rows, stay locked the shortest.

use std::collections::HashSet;

use sqlx::{Connection, PgConnection, Row};
use uuid::Uuid;

use super::columns::{merge_history, HistoryColumns, HistoryMerge, LineColumns, ProductColumns, TicketColumns};
use super::keys::insert_keys;
use super::Written;
use crate::ticket::NewTicket;

/// The products upsert's conflict clause, shared by both paths.
macro_rules! products_on_conflict {
    () => {
        "    ON CONFLICT (product_id) DO UPDATE SET
        name           = CASE WHEN p.last_seen_at <= EXCLUDED.last_seen_at THEN EXCLUDED.name ELSE p.name END,
        price          = CASE WHEN p.last_seen_at <= EXCLUDED.last_seen_at THEN EXCLUDED.price ELSE p.price END,
        last_ticket_id = CASE WHEN p.last_seen_at <= EXCLUDED.last_seen_at
                              THEN EXCLUDED.last_ticket_id ELSE p.last_ticket_id END,
        last_seen_at   = GREATEST(p.last_seen_at, EXCLUDED.last_seen_at),
        first_seen_at  = LEAST(p.first_seen_at, EXCLUDED.first_seen_at),
        times_seen     = p.times_seen + EXCLUDED.times_seen"
    };
}

/// The history upsert's conflict clause, shared by both paths and
/// `reprocess`.
macro_rules! history_on_conflict {
    () => {
        "    ON CONFLICT (product_id, name, price) DO UPDATE SET
        first_seen_at = LEAST(h.first_seen_at, EXCLUDED.first_seen_at),
        last_seen_at  = GREATEST(h.last_seen_at, EXCLUDED.last_seen_at),
        times_seen    = h.times_seen + EXCLUDED.times_seen"
    };
}

const INSERT_TICKETS: &str = "
    INSERT INTO tickets (id, received_at, idempotency_key, status, order_id, vat, total, problems, raw)
    SELECT id, received_at, idempotency_key, status, order_id, vat, total, problems::jsonb, raw
    FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                $6::numeric[], $7::numeric[], $8::text[], $9::bytea[])
         AS t(id, received_at, idempotency_key, status, order_id, vat, total, problems, raw)
    ON CONFLICT DO NOTHING
    RETURNING id";

const INSERT_LINES: &str = "
    INSERT INTO ticket_lines (ticket_id, received_at, line_no, product_id, name, price)
    SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::int4[], $4::text[], $5::text[], $6::numeric[])";

const UPSERT_PRODUCTS: &str = concat!(
    "
    INSERT INTO products AS p (product_id, name, price, first_seen_at, last_seen_at, last_ticket_id, times_seen)
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::numeric[], $4::timestamptz[], $5::timestamptz[],
                         $6::uuid[], $7::int8[])
",
    products_on_conflict!()
);

const UPSERT_HISTORY: &str = concat!(
    "
    INSERT INTO product_history AS h (product_id, name, price, first_seen_at, last_seen_at, times_seen)
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::numeric[], $4::timestamptz[], $5::timestamptz[], $6::int8[])
",
    history_on_conflict!()
);

/// The fast path: the five inserts above in one statement, the tickets'
/// and the keys' without `ON CONFLICT` so that a ticket already stored, or
/// a key already taken, fails it whole.
/// The products upsert runs last: it locks the hot rows every writer
/// touches, and holds them until the commit, so the tickets and lines go
/// first, then the history (hot too, but less: see the module docs).
/// PostgreSQL runs the main statement first, then the `WITH` sub-statements
/// nobody reads, the last one written first: tickets, keys, lines, history,
/// products. Nothing reads them, so no row is kept for a `RETURNING`.
/// The keys reuse the tickets' parameters.
const WRITE_FRESH_BATCH: &str = concat!(
    "
    WITH upserted_products AS (
        INSERT INTO products AS p (product_id, name, price, first_seen_at, last_seen_at, last_ticket_id, times_seen)
        SELECT * FROM UNNEST($16::text[], $17::text[], $18::numeric[], $19::timestamptz[], $20::timestamptz[],
                             $21::uuid[], $22::int8[])
",
    products_on_conflict!(),
    "
    ), upserted_history AS (
        INSERT INTO product_history AS h (product_id, name, price, first_seen_at, last_seen_at, times_seen)
        SELECT * FROM UNNEST($23::text[], $24::text[], $25::numeric[], $26::timestamptz[], $27::timestamptz[],
                             $28::int8[])
",
    history_on_conflict!(),
    "
    ), new_lines AS (
        INSERT INTO ticket_lines (ticket_id, received_at, line_no, product_id, name, price)
        SELECT * FROM UNNEST($10::uuid[], $11::timestamptz[], $12::int4[], $13::text[], $14::text[],
                             $15::numeric[])
    ), new_keys AS (
        INSERT INTO idempotency_keys (key, ticket_id, received_at, status, body_sha256)
        SELECT key, id, received_at, status, sha256(raw)
        FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $9::bytea[])
             AS k(id, received_at, key, status, raw)
        WHERE key IS NOT NULL
    )
    INSERT INTO tickets (id, received_at, idempotency_key, status, order_id, vat, total, problems, raw)
    SELECT id, received_at, idempotency_key, status, order_id, vat, total, problems::jsonb, raw
    FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                $6::numeric[], $7::numeric[], $8::text[], $9::bytea[])
         AS t(id, received_at, idempotency_key, status, order_id, vat, total, problems, raw)
"
);

/// `unique_violation`: the fast path met a ticket that is already stored.
const UNIQUE_VIOLATION: &str = "23505";

/// Writes `batch` atomically: on error nothing of it is written. Tickets
/// already stored (same id or idempotency key) are skipped, not counted.
pub async fn write_batch(connection: &mut PgConnection, batch: &[&NewTicket]) -> Result<Written, sqlx::Error> {
    match write_fresh_batch(connection, batch).await {
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            write_batch_skipping_stored(connection, batch).await
        }
        result => result,
    }
}

/// The fast path, one statement; fails with a unique violation if any
/// ticket of `batch` is already stored.
pub async fn write_fresh_batch(connection: &mut PgConnection, batch: &[&NewTicket]) -> Result<Written, sqlx::Error> {
    let lines = LineColumns::new(batch);
    let line_count = lines.ticket_ids.len() as u64;
    // Every distinct product of the batch is inserted or updated: one row each.
    let products = ProductColumns::new(batch);
    let product_count = products.product_ids.len() as u64;
    // The same for every distinct (product id, name, price).
    let history = HistoryColumns::new(merge_history(batch));
    let history_count = history.product_ids.len() as u64;
    let query = sqlx::query(WRITE_FRESH_BATCH);
    history.bind(products.bind(lines.bind(TicketColumns::new(batch).bind(query)))).execute(connection).await?;
    Ok(Written {
        tickets: batch.len() as u64,
        lines: line_count,
        products: product_count,
        history: history_count,
        keys_taken: Vec::new(),
    })
}

/// The careful path: one statement per table in one transaction, skipping
/// the tickets already stored.
pub async fn write_batch_skipping_stored(
    connection: &mut PgConnection,
    batch: &[&NewTicket],
) -> Result<Written, sqlx::Error> {
    let mut transaction = connection.begin().await?;
    let inserted = insert_tickets(&mut transaction, batch).await?;
    let fresh: Vec<&NewTicket> = batch.iter().copied().filter(|ticket| inserted.contains(&ticket.id)).collect();
    let keys_taken = insert_keys(&mut transaction, &fresh).await?;
    let lines = insert_lines(&mut transaction, &fresh).await?;
    let history = upsert_history(&mut transaction, merge_history(&fresh)).await?;
    let products = upsert_products(&mut transaction, &fresh).await?;
    transaction.commit().await?;
    Ok(Written { tickets: inserted.len() as u64, lines, products, history, keys_taken })
}

async fn insert_tickets(connection: &mut PgConnection, batch: &[&NewTicket]) -> Result<HashSet<Uuid>, sqlx::Error> {
    let rows = TicketColumns::new(batch).bind(sqlx::query(INSERT_TICKETS)).fetch_all(connection).await?;
    rows.iter().map(|row| row.try_get::<Uuid, _>(0)).collect()
}

/// Inserts the lines of `tickets` (the careful path's step 2).
pub async fn insert_lines(connection: &mut PgConnection, tickets: &[&NewTicket]) -> Result<u64, sqlx::Error> {
    let lines = LineColumns::new(tickets);
    if lines.ticket_ids.is_empty() {
        return Ok(0);
    }
    Ok(lines.bind(sqlx::query(INSERT_LINES)).execute(connection).await?.rows_affected())
}

/// Adds `sightings` (from [`merge_history`], or `reprocess`'s differences,
/// where a negative count takes lines away) to `product_history`, in key
/// order (step 3).
pub async fn upsert_history(connection: &mut PgConnection, sightings: HistoryMerge<'_>) -> Result<u64, sqlx::Error> {
    let history = HistoryColumns::new(sightings);
    if history.product_ids.is_empty() {
        return Ok(0);
    }
    Ok(history.bind(sqlx::query(UPSERT_HISTORY)).execute(connection).await?.rows_affected())
}

/// Merges the products of `tickets` into the catalogue (step 4).
pub async fn upsert_products(connection: &mut PgConnection, tickets: &[&NewTicket]) -> Result<u64, sqlx::Error> {
    let products = ProductColumns::new(tickets);
    if products.product_ids.is_empty() {
        return Ok(0);
    }
    Ok(products.bind(sqlx::query(UPSERT_PRODUCTS)).execute(connection).await?.rows_affected())
}
