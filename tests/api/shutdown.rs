//! Orderly shutdown loses nothing, in any ack mode.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ticket_ingest::config::AckMode;

use crate::helpers::{
    assert_every_acknowledged_ticket_stored_once, fresh_database, numbered_ticket, run_load, spawn_app_with, temp_dir,
    DbProxy, ServiceProcess,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_with_tickets_still_queued_commits_every_one_of_them() {
    let app = spawn_app_with(|settings| {
        settings.ack = AckMode::Memory;
        settings.batch_max_wait_ms = 2_000;
        settings.batch_max_tickets = 1_000;
    })
    .await;
    for order in 0..50 {
        assert_eq!(app.post_ticket(numbered_ticket(order)).await.status(), 202);
    }
    let db = app.db.clone();

    app.stop().await;

    assert_eq!(crate::helpers::count(&db, "tickets").await, 50);
}

async fn sigterm_under_load_loses_nothing(ack: AckMode) {
    let database_url = fresh_database().await;
    let mut service = ServiceProcess::start(&database_url, &temp_dir("wal"), ack, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(service.address.clone(), 30, 3_000, 1, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(700)).await;

    service.signal("TERM");
    let exit_code = service.wait_exit(Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    let outcome = load.await.expect("load");

    assert_eq!(exit_code, Some(0));
    assert!(outcome.unexpected.is_empty(), "unexpected answers: {:?}", outcome.unexpected);
    assert!(!outcome.accepted.is_empty(), "the load reached the service");
    let db = sqlx::PgPool::connect(&database_url).await.expect("pool");
    assert_every_acknowledged_ticket_stored_once(&db, &outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_with_ack_memory_exits_0_and_loses_nothing() {
    sigterm_under_load_loses_nothing(AckMode::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_with_ack_commit_exits_0_and_loses_nothing() {
    sigterm_under_load_loses_nothing(AckMode::Commit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_with_ack_wal_exits_0_and_loses_nothing() {
    sigterm_under_load_loses_nothing(AckMode::Wal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_database_down_and_ack_memory_keeps_the_acknowledged_tickets_in_the_wal_for_the_next_start() {
    let database_url = fresh_database().await;
    let wal_dir = temp_dir("wal");
    let proxy = DbProxy::start(&database_url).await;
    let grace = [("TICKET_INGEST_SHUTDOWN_GRACE_MS", "1000")];
    let mut service = ServiceProcess::start(&proxy.url(&database_url), &wal_dir, AckMode::Memory, &grace).await;
    proxy.cut();
    let outcome = run_load(service.address.clone(), 5, 100, 1, Arc::new(AtomicBool::new(false))).await;

    service.signal("TERM");
    let exit_code = service.wait_exit(Duration::from_secs(15)).await;
    let log = service.log_text();
    proxy.restore();
    let restarted = ServiceProcess::start(&database_url, &wal_dir, AckMode::Memory, &[]).await;

    assert_eq!(exit_code, Some(0), "the shutdown is bounded although the database is down");
    assert_eq!(outcome.accepted.len(), 100, "answered from memory");
    assert!(log.contains("tickets=100"), "the shutdown says what it left in the WAL:\n{log}");
    let db = sqlx::PgPool::connect(&database_url).await.expect("pool");
    assert_every_acknowledged_ticket_stored_once(&db, &outcome).await;
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_answering_mid_write_does_not_hold_the_shutdown_past_its_grace_period() {
    let database_url = fresh_database().await;
    let proxy = DbProxy::start(&database_url).await;
    let grace = [("TICKET_INGEST_SHUTDOWN_GRACE_MS", "1000")];
    let mut service = ServiceProcess::start(&proxy.url(&database_url), &temp_dir("wal"), AckMode::Commit, &grace).await;
    // A first ticket opens the writer's connection; then the database goes
    // silent, and the next write hangs on it.
    assert_eq!(
        reqwest::Client::new()
            .post(format!("{}/ticket", service.address))
            .body(numbered_ticket(1))
            .send()
            .await
            .expect("sent")
            .status(),
        202
    );
    proxy.stall();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let waiting = tokio::spawn(client.post(format!("{}/ticket", service.address)).body(numbered_ticket(2)).send());
    tokio::time::sleep(Duration::from_millis(500)).await;

    service.signal("TERM");
    let started = std::time::Instant::now();
    let exit_code = service.wait_exit(Duration::from_secs(15)).await;
    let answer = waiting.await.expect("task");

    assert_eq!(exit_code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
    assert_eq!(
        answer.expect("answered before the exit").status(),
        503,
        "the waiting request is refused, not acknowledged"
    );
}
