//! Partitioned tables (pg_partman): created by `migrate --partitioned`,
//! converted by `partition` (resumable, with the service writing), old
//! partitions dropped by the service's maintenance. These tests start from
//! an empty database whatever `TEST_SCHEMA` says.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};
use ticket_ingest::config::{AckMode, Settings};
use ticket_ingest::partition::{self, Pace, State};

use crate::helpers::{
    assert_every_acknowledged_ticket_stored_once, empty_database, parsed_url, run_load, spawn_app_from, temp_dir,
    test_settings, ServiceProcess, SAMPLE_TICKET,
};

/// Runs the real binary with `args` against `database_url`; its output.
fn ticket_ingest(database_url: &str, args: &[&str]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_ticket-ingest"))
        .args(["--config", "/dev/null", "--log-level", "warn"])
        .args(args)
        .env("TICKET_INGEST_DATABASE_URL", database_url)
        .output()
        .expect("run ticket-ingest");
    assert!(output.status.success(), "ticket-ingest {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// An empty database with the plain tables of the migrations.
async fn plain_database() -> (String, PgPool) {
    let url = empty_database().await;
    let pool = PgPool::connect(&url).await.expect("pool");
    ticket_ingest::store::migrate(&pool).await.expect("migrations");
    (url, pool)
}

/// `count` tickets one hour apart going back from now (so over several
/// months for a few thousand), of every status, with idempotency keys,
/// problems, bytes that are not UTF-8, and two lines each for those not
/// invalid; order ids `seed-<n>`.
async fn seed(db: &PgPool, count: i64) {
    sqlx::query(
        "INSERT INTO tickets (id, received_at, idempotency_key, status, order_id, vat, total, problems, raw)
         SELECT gen_random_uuid(), now() - i * interval '1 hour',
                CASE WHEN i % 3 = 0 THEN 'key-' || i END,
                CASE i % 10 WHEN 7 THEN 'partial' WHEN 9 THEN 'invalid' ELSE 'ok' END,
                'seed-' || i, 3.10, 16.90,
                CASE WHEN i % 10 IN (7, 9) THEN '[{\"line\": 0, \"code\": \"total_mismatch\", \"message\": \"é\"}]'::jsonb END,
                decode(md5(i::text) || '00ff', 'hex') || convert_to('Order: ' || i, 'UTF8')
         FROM generate_series(1, $1) AS i",
    )
    .bind(count)
    .execute(db)
    .await
    .expect("seed tickets");
    sqlx::query(
        "INSERT INTO ticket_lines (ticket_id, line_no, product_id, name, price, received_at)
         SELECT id, n, 'P' || n, 'Café n°' || n, 1.50 * n, received_at
         FROM tickets, generate_series(1, 2) AS n WHERE status <> 'invalid'",
    )
    .execute(db)
    .await
    .expect("seed lines");
}

/// Every ticket and line, every column, as text in key order.
async fn snapshot(db: &PgPool) -> (String, String, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT md5(string_agg(t::text, E'\\n' ORDER BY id)) FROM tickets t),
                (SELECT md5(string_agg(l::text, E'\\n' ORDER BY ticket_id, line_no)) FROM ticket_lines l),
                (SELECT count(*) FROM tickets), (SELECT count(*) FROM ticket_lines)",
    )
    .fetch_one(db)
    .await
    .expect("snapshot")
}

async fn state(url: &str) -> State {
    let mut connection = PgConnection::connect(url).await.expect("connect");
    partition::state(&mut connection).await.expect("state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_partitioned_makes_partitions_around_now_and_the_service_stores_tickets_in_them() {
    let url = empty_database().await;

    let output = ticket_ingest(&url, &["migrate", "--partitioned"]);

    assert!(String::from_utf8_lossy(&output.stdout).contains("partitioned (monthly)"));
    assert_eq!(state(&url).await, State::Partitioned);
    let mut settings = test_settings().await;
    settings.database_url = Some(parsed_url(&url.clone()));
    let app = spawn_app_from(settings).await;
    assert_eq!(app.post_ticket(SAMPLE_TICKET).await.status(), 202);
    app.wait_for_count("ticket_lines", 2).await;
    let (ticket_partition, line_partitions, this_month): (String, Vec<String>, String) = sqlx::query_as(
        "SELECT (SELECT tableoid::regclass::text FROM tickets),
                (SELECT array_agg(DISTINCT tableoid::regclass::text) FROM ticket_lines),
                to_char(now(), 'YYYY_MM')",
    )
    .fetch_one(&app.db)
    .await
    .expect("partitions of the rows");
    assert_eq!(ticket_partition, format!("tickets_p{this_month}"));
    assert_eq!(line_partitions, [format!("ticket_lines_p{this_month}")]);
    assert_eq!(app.count("products").await, 2);
    assert_eq!(app.count("product_history").await, 2);
    let ahead: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM partman.show_partitions('public.tickets')
         WHERE partition_tablename > 'tickets_p' || to_char(now(), 'YYYY_MM')",
    )
    .fetch_one(&app.db)
    .await
    .expect("partitions ahead");
    assert_eq!(ahead, i64::from(Settings::default().partition_premake));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_keeps_every_ticket_and_line_byte_for_byte_and_a_stopped_run_is_continued() {
    let (url, db) = plain_database().await;
    seed(&db, 3_000).await;
    let before = snapshot(&db).await;
    let mut connection = PgConnection::connect(&url).await.expect("connect");
    let layout = Settings::default().partition_layout();

    let stopped = partition::convert(&mut connection, &layout, Pace { batch_size: 100, max_batches: Some(3) }, |_| {})
        .await
        .expect("first run");

    assert!(stopped.swapped && !stopped.finished);
    assert_eq!((stopped.batches, stopped.tickets_moved), (3, 300));
    assert_eq!(state(&url).await, State::Moving);
    let (moved, left): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM tickets), (SELECT count(*) FROM tickets_unpartitioned)")
            .fetch_one(&db)
            .await
            .expect("counts");
    assert_eq!((moved, left), (300, 2_700), "each ticket in exactly one of the two tables");

    let output = ticket_ingest(&url, &["partition", "--batch-size", "500"]);

    assert!(String::from_utf8_lossy(&output.stdout).contains("2700 tickets"), "{output:?}");
    assert_eq!(state(&url).await, State::Partitioned);
    assert_eq!(snapshot(&db).await, before);
    let (months, in_default, old_tables): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(DISTINCT tableoid) FROM tickets),
                (SELECT count(*) FROM tickets_default) + (SELECT count(*) FROM ticket_lines_default),
                (SELECT count(*) FROM pg_class WHERE relname LIKE '%unpartitioned%')",
    )
    .fetch_one(&db)
    .await
    .expect("partitions");
    assert!(months >= 5, "3 000 hours of tickets span at least five months, not {months}");
    assert_eq!((in_default, old_tables), (0, 0));
    // Running it again changes nothing.
    ticket_ingest(&url, &["partition"]);
    assert_eq!(snapshot(&db).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_writing_during_a_conversion_loses_and_doubles_nothing() {
    let (url, db) = plain_database().await;
    seed(&db, 20_000).await;
    let service = ServiceProcess::start(&url, &temp_dir("wal"), AckMode::Wal, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(service.address.clone(), 8, 1_000_000, 1, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut connection = PgConnection::connect(&url).await.expect("connect");
    let pace = Pace { batch_size: 200, max_batches: None };
    let progress = partition::convert(&mut connection, &Settings::default().partition_layout(), pace, |_| {})
        .await
        .expect("conversion");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let outcome = load.await.expect("load");

    // The seeded tickets, and those the service wrote before the swap.
    assert!(progress.finished && progress.tickets_moved >= 20_000, "{progress:?}");
    println!("{progress:?}");
    assert!(outcome.unexpected.is_empty(), "{:?}", outcome.unexpected);
    assert!(outcome.accepted.len() > 100, "the service was writing: {} accepted", outcome.accepted.len());
    assert_every_acknowledged_ticket_stored_once(&db, &outcome).await;
    let (seeded, total): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tickets WHERE order_id LIKE 'seed-%'), (SELECT count(*) FROM tickets)",
    )
    .fetch_one(&db)
    .await
    .expect("counts");
    assert_eq!((seeded, total), (20_000, 20_000 + outcome.accepted.len() as i64));
    assert_eq!(state(&url).await, State::Partitioned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_drops_the_partitions_older_than_the_retention_and_keeps_the_recent_rows() {
    let (url, db) = plain_database().await;
    seed(&db, 3_000).await;
    ticket_ingest(&url, &["partition"]);
    let boundary = "date_trunc('month', now() - interval '2 months')";
    let (recent_tickets, recent_lines, old_tickets): (i64, i64, i64) = sqlx::query_as(&format!(
        "SELECT (SELECT count(*) FROM tickets WHERE received_at >= {boundary}),
                (SELECT count(*) FROM ticket_lines WHERE received_at >= {boundary}),
                (SELECT count(*) FROM tickets WHERE received_at < {boundary})"
    ))
    .fetch_one(&db)
    .await
    .expect("counts before");
    assert!(old_tickets > 0 && recent_tickets > 0);
    let mut settings = test_settings().await;
    settings.database_url = Some(parsed_url(&url.clone()));
    settings.partition_retention = "2 months".to_string();
    settings.partition_maintenance_s = 1;

    let app = spawn_app_from(settings).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Each parent is maintained in a transaction of its own.
        let old: i64 = sqlx::query_scalar(&format!(
            "SELECT (SELECT count(*) FROM tickets WHERE received_at < {boundary})
                  + (SELECT count(*) FROM ticket_lines WHERE received_at < {boundary})"
        ))
        .fetch_one(&db)
        .await
        .expect("old rows");
        if old == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{old} tickets and lines older than the retention are still there");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (tickets, lines, old_lines, retention): (i64, i64, i64, Option<String>) = sqlx::query_as(&format!(
        "SELECT (SELECT count(*) FROM tickets), (SELECT count(*) FROM ticket_lines),
                (SELECT count(*) FROM ticket_lines WHERE received_at < {boundary}),
                (SELECT retention FROM partman.part_config WHERE parent_table = 'public.tickets')"
    ))
    .fetch_one(&db)
    .await
    .expect("counts after");
    assert_eq!((tickets, lines, old_lines), (recent_tickets, recent_lines, 0));
    assert_eq!(retention.as_deref(), Some("2 months"), "the configuration file is the truth");
    app.stop().await;
}

#[tokio::test]
async fn the_maintenance_leaves_plain_tables_alone_with_or_without_pg_partman_installed() {
    let (url, _db) = plain_database().await;
    let mut connection = PgConnection::connect(&url).await.expect("connect");
    let layout = Settings::default().partition_layout();

    let without_extension = partition::maintain(&mut connection, &layout).await.expect("no extension");
    partition::install(&mut connection).await.expect("extension");
    let with_extension = partition::maintain(&mut connection, &layout).await.expect("extension, no parent");

    assert_eq!((without_extension, with_extension), (false, false));
    assert_eq!(state(&url).await, State::Plain);
}
