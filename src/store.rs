//! SQL: one batch of tickets written in one transaction, one statement per
//! table, whatever the batch size.
//!
//! Each statement binds whole columns as arrays and expands them with
//! `UNNEST`, so the SQL text never depends on the batch size: the prepared
//! statement is reused by every batch and PostgreSQL's 65 535-parameter
//! limit never applies, even for a batch of 500 tickets of 2 000 lines.
//!
//! Order inside the transaction:
//! 1. `tickets`, `ON CONFLICT DO NOTHING RETURNING id`: a replayed id or a
//!    repeated idempotency key is skipped, and only the tickets actually
//!    inserted go on to step 2 and 3, so nothing is stored twice.
//! 2. `ticket_lines` of those tickets.
//! 3. `products`, deduplicated inside the batch (the latest ticket wins) and
//!    sorted by `product_id`, so that concurrent writers lock rows in the
//!    same order and cannot deadlock. A row is only overwritten by a ticket
//!    at least as recent as the one that wrote it, so a batch that commits
//!    late never puts an older price back.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use rust_decimal::Decimal;
use sqlx::{Connection, PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ticket::{ParsedTicket, Status};

/// A ticket as it is handed to the writers.
#[derive(Debug, Clone)]
pub struct NewTicket {
    /// UUIDv7, assigned on arrival.
    pub id: Uuid,
    pub received_at: OffsetDateTime,
    /// `Idempotency-Key` (or `webhook-id`) of the request, if any.
    pub idempotency_key: Option<String>,
    /// The body exactly as received (after gzip decoding).
    pub raw: Bytes,
    pub parsed: ParsedTicket,
}

/// Rows a committed batch wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub tickets: u64,
    pub lines: u64,
    pub products: u64,
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

const UPSERT_PRODUCTS: &str = "
    INSERT INTO products AS p (product_id, name, price, first_seen_at, last_seen_at, last_ticket_id, times_seen)
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::numeric[], $4::timestamptz[], $5::timestamptz[],
                         $6::uuid[], $7::int8[])
    ON CONFLICT (product_id) DO UPDATE SET
        name           = CASE WHEN p.last_seen_at <= EXCLUDED.last_seen_at THEN EXCLUDED.name ELSE p.name END,
        price          = CASE WHEN p.last_seen_at <= EXCLUDED.last_seen_at THEN EXCLUDED.price ELSE p.price END,
        last_ticket_id = CASE WHEN p.last_seen_at <= EXCLUDED.last_seen_at
                              THEN EXCLUDED.last_ticket_id ELSE p.last_ticket_id END,
        last_seen_at   = GREATEST(p.last_seen_at, EXCLUDED.last_seen_at),
        first_seen_at  = LEAST(p.first_seen_at, EXCLUDED.first_seen_at),
        times_seen     = p.times_seen + EXCLUDED.times_seen";

/// Applies the migrations in `migrations/` that are not applied yet.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

/// Writes `batch` in one transaction; on error nothing of it is written.
pub async fn write_batch(connection: &mut PgConnection, batch: &[&NewTicket]) -> Result<Written, sqlx::Error> {
    let mut transaction = connection.begin().await?;
    let inserted = insert_tickets(&mut transaction, batch).await?;
    let fresh: Vec<&NewTicket> = batch.iter().copied().filter(|ticket| inserted.contains(&ticket.id)).collect();
    let lines = insert_lines(&mut transaction, &fresh).await?;
    let products = upsert_products(&mut transaction, &fresh).await?;
    transaction.commit().await?;
    Ok(Written { tickets: inserted.len() as u64, lines, products })
}

async fn insert_tickets(connection: &mut PgConnection, batch: &[&NewTicket]) -> Result<HashSet<Uuid>, sqlx::Error> {
    let count = batch.len();
    let mut ids = Vec::with_capacity(count);
    let mut received_at = Vec::with_capacity(count);
    let mut keys = Vec::with_capacity(count);
    let mut statuses = Vec::with_capacity(count);
    let mut order_ids = Vec::with_capacity(count);
    let mut vats = Vec::with_capacity(count);
    let mut totals = Vec::with_capacity(count);
    let mut problems = Vec::with_capacity(count);
    let mut raws = Vec::with_capacity(count);
    for ticket in batch {
        ids.push(ticket.id);
        received_at.push(ticket.received_at);
        keys.push(ticket.idempotency_key.as_deref());
        statuses.push(ticket.parsed.status.as_str());
        order_ids.push(ticket.parsed.order_id.as_deref());
        vats.push(ticket.parsed.vat);
        totals.push(ticket.parsed.total);
        problems.push(problems_json(&ticket.parsed));
        raws.push(ticket.raw.as_ref());
    }
    let rows: Vec<(Uuid,)> = sqlx::query_as(INSERT_TICKETS)
        .bind(ids)
        .bind(received_at)
        .bind(keys)
        .bind(statuses)
        .bind(order_ids)
        .bind(vats)
        .bind(totals)
        .bind(problems)
        .bind(raws)
        .fetch_all(&mut *connection)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// `problems` is NULL for ok tickets, a JSON array otherwise.
pub(crate) fn problems_json(parsed: &ParsedTicket) -> Option<String> {
    if parsed.problems.is_empty() {
        return None;
    }
    serde_json::to_string(&parsed.problems).ok()
}

pub(crate) async fn insert_lines(connection: &mut PgConnection, tickets: &[&NewTicket]) -> Result<u64, sqlx::Error> {
    let count: usize = tickets.iter().map(|ticket| ticket.parsed.lines.len()).sum();
    if count == 0 {
        return Ok(0);
    }
    let mut ticket_ids = Vec::with_capacity(count);
    let mut received_at = Vec::with_capacity(count);
    let mut line_nos = Vec::with_capacity(count);
    let mut product_ids = Vec::with_capacity(count);
    let mut names = Vec::with_capacity(count);
    let mut prices = Vec::with_capacity(count);
    for ticket in tickets {
        for line in &ticket.parsed.lines {
            ticket_ids.push(ticket.id);
            received_at.push(ticket.received_at);
            line_nos.push(line.line_no);
            product_ids.push(line.product_id.as_str());
            names.push(line.name.as_str());
            prices.push(line.price);
        }
    }
    let result = sqlx::query(INSERT_LINES)
        .bind(ticket_ids)
        .bind(received_at)
        .bind(line_nos)
        .bind(product_ids)
        .bind(names)
        .bind(prices)
        .execute(&mut *connection)
        .await?;
    Ok(result.rows_affected())
}

/// One product's row as the batch sees it, before the upsert.
struct ProductSeen<'a> {
    name: &'a str,
    price: Decimal,
    first_seen_at: OffsetDateTime,
    last_seen_at: OffsetDateTime,
    last_ticket_id: Uuid,
    times_seen: i64,
}

pub(crate) async fn upsert_products(connection: &mut PgConnection, tickets: &[&NewTicket]) -> Result<u64, sqlx::Error> {
    let mut products = merge_products(tickets);
    if products.is_empty() {
        return Ok(0);
    }
    products.sort_unstable_by(|left, right| left.0.cmp(right.0));
    let count = products.len();
    let mut product_ids = Vec::with_capacity(count);
    let mut names = Vec::with_capacity(count);
    let mut prices = Vec::with_capacity(count);
    let mut first_seen = Vec::with_capacity(count);
    let mut last_seen = Vec::with_capacity(count);
    let mut last_ticket_ids = Vec::with_capacity(count);
    let mut times_seen = Vec::with_capacity(count);
    for (product_id, seen) in products {
        product_ids.push(product_id);
        names.push(seen.name);
        prices.push(seen.price);
        first_seen.push(seen.first_seen_at);
        last_seen.push(seen.last_seen_at);
        last_ticket_ids.push(seen.last_ticket_id);
        times_seen.push(seen.times_seen);
    }
    let result = sqlx::query(UPSERT_PRODUCTS)
        .bind(product_ids)
        .bind(names)
        .bind(prices)
        .bind(first_seen)
        .bind(last_seen)
        .bind(last_ticket_ids)
        .bind(times_seen)
        .execute(&mut *connection)
        .await?;
    Ok(result.rows_affected())
}

/// One entry per product id: the name and price of the latest ticket
/// (by `received_at`, then by time-ordered id), and how often it was seen.
fn merge_products<'a>(tickets: &[&'a NewTicket]) -> Vec<(&'a str, ProductSeen<'a>)> {
    let mut merged: HashMap<&'a str, ProductSeen<'a>> = HashMap::new();
    for ticket in tickets {
        if ticket.parsed.status == Status::Invalid {
            continue;
        }
        for line in &ticket.parsed.lines {
            let seen = merged.entry(line.product_id.as_str()).or_insert_with(|| ProductSeen {
                name: &line.name,
                price: line.price,
                first_seen_at: ticket.received_at,
                last_seen_at: ticket.received_at,
                last_ticket_id: ticket.id,
                times_seen: 0,
            });
            seen.times_seen += 1;
            seen.first_seen_at = seen.first_seen_at.min(ticket.received_at);
            if (ticket.received_at, ticket.id) >= (seen.last_seen_at, seen.last_ticket_id) {
                seen.name = &line.name;
                seen.price = line.price;
                seen.last_seen_at = ticket.received_at;
                seen.last_ticket_id = ticket.id;
            }
        }
    }
    merged.into_iter().collect()
}
