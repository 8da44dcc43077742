//! `store::write_batch` on its own: the one-statement fast path and the
//! careful path it falls back to when a ticket is already stored.

use bytes::Bytes;
use sqlx::{Connection, PgConnection, PgPool};
use ticket_ingest::store::{self, Written};
use ticket_ingest::ticket::NewTicket;
use ticket_ingest::ticket::ParsedTicket;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::helpers::{count, fresh_database, numbered_ticket};

fn new_ticket(order: u64, key: Option<&str>) -> NewTicket {
    let raw = Bytes::from(numbered_ticket(order));
    NewTicket {
        id: Uuid::now_v7(),
        received_at: OffsetDateTime::now_utc(),
        idempotency_key: key.map(str::to_string),
        parsed: ParsedTicket::parse(&raw),
        raw,
    }
}

async fn migrated_database() -> (PgPool, PgConnection) {
    let database_url = fresh_database().await;
    let db = PgPool::connect(&database_url).await.expect("pool");
    store::migrate(&db).await.expect("migrations");
    let connection = PgConnection::connect(&database_url).await.expect("connection");
    (db, connection)
}

async fn times_seen(db: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT sum(times_seen)::int8 FROM products").fetch_one(db).await.expect("times_seen")
}

#[tokio::test]
async fn a_fresh_batch_is_written_whole_in_one_statement() {
    let (db, mut connection) = migrated_database().await;
    let batch: Vec<NewTicket> = (1..=3).map(|order| new_ticket(order, None)).collect();
    let refs: Vec<&NewTicket> = batch.iter().collect();

    let written = store::write_fresh_batch(&mut connection, &refs).await.expect("fast path");

    let lines: i64 = batch.iter().map(|ticket| ticket.parsed.lines.len() as i64).sum();
    assert_eq!(written.tickets, 3);
    assert_eq!(written.lines, lines as u64);
    assert_eq!(count(&db, "tickets").await, 3);
    assert_eq!(count(&db, "ticket_lines").await, lines);
    assert_eq!(times_seen(&db).await, lines);
    assert_eq!(written.products as i64, count(&db, "products").await, "one row per distinct product");
}

#[tokio::test]
async fn a_batch_holding_stored_tickets_writes_only_the_others_and_counts_products_once() {
    let (db, mut connection) = migrated_database().await;
    let stored = new_ticket(1, None);
    let stored_key = new_ticket(2, Some("key-2"));
    store::write_batch(&mut connection, &[&stored, &stored_key]).await.expect("first batch");
    let lines_before = count(&db, "ticket_lines").await;

    // The same ticket again (a replay), another ticket under a stored key,
    // and one new ticket.
    let repeated_key = new_ticket(3, Some("key-2"));
    let fresh = new_ticket(4, None);
    let error = store::write_fresh_batch(&mut connection, &[&stored, &repeated_key, &fresh]).await;
    assert!(error.is_err(), "the fast path refuses a batch holding a stored ticket");

    let written = store::write_batch(&mut connection, &[&stored, &repeated_key, &fresh]).await.expect("batch");

    let fresh_lines = fresh.parsed.lines.len() as i64;
    assert_eq!(written, Written { tickets: 1, lines: fresh_lines as u64, products: written.products });
    assert_eq!(count(&db, "tickets").await, 3);
    assert_eq!(count(&db, "ticket_lines").await, lines_before + fresh_lines);
    assert_eq!(times_seen(&db).await, lines_before + fresh_lines);
    let stored_ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM tickets ORDER BY id").fetch_all(&db).await.expect("ids");
    let mut expected = vec![stored.id, stored_key.id, fresh.id];
    expected.sort();
    assert_eq!(stored_ids, expected);
}
