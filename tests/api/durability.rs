//! Acknowledged tickets survive kill -9 and database outages (`ack = wal`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ticket_ingest::config::AckMode;

use crate::helpers::{
    assert_every_acknowledged_ticket_stored_once, count, fresh_database, numbered_ticket, parsed_url, run_load,
    spawn_app_from, spawn_app_with, temp_dir, test_settings, DbProxy, ServiceProcess,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_then_restart_on_the_same_wal_stores_every_acknowledged_ticket_once() {
    let database_url = fresh_database().await;
    let wal_dir = temp_dir("wal");
    let mut service = ServiceProcess::start(&database_url, &wal_dir, AckMode::Wal, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(service.address.clone(), 30, 5_000, 1, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(800)).await;

    service.signal("KILL");
    let _ = service.wait_exit(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let outcome = load.await.expect("load");
    let restarted = ServiceProcess::start(&database_url, &wal_dir, AckMode::Wal, &[]).await;

    assert!(outcome.unexpected.is_empty(), "unexpected answers: {:?}", outcome.unexpected);
    assert!(!outcome.accepted.is_empty());
    let db = sqlx::PgPool::connect(&database_url).await.expect("pool");
    assert_every_acknowledged_ticket_stored_once(&db, &outcome).await;
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_turns_into_503s_and_every_acknowledged_ticket_lands_after_restore() {
    let database_url = fresh_database().await;
    let proxy = DbProxy::start(&database_url).await;
    let budget = [("TICKET_INGEST_QUEUE_CAPACITY", "300")];
    let service = ServiceProcess::start(&proxy.url(&database_url), &temp_dir("wal"), AckMode::Wal, &budget).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(service.address.clone(), 20, 1_000_000, 1, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(300)).await;

    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ready_during_outage = reqwest::get(format!("{}/readyz", service.address)).await.expect("readyz").status();
    let alive_during_outage = reqwest::get(format!("{}/healthz", service.address)).await.expect("healthz").status();
    proxy.restore();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let outcome = load.await.expect("load");

    assert_eq!(ready_during_outage, 503);
    assert_eq!(alive_during_outage, 200);
    assert!(outcome.refused > 0, "the exhausted budget refused tickets during the outage");
    assert!(outcome.unexpected.is_empty(), "unexpected answers: {:?}", outcome.unexpected);
    let db = sqlx::PgPool::connect(&database_url).await.expect("pool");
    assert_every_acknowledged_ticket_stored_once(&db, &outcome).await;
    drop(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_then_kill_9_then_restart_still_stores_every_acknowledged_ticket() {
    let database_url = fresh_database().await;
    let wal_dir = temp_dir("wal");
    let proxy = DbProxy::start(&database_url).await;
    let mut service = ServiceProcess::start(&proxy.url(&database_url), &wal_dir, AckMode::Wal, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(service.address.clone(), 20, 3_000, 1, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(300)).await;

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    service.signal("KILL");
    let _ = service.wait_exit(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let outcome = load.await.expect("load");
    proxy.restore();
    let restarted = ServiceProcess::start(&database_url, &wal_dir, AckMode::Wal, &[]).await;

    assert!(outcome.unexpected.is_empty(), "unexpected answers: {:?}", outcome.unexpected);
    assert!(!outcome.accepted.is_empty());
    let db = sqlx::PgPool::connect(&database_url).await.expect("pool");
    assert_every_acknowledged_ticket_stored_once(&db, &outcome).await;
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_outage_with_ack_wal_exits_0_and_the_next_start_stores_every_acknowledged_ticket() {
    let database_url = fresh_database().await;
    let wal_dir = temp_dir("wal");
    let proxy = DbProxy::start(&database_url).await;
    let mut service = ServiceProcess::start(&proxy.url(&database_url), &wal_dir, AckMode::Wal, &[]).await;
    proxy.cut();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(service.address.clone(), 10, 300, 1, Arc::clone(&stop)));
    let outcome = load.await.expect("load");
    let metrics = reqwest::get(format!("{}/metrics", service.address)).await.expect("metrics");
    let metrics = metrics.text().await.expect("metrics text");

    service.signal("TERM");
    let exit_code = service.wait_exit(Duration::from_secs(20)).await;
    let log = service.log_text();
    proxy.restore();
    let restarted = ServiceProcess::start(&database_url, &wal_dir, AckMode::Wal, &[]).await;

    assert_eq!(exit_code, Some(0), "shutdown does not wait for the database when the WAL holds the tickets");
    assert_eq!(outcome.accepted.len(), 300, "acknowledged from the WAL while the database was down");
    assert!(metrics.contains("ticket_ingest_wal_records 300"), "{metrics}");
    assert!(
        !log.contains("every accepted ticket is committed"),
        "a shutdown that left tickets behind said otherwise:\n{log}"
    );
    assert!(log.contains("tickets=300") && log.contains("do not delete it"), "the shutdown names what is left:\n{log}");
    let db = sqlx::PgPool::connect(&database_url).await.expect("pool");
    assert_every_acknowledged_ticket_stored_once(&db, &outcome).await;
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_of_clients_that_hang_up_while_they_are_logged_are_stored_and_leave_nothing_in_the_log() {
    use tokio::io::AsyncWriteExt;

    let wal_dir = temp_dir("hang-up");
    let dir = wal_dir.clone();
    let app = spawn_app_with(move |settings| {
        settings.ack = AckMode::Wal;
        settings.wal_dir = dir;
    })
    .await;
    let host = app.address.trim_start_matches("http://").to_string();
    let sent = 300u64;
    for order in 0..sent {
        let body = numbered_ticket(order);
        let request = format!("POST /ticket HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let mut stream = tokio::net::TcpStream::connect(&host).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("request written");
        // Hang up at once: the handler is dropped while it waits for the log.
        drop(stream);
    }
    let db = app.db.clone();
    app.stop().await;

    let segments_left: Vec<_> = std::fs::read_dir(&wal_dir)
        .expect("wal dir")
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|extension| extension == "wal"))
        .collect();
    assert!(segments_left.is_empty(), "records left for a replay: {segments_left:?}");
    let stored = count(&db, "tickets").await;
    assert!(stored > 0 && stored <= sent as i64, "{stored} of {sent} stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_larger_than_the_budget_is_replayed_in_the_background_while_health_answers() {
    use bytes::Bytes;
    use sqlx::{Connection, Executor, PgConnection};
    use ticket_ingest::metrics::Metrics;
    use ticket_ingest::wal::{Wal, WalRecord};

    // 50 records left by an earlier run, more than the budget of 10.
    let mut settings = test_settings().await;
    let (wal, thread, _) =
        Wal::<()>::open(&settings.wal_dir, 1 << 20, u64::MAX, Arc::new(Metrics::new()), None).expect("wal opens");
    for order in 0..50 {
        let record = WalRecord {
            id: uuid::Uuid::now_v7(),
            received_at: time::OffsetDateTime::now_utc(),
            idempotency_key: None,
            raw: Bytes::from(numbered_ticket(order)),
        };
        wal.append(record, None).await.expect("appended");
    }
    tokio::task::spawn_blocking(move || thread.stop()).await.expect("wal stopped");

    // The writers held back by a lock on the tickets table.
    let database_url = settings.database_url.as_ref().expect("database").as_str().to_string();
    let db = sqlx::PgPool::connect(&database_url).await.expect("pool");
    ticket_ingest::store::migrate(&db).await.expect("migrations");
    let mut locker = PgConnection::connect(&database_url).await.expect("locker");
    locker.execute("BEGIN; LOCK TABLE tickets IN ACCESS EXCLUSIVE MODE").await.expect("lock");

    settings.queue_capacity = 10;
    let app = tokio::time::timeout(Duration::from_secs(10), spawn_app_from(settings))
        .await
        .expect("the service starts while the replay waits for budget");
    assert_eq!(app.get("/healthz").await.status(), 200);

    locker.execute("ROLLBACK").await.expect("unlock");
    app.wait_for_count("tickets", 50).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_while_the_database_is_unreachable_it_accepts_into_the_wal_says_why_it_is_not_ready_and_catches_up() {
    let database_url = fresh_database().await;
    let proxy = DbProxy::start(&database_url).await;
    proxy.cut();
    let service = ServiceProcess::start(&proxy.url(&database_url), &temp_dir("wal"), AckMode::Wal, &[]).await;

    let ready = reqwest::get(format!("{}/readyz", service.address)).await.expect("readyz");
    let ready_status = ready.status();
    let ready_text = ready.text().await.expect("readyz text");
    let stop = Arc::new(AtomicBool::new(false));
    let outcome = run_load(service.address.clone(), 5, 100, 1, stop).await;
    proxy.restore();

    assert_eq!(ready_status, 503);
    assert!(ready_text.contains("database"), "{ready_text}");
    assert_eq!(outcome.accepted.len(), 100, "accepted into the WAL while the database was unreachable");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while reqwest::get(format!("{}/readyz", service.address)).await.expect("readyz").status() != 200 {
        assert!(std::time::Instant::now() < deadline, "not ready after the database came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let db = sqlx::PgPool::connect(&database_url).await.expect("pool");
    assert_every_acknowledged_ticket_stored_once(&db, &outcome).await;
    drop(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_kill_9_gets_the_id_acknowledged_before_the_crash() {
    let database_url = fresh_database().await;
    let wal_dir = temp_dir("wal");
    let proxy = DbProxy::start(&database_url).await;
    let mut service = ServiceProcess::start(&proxy.url(&database_url), &wal_dir, AckMode::Wal, &[]).await;
    proxy.cut();
    let client = reqwest::Client::new();
    let post = |address: String| {
        client.post(format!("{address}/ticket")).header("Idempotency-Key", "order-9").body(numbered_ticket(9)).send()
    };
    let first: serde_json::Value = post(service.address.clone()).await.expect("sent").json().await.expect("json");
    service.signal("KILL");
    let _ = service.wait_exit(Duration::from_secs(10)).await;

    // The database is still out: the record waits in the log.
    let restarted = ServiceProcess::start(&proxy.url(&database_url), &wal_dir, AckMode::Wal, &[]).await;
    let retry = post(restarted.address.clone()).await.expect("sent");
    let retry_status = retry.status();
    let retry: serde_json::Value = retry.json().await.expect("json");
    proxy.restore();

    assert_eq!(retry_status, 202);
    assert_eq!((retry["id"].clone(), retry["duplicate"].clone()), (first["id"].clone(), serde_json::Value::Bool(true)));
    let db = sqlx::PgPool::connect(&database_url).await.expect("pool");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stored: Option<uuid::Uuid> =
            sqlx::query_scalar("SELECT id FROM tickets").fetch_optional(&db).await.unwrap_or(None);
        if let Some(id) = stored {
            assert_eq!(serde_json::Value::String(id.to_string()), first["id"]);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the logged ticket was not written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&db, "tickets").await, 1);
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_the_database_is_back_the_first_commit_does_not_wait_out_the_backoff_grown_during_the_outage() {
    let database_url = fresh_database().await;
    let proxy = DbProxy::start(&database_url).await;
    let mut settings = test_settings().await;
    settings.database_url = Some(parsed_url(&proxy.url(&database_url)));
    settings.ack = AckMode::Wal;
    let app = spawn_app_from(settings).await;
    proxy.cut();
    assert_eq!(app.post_ticket(numbered_ticket(1)).await.status(), 202);
    // The 8th retry waits 5 s or more (50 ms doubling, capped at 5 s).
    let retries = |metrics: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("ticket_ingest_retries_total "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while retries(&app.get("/metrics").await.text().await.expect("metrics")) < 8.0 {
        assert!(std::time::Instant::now() < deadline, "the writer did not retry 8 times in 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    proxy.restore();
    let restored = std::time::Instant::now();
    let db = sqlx::PgPool::connect(&database_url).await.expect("pool");
    while count(&db, "tickets").await == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = restored.elapsed();

    assert!(took < Duration::from_secs(2), "first commit {took:?} after the database came back");
    app.stop().await;
}
