//! `ticket-ingest reprocess`: stored tickets re-parsed with today's parser.

use std::process::Command;

use sqlx::PgPool;
use ticket_ingest::database_url::DatabaseUrl;
use uuid::Uuid;

use crate::helpers::{fresh_database, history, history_of_stored_lines, SAMPLE_TICKET};

/// A database holding tickets as an older parser stored them.
async fn database_with_old_tickets() -> (String, PgPool) {
    let database_url = fresh_database().await;
    let db = PgPool::connect(&database_url).await.expect("pool");
    ticket_ingest::store::migrate(&db).await.expect("migrations");
    (database_url, db)
}

async fn insert_old_ticket(db: &PgPool, status: &str, raw: &[u8]) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO tickets (id, received_at, status, problems, raw)
         VALUES ($1, now(), $2, '[{\"line\": 0, \"code\": \"old_parser\", \"message\": \"not understood\"}]', $3)",
    )
    .bind(id)
    .bind(status)
    .bind(raw)
    .execute(db)
    .await
    .expect("insert old ticket");
    id
}

fn reprocess(database_url: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ticket-ingest"))
        .args(["--config", "/dev/null", "reprocess"])
        .args(args)
        .env("TICKET_INGEST_DATABASE_URL", database_url)
        .env("TICKET_INGEST_LOG_LEVEL", "warn")
        .output()
        .expect("run ticket-ingest reprocess");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprocess_gives_old_invalid_tickets_todays_status_lines_and_products() {
    let (database_url, db) = database_with_old_tickets().await;
    let id = insert_old_ticket(&db, "invalid", SAMPLE_TICKET.as_bytes()).await;

    let (success, summary) = reprocess(&database_url, &["--status", "invalid", "--batch-size", "1"]);

    assert!(success, "{summary}");
    assert!(summary.contains("invalid → ok: 1"), "{summary}");
    let (status, order_id, problems, raw): (String, Option<String>, Option<serde_json::Value>, Vec<u8>) =
        sqlx::query_as("SELECT status, order_id, problems, raw FROM tickets WHERE id = $1")
            .bind(id)
            .fetch_one(&db)
            .await
            .expect("row");
    assert_eq!((status.as_str(), order_id.as_deref(), problems), ("ok", Some("123456"), None));
    assert_eq!(raw, SAMPLE_TICKET.as_bytes(), "raw bytes untouched");
    let lines: i64 = sqlx::query_scalar("SELECT count(*) FROM ticket_lines WHERE ticket_id = $1")
        .bind(id)
        .fetch_one(&db)
        .await
        .expect("lines");
    assert_eq!(lines, 2);
    let (price, times_seen): (rust_decimal::Decimal, i64) =
        sqlx::query_as("SELECT price, times_seen FROM products WHERE product_id = 'IZ8z'")
            .fetch_one(&db)
            .await
            .expect("product");
    assert_eq!((price.to_string().as_str(), times_seen), ("2.00", 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprocessing_a_ticket_again_keeps_its_lines_and_product_counts_exact() {
    let (database_url, db) = database_with_old_tickets().await;
    insert_old_ticket(&db, "partial", SAMPLE_TICKET.as_bytes()).await;
    let (first_ok, _) = reprocess(&database_url, &["--status", "partial"]);
    sqlx::query("UPDATE tickets SET status = 'partial'").execute(&db).await.expect("mark partial again");

    let (success, summary) = reprocess(&database_url, &["--status", "partial"]);

    assert!(first_ok && success, "{summary}");
    let times_seen: i64 = sqlx::query_scalar("SELECT times_seen FROM products WHERE product_id = 'IZ8z'")
        .fetch_one(&db)
        .await
        .expect("product");
    assert_eq!(times_seen, 1, "the old lines are not counted twice");
    assert_eq!(crate::helpers::count(&db, "ticket_lines").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reports_and_changes_nothing() {
    let (database_url, db) = database_with_old_tickets().await;
    let id = insert_old_ticket(&db, "invalid", SAMPLE_TICKET.as_bytes()).await;

    let (success, summary) = reprocess(&database_url, &["--status", "invalid", "--dry-run"]);

    assert!(success);
    assert!(summary.contains("dry run") && summary.contains("changed: 1"), "{summary}");
    let status: String =
        sqlx::query_scalar("SELECT status FROM tickets WHERE id = $1").bind(id).fetch_one(&db).await.expect("row");
    assert_eq!(status, "invalid");
    assert_eq!(crate::helpers::count(&db, "ticket_lines").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_still_invalid_today_stays_invalid_with_todays_problems() {
    let (database_url, db) = database_with_old_tickets().await;
    let id = insert_old_ticket(&db, "invalid", b"<html>502 Bad Gateway</html>").await;
    let before: serde_json::Value = sqlx::query_scalar("SELECT problems FROM tickets WHERE id = $1")
        .bind(id)
        .fetch_one(&db)
        .await
        .expect("problems");

    let (success, summary) = reprocess(&database_url, &["--status", "invalid"]);

    assert!(success, "{summary}");
    let (status, after): (String, serde_json::Value) =
        sqlx::query_as("SELECT status, problems FROM tickets WHERE id = $1")
            .bind(id)
            .fetch_one(&db)
            .await
            .expect("row");
    assert_eq!(status, "invalid");
    assert_ne!(after, before, "today's problems replace the old parser's");
    assert!(summary.contains("invalid → invalid: 1"), "{summary}");
}

/// Stores `SAMPLE_TICKET` as an older parser did: `partial`, with the café's
/// name misread as `Cafe`, and its lines counted in products and history as
/// the writers of the time counted them.
async fn insert_misread_ticket(db: &PgPool) -> Uuid {
    let id = insert_old_ticket(db, "partial", SAMPLE_TICKET.as_bytes()).await;
    for (line_no, product_id, name, price) in [(6, "aZde", "Formule(s) midi", "14.90"), (7, "IZ8z", "Cafe", "2.00")] {
        sqlx::query(
            "WITH line AS (
                 INSERT INTO ticket_lines (ticket_id, received_at, line_no, product_id, name, price)
                 SELECT id, received_at, $2, $3, $4, $5::numeric FROM tickets WHERE id = $1
                 RETURNING product_id, name, price, received_at
             ), product AS (
                 INSERT INTO products (product_id, name, price, first_seen_at, last_seen_at, last_ticket_id, times_seen)
                 SELECT product_id, name, price, received_at, received_at, $1, 1 FROM line
                 ON CONFLICT (product_id) DO UPDATE SET times_seen = products.times_seen + 1
             )
             INSERT INTO product_history (product_id, name, price, first_seen_at, last_seen_at, times_seen)
             SELECT product_id, name, price, received_at, received_at, 1 FROM line
             ON CONFLICT (product_id, name, price) DO UPDATE SET
                 times_seen = product_history.times_seen + 1,
                 first_seen_at = LEAST(product_history.first_seen_at, EXCLUDED.first_seen_at),
                 last_seen_at = GREATEST(product_history.last_seen_at, EXCLUDED.last_seen_at)",
        )
        .bind(id)
        .bind(line_no)
        .bind(product_id)
        .bind(name)
        .bind(price)
        .execute(db)
        .await
        .expect("an old line");
    }
    id
}

async fn history_counts(db: &PgPool) -> Vec<(String, String, String, i64)> {
    history(db).await.into_iter().map(|row| (row.0, row.1, row.2.to_string(), row.5)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprocess_moves_the_history_from_the_old_lines_to_the_new_ones() {
    let (database_url, db) = database_with_old_tickets().await;
    // The same ticket, stored by today's writers: its rows stay.
    let today = ticket_ingest::ticket::NewTicket::arrived(bytes::Bytes::from(SAMPLE_TICKET), None);
    let mut connection =
        ticket_ingest::store::connect(&DatabaseUrl::parse(&database_url).expect("url")).await.expect("connection");
    ticket_ingest::store::write_batch(&mut connection, &[&today]).await.expect("today's ticket");
    insert_misread_ticket(&db).await;
    let counts = |rows: &[(&str, &str, &str, i64)]| -> Vec<(String, String, String, i64)> {
        rows.iter().map(|row| (row.0.to_string(), row.1.to_string(), row.2.to_string(), row.3)).collect()
    };
    assert_eq!(
        history_counts(&db).await,
        counts(&[("IZ8z", "Cafe", "2.00", 1), ("IZ8z", "Café", "2.00", 1), ("aZde", "Formule(s) midi", "14.90", 2)])
    );

    let (success, summary) = reprocess(&database_url, &["--status", "partial"]);

    assert!(success && summary.contains("partial → ok: 1"), "{summary}");
    assert_eq!(
        history_counts(&db).await,
        counts(&[("IZ8z", "Café", "2.00", 2), ("aZde", "Formule(s) midi", "14.90", 2)]),
        "the misread name's row went down to 0 and is gone; the others count both tickets"
    );
    assert_eq!(history(&db).await, history_of_stored_lines(&db).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ticket_reprocessed_by_id_is_stored_as_parsed_today_once() {
    let (database_url, db) = database_with_old_tickets().await;
    let id = insert_misread_ticket(&db).await;
    let mut connection =
        ticket_ingest::store::connect(&DatabaseUrl::parse(&database_url).expect("url")).await.expect("connection");

    let first =
        ticket_ingest::reprocess::reprocess_tickets(&mut connection, &[id, Uuid::now_v7()]).await.expect("reprocessed");
    let again = ticket_ingest::reprocess::reprocess_tickets(&mut connection, &[id]).await.expect("again");

    assert_eq!(first.len(), 1, "an unknown id is left out");
    assert_eq!((first[0].id, first[0].status_before.as_str()), (id, "partial"));
    assert_eq!(first[0].after.status, ticket_ingest::ticket::Status::Ok);
    assert!(first[0].changed && !again[0].changed);
    assert_eq!(again[0].status_before, "ok");
    let status: String =
        sqlx::query_scalar("SELECT status FROM tickets WHERE id = $1").bind(id).fetch_one(&db).await.expect("row");
    assert_eq!(status, "ok");
    assert_eq!(history(&db).await, history_of_stored_lines(&db).await);
    assert_eq!(history_counts(&db).await.len(), 2);
    let times_seen: i64 = sqlx::query_scalar("SELECT times_seen FROM products WHERE product_id = 'IZ8z'")
        .fetch_one(&db)
        .await
        .expect("product");
    assert_eq!(times_seen, 1);
}
