//! `store::write_batch` on its own: the one-statement fast path and the
//! careful path it falls back to when a ticket is already stored; the
//! product history both maintain, and its migration's backfill.

use bytes::Bytes;
use sqlx::{Connection, PgConnection, PgPool};
use ticket_ingest::store::{self, Written};
use ticket_ingest::ticket::NewTicket;
use ticket_ingest::ticket::ParsedTicket;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::helpers::{count, empty_database, fresh_database, history, history_of_stored_lines, numbered_ticket};

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
    migrated(fresh_database().await).await
}

async fn migrated(database_url: String) -> (PgPool, PgConnection) {
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

    // The same ticket again (a replay), and one new ticket.
    let fresh = new_ticket(4, None);
    let error = store::write_fresh_batch(&mut connection, &[&stored, &fresh]).await;
    assert!(error.is_err(), "the fast path refuses a batch holding a stored ticket");

    let written = store::write_batch(&mut connection, &[&stored, &stored_key, &fresh]).await.expect("batch");

    let fresh_lines = fresh.parsed.lines.len() as i64;
    assert_eq!(
        written,
        Written {
            tickets: 1,
            lines: fresh_lines as u64,
            products: written.products,
            history: written.history,
            keys_taken: Vec::new()
        }
    );
    assert_eq!(count(&db, "tickets").await, 3);
    assert_eq!(count(&db, "idempotency_keys").await, 1);
    assert_eq!(count(&db, "ticket_lines").await, lines_before + fresh_lines);
    assert_eq!(times_seen(&db).await, lines_before + fresh_lines);
    let stored_ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM tickets ORDER BY id").fetch_all(&db).await.expect("ids");
    let mut expected = vec![stored.id, stored_key.id, fresh.id];
    expected.sort();
    assert_eq!(stored_ids, expected);
}

#[tokio::test]
async fn a_ticket_under_a_key_already_taken_is_stored_and_the_key_keeps_its_first_ticket() {
    // Its request was answered 202 with its own id (the key could not be
    // looked up): dropping it would make that answer false.
    let (db, mut connection) = migrated_database().await;
    let first = new_ticket(1, Some("taken"));
    store::write_batch(&mut connection, &[&first]).await.expect("first batch");

    let unaware = new_ticket(2, Some("taken"));
    let same_batch_a = new_ticket(3, Some("twice-in-a-batch"));
    let same_batch_b = new_ticket(4, Some("twice-in-a-batch"));
    let error = store::write_fresh_batch(&mut connection, &[&unaware]).await;
    assert!(error.is_err(), "the fast path refuses a key already taken");
    let written = store::write_batch(&mut connection, &[&unaware, &same_batch_a, &same_batch_b]).await.expect("batch");

    assert_eq!(written.tickets, 3);
    assert_eq!(written.keys_taken, vec![unaware.id, same_batch_b.id]);
    assert_eq!(count(&db, "tickets").await, 4);
    let keys: Vec<(String, Uuid)> =
        sqlx::query_as("SELECT key, ticket_id FROM idempotency_keys ORDER BY key").fetch_all(&db).await.expect("keys");
    assert_eq!(keys, vec![("taken".to_string(), first.id), ("twice-in-a-batch".to_string(), same_batch_a.id)]);
    let digest: Vec<u8> = sqlx::query_scalar("SELECT body_sha256 FROM idempotency_keys WHERE key = 'taken'")
        .fetch_one(&db)
        .await
        .expect("digest");
    assert_eq!(digest, ticket_ingest::idempotency::body_hash(&first.raw).to_vec(), "the digest the service compares");
}

/// A ticket received at `seconds` after an arbitrary start, holding `lines`
/// (`name,product_id,price` each).
fn ticket_at(seconds: i64, lines: &[&str]) -> NewTicket {
    let received_at = OffsetDateTime::from_unix_timestamp(1_764_547_200 + seconds).expect("time");
    let body = format!("Order: {seconds}\n\nproduct,product_id,price\n{}\n", lines.join("\n"));
    NewTicket::known(Uuid::now_v7(), received_at, None, Bytes::from(body))
}

fn at(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_764_547_200 + seconds).expect("time")
}

#[tokio::test]
async fn a_product_sold_at_two_prices_and_under_two_names_has_a_history_row_for_each() {
    let (db, mut connection) = migrated_database().await;
    let cafe_later = ticket_at(10, &["Café,IZ8z,2.50", "Croissant,CR01,1.00"]);
    let cafe_twice = ticket_at(30, &["Café,IZ8z,2.00", "Café,IZ8z,2"]);
    let cafe_first = ticket_at(0, &["Café,IZ8z,2.00"]);
    let renamed = ticket_at(20, &["Cafe,IZ8z,2.00"]);

    // Out of order: the later tickets first, each batch by its own path.
    let fast = store::write_fresh_batch(&mut connection, &[&cafe_later, &cafe_twice]).await.expect("fast path");
    let careful =
        store::write_batch_skipping_stored(&mut connection, &[&cafe_first, &renamed]).await.expect("careful path");

    assert_eq!((fast.history, careful.history), (3, 2), "one row per (product id, name, price) of each batch");
    let money = |text: &str| text.parse::<rust_decimal::Decimal>().expect("price");
    assert_eq!(
        history(&db).await,
        vec![
            ("CR01".to_string(), "Croissant".to_string(), money("1.00"), at(10), at(10), 1),
            ("IZ8z".to_string(), "Cafe".to_string(), money("2.00"), at(20), at(20), 1),
            ("IZ8z".to_string(), "Café".to_string(), money("2.00"), at(0), at(30), 3),
            ("IZ8z".to_string(), "Café".to_string(), money("2.50"), at(10), at(10), 1),
        ]
    );
}

#[tokio::test]
async fn a_replayed_batch_does_not_count_its_history_twice() {
    let (db, mut connection) = migrated_database().await;
    let stored = new_ticket(1, None);
    let other = new_ticket(2, None);
    store::write_batch(&mut connection, &[&stored, &other]).await.expect("first batch");
    let history_before = history(&db).await;

    let fresh = ticket_at(0, &["Café,IZ8z,2.00", "Thé,TH01,1.80"]);
    let written = store::write_batch(&mut connection, &[&stored, &other, &fresh]).await.expect("replayed batch");

    assert_eq!(written.tickets, 1);
    assert_eq!(written.history, 2, "the fresh ticket's rows only");
    let history_after = history(&db).await;
    assert_eq!(history_after, history_of_stored_lines(&db).await);
    let times_seen: i64 = history_after.iter().map(|row| row.5).sum();
    assert_eq!(times_seen, history_before.iter().map(|row| row.5).sum::<i64>() + 2);
    assert_eq!(times_seen, count(&db, "ticket_lines").await);
}

#[tokio::test]
async fn a_name_too_long_for_an_index_entry_is_kept_in_the_history_cut_to_200_characters() {
    let (db, mut connection) = migrated_database().await;
    // 3 000 characters that do not compress: too large for a B-tree entry.
    let mut state: u32 = 12345;
    let long_name: String = (0..3000)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            char::from(b'a' + ((state >> 16) % 26) as u8)
        })
        .collect();
    let ticket = ticket_at(0, &[&format!("{long_name},LONG,1.00")]);

    store::write_batch(&mut connection, &[&ticket]).await.expect("the batch is stored");

    let rows = history(&db).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, long_name[..200]);
    assert_eq!(rows, history_of_stored_lines(&db).await);
}

#[tokio::test]
async fn the_history_migration_backfills_the_lines_already_stored() {
    // The schema before the history migration: plain, whatever TEST_SCHEMA says.
    let database_url = empty_database().await;
    let db = PgPool::connect(&database_url).await.expect("pool");
    let mut migrator = sqlx::migrate!("./migrations");
    let all = migrator.migrations.to_vec();
    migrator.migrations = all.iter().filter(|migration| migration.version < 20261201000001).cloned().collect();
    migrator.run(&db).await.expect("the migrations before the history");
    let long_name = "x".repeat(250);
    for (seconds, line_no, product_id, name, price) in [
        (0, 1, "IZ8z", "Café", "2.00"),
        (10, 1, "IZ8z", "Café", "2.50"),
        (20, 1, "IZ8z", "Café", "2.00"),
        (20, 2, "LONG", long_name.as_str(), "1.00"),
    ] {
        sqlx::query(
            "INSERT INTO ticket_lines (ticket_id, received_at, line_no, product_id, name, price)
             VALUES ($1, $2, $3, $4, $5, $6::numeric)",
        )
        .bind(Uuid::from_u128(seconds as u128))
        .bind(at(seconds))
        .bind(line_no)
        .bind(product_id)
        .bind(name)
        .bind(price)
        .execute(&db)
        .await
        .expect("an old line");
    }

    store::migrate(&db).await.expect("the history migration");

    let money = |text: &str| text.parse::<rust_decimal::Decimal>().expect("price");
    assert_eq!(
        history(&db).await,
        vec![
            ("IZ8z".to_string(), "Café".to_string(), money("2.00"), at(0), at(20), 2),
            ("IZ8z".to_string(), "Café".to_string(), money("2.50"), at(10), at(10), 1),
            ("LONG".to_string(), "x".repeat(200), money("1.00"), at(20), at(20), 1),
        ]
    );
}

#[tokio::test]
async fn the_keys_migration_keeps_the_first_ticket_of_a_key_stored_twice_without_a_unique_index() {
    // A database partitioned before the keys migration has no unique index
    // on tickets.idempotency_key, so a key may be there twice.
    let database_url = empty_database().await;
    let db = PgPool::connect(&database_url).await.expect("pool");
    let mut migrator = sqlx::migrate!("./migrations");
    let all = migrator.migrations.to_vec();
    migrator.migrations = all.iter().filter(|migration| migration.version < 20261202000001).cloned().collect();
    migrator.run(&db).await.expect("the migrations before the keys");
    sqlx::query("DROP INDEX tickets_idempotency_key").execute(&db).await.expect("no unique index");
    let first = ticket_at(0, &["Café,IZ8z,2.00"]);
    let second = ticket_at(10, &["Café,IZ8z,2.00"]);
    for ticket in [&second, &first] {
        sqlx::query(
            "INSERT INTO tickets (id, received_at, idempotency_key, status, raw) VALUES ($1, $2, 'twice', 'ok', $3)",
        )
        .bind(ticket.id)
        .bind(ticket.received_at)
        .bind(ticket.raw.as_ref())
        .execute(&db)
        .await
        .expect("an old ticket");
    }

    store::migrate(&db).await.expect("the keys migration");

    let kept: Uuid = sqlx::query_scalar("SELECT ticket_id FROM idempotency_keys WHERE key = 'twice'")
        .fetch_one(&db)
        .await
        .expect("one key row");
    assert_eq!(kept, first.id, "the earliest ticket keeps the key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_committed_by_another_writer_while_this_one_waited_keeps_its_first_ticket() {
    // Two writers race on one key: the first commits it while the second
    // waits on the key row; first wins, always, and the second's ticket
    // is stored and reported as under a key already taken.
    let database_url = fresh_database().await;
    let (db, mut first_connection) = migrated(database_url.clone()).await;
    let mut second_connection = PgConnection::connect(&database_url).await.expect("second connection");
    let first = new_ticket(1, Some("raced"));
    let second = new_ticket(2, Some("raced"));
    let mut first_transaction = first_connection.begin().await.expect("begin");
    store::write_batch(&mut first_transaction, &[&first]).await.expect("first writer");

    let second_ticket = second.clone();
    let second_writer =
        tokio::spawn(
            async move { store::write_batch_skipping_stored(&mut second_connection, &[&second_ticket]).await },
        );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!second_writer.is_finished(), "the second writer waits on the key row");
    first_transaction.commit().await.expect("commit");
    let written = second_writer.await.expect("task").expect("second writer");

    assert_eq!((written.tickets, written.keys_taken.clone()), (1, vec![second.id]));
    let key_of: Uuid = sqlx::query_scalar("SELECT ticket_id FROM idempotency_keys WHERE key = 'raced'")
        .fetch_one(&db)
        .await
        .expect("key row");
    assert_eq!(key_of, first.id, "the key keeps its first ticket");
    assert_eq!(count(&db, "tickets").await, 2);
}

#[tokio::test]
async fn the_key_lookup_reads_only_the_keys_asked_whatever_the_statistics_say() {
    // After a bulk expiry, or before one, the statistics may say most key
    // rows are past the retention: the lookup must still read the keys
    // asked by the primary key, never every recent key.
    let (db, _connection) = migrated_database().await;
    // Statistics taken while every key was a month old; the keys are
    // recent now (no analyze since: autovacuum is off for the table).
    sqlx::query("ALTER TABLE idempotency_keys SET (autovacuum_enabled = false)")
        .execute(&db)
        .await
        .expect("no autovacuum");
    sqlx::query(
        "INSERT INTO idempotency_keys (key, ticket_id, received_at, status, body_sha256)
         SELECT 'key-' || n, gen_random_uuid(), now() - interval '30 days', 'ok', sha256(n::text::bytea)
         FROM generate_series(1, 200000) n",
    )
    .execute(&db)
    .await
    .expect("keys");
    sqlx::query("ANALYZE idempotency_keys").execute(&db).await.expect("analyze");
    sqlx::query("UPDATE idempotency_keys SET received_at = now() - interval '1 hour'")
        .execute(&db)
        .await
        .expect("recent");
    let keys: Vec<String> = (1..=50).map(|n| format!("key-{n}")).collect();
    let since = OffsetDateTime::now_utc() - time::Duration::days(7);

    let mut connection = db.acquire().await.expect("connection");
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN (FORMAT TEXT) {}", store::STORED_KEYS_SQL))
        .bind(&keys)
        .fetch_all(&mut *connection)
        .await
        .expect("plan");
    let plan = plan.join("\n");
    drop(connection);

    assert!(plan.contains("idempotency_keys_pkey"), "{plan}");
    assert!(!plan.contains("idempotency_keys_received_at"), "{plan}");
    let found = store::stored_keys(&db, &keys.iter().map(String::as_str).collect::<Vec<_>>(), since).await;
    assert_eq!(found.expect("lookup").len(), 0, "those keys' tickets are not stored");
}
