//! `/readyz` and `/healthz`: what they say, and that they say it at once,
//! whatever the rest of the service is waiting for.

use std::time::{Duration, Instant};

use ticket_ingest::config::AckMode;

use sqlx::PgPool;

use crate::helpers::{
    numbered_ticket, parsed_url, spawn_app_from, spawn_app_with, test_settings, TestApp, TicketsLocked,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_at_once_while_key_lookups_wait_on_a_locked_table() {
    // The keys were stored by another instance: this one must look each up
    // in `tickets`, which is locked, so the lookups hold the shared pool's
    // connections. The database itself answers: readiness must say so
    // without queueing behind them.
    let mut settings = test_settings().await;
    settings.ack = AckMode::Wal;
    settings.db_pool_size = 1;
    let other = spawn_app_from(settings.clone()).await;
    for number in 0..10 {
        let answer =
            other.post_ticket_with_header(numbered_ticket(number), "Idempotency-Key", &format!("k-{number}")).await;
        assert_eq!(answer.status(), 202);
    }
    other.wait_for_count("tickets", 10).await;
    other.stop().await;
    settings.wal_dir = crate::helpers::temp_dir("wal");
    let app = spawn_app_from(settings).await;
    assert_eq!(app.get("/readyz").await.status(), 200, "ready before the lock");
    let locked = TicketsLocked::take(&app.database_url).await;
    let posts: Vec<_> =
        (0..10).map(|number| app.spawn_post_with_key(&numbered_ticket(number), &format!("k-{number}"))).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let ready = app.get("/readyz").await;
    let took = started.elapsed();
    let status = ready.status();
    let reason = ready.text().await.expect("text");

    locked.release().await;
    for post in posts {
        assert_eq!(post.await.expect("post").status(), 202);
    }
    assert_eq!((status.as_u16(), reason.as_str()), (200, "ready"), "after {took:?}");
}

/// Runs `ticket-ingest serve` on `database_url` until it exits (at most
/// 30 s); its exit code and what it wrote to standard error.
fn serve_until_exit(database_url: &str) -> (Option<i32>, String) {
    let output = std::process::Command::new("timeout")
        .arg("30")
        .arg(env!("CARGO_BIN_EXE_ticket-ingest"))
        .args(["serve", "--config", "/dev/null"])
        .env("TICKET_INGEST_DATABASE_URL", database_url)
        .env("TICKET_INGEST_LISTEN", format!("127.0.0.1:{}", crate::helpers::free_port()))
        .env("TICKET_INGEST_WAL_DIR", crate::helpers::temp_dir("wal"))
        .output()
        .expect("ticket-ingest runs");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_database_or_role_at_start_refuses_to_start_and_says_why() {
    let base = crate::helpers::test_database_url();
    let (at, _database) = base.rsplit_once('/').expect("url with a database");
    let unknown_database = format!("{at}/no_such_database_{}", uuid::Uuid::now_v7().simple());
    let unknown_role = base.replacen("postgres@", "no_such_role@", 1);

    for (url, says) in [(unknown_database, "does not exist"), (unknown_role, "no_such_role")] {
        let (code, stderr) = serve_until_exit(&url);
        assert_eq!(code, Some(1), "{url}: {stderr}");
        assert!(stderr.contains("the database refuses this service") && stderr.contains(says), "{url}: {stderr}");
    }
}

/// A service connecting as a role of its own, and an admin pool to change
/// that role.
pub(crate) struct OwnRole {
    pub app: TestApp,
    pub admin: PgPool,
    pub role: String,
}

impl OwnRole {
    pub(crate) async fn start() -> OwnRole {
        let mut settings = test_settings().await;
        let database_url = settings.database_url.as_ref().expect("database").as_str().to_string();
        let role = format!("ingest_{}", uuid::Uuid::now_v7().simple());
        let admin = PgPool::connect(&database_url).await.expect("admin pool");
        sqlx::query(&format!("CREATE ROLE {role} LOGIN SUPERUSER")).execute(&admin).await.expect("role");
        settings.database_url = Some(parsed_url(&database_url.replacen("postgres@", &format!("{role}@"), 1)));
        settings.ack = AckMode::Wal;
        OwnRole { app: spawn_app_from(settings).await, admin, role }
    }

    /// The role may no longer log in, and its sessions are ended.
    pub(crate) async fn refuse(&self) {
        sqlx::query(&format!("ALTER ROLE {} NOLOGIN", self.role)).execute(&self.admin).await.expect("nologin");
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
            .bind(&self.role)
            .execute(&self.admin)
            .await
            .expect("terminate");
    }

    pub(crate) async fn admit(&self) {
        sqlx::query(&format!("ALTER ROLE {} LOGIN", self.role)).execute(&self.admin).await.expect("login");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_refused_while_running_turns_healthz_red_until_it_may_log_in_again() {
    let own = OwnRole::start().await;
    let app = &own.app;
    assert_eq!(app.post_ticket(numbered_ticket(1)).await.status(), 202);
    app.wait_for_count("tickets", 1).await;
    assert_eq!(app.get("/healthz").await.status(), 200);

    own.refuse().await;
    assert_eq!(app.post_ticket(numbered_ticket(2)).await.status(), 202, "accepted into the WAL meanwhile");
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        let health = app.get("/healthz").await;
        if health.status() != 200 || Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let status = health.status();
    let reason = health.text().await.expect("text");
    let ready = app.get("/readyz").await.status();

    own.admit().await;
    app.wait_for_count("tickets", 2).await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("refuses this service") && reason.contains("not permitted to log in"), "{reason}");
    assert_eq!(ready, 503);
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.get("/healthz").await.status() != 200 {
        assert!(Instant::now() < deadline, "/healthz still red once the role may log in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    own.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_stays_ready_while_every_large_ticket_is_refused_and_says_what_share_of_the_last_minute_was() {
    // A large ticket needs the byte budget almost to itself; with a small
    // one always in flight (the writers wait on a lock), every large one
    // is refused while a typical ticket still fits.
    let app = spawn_app_with(|settings| {
        settings.queue_max_bytes = 256 * 1024;
        settings.max_body_bytes = 1024 * 1024;
    })
    .await;
    let locked = TicketsLocked::take(&app.database_url).await;
    assert_eq!(app.post_ticket(numbered_ticket(1)).await.status(), 202);
    for order in 2..=5 {
        assert_eq!(app.post_ticket(crate::admission::long_ticket(order, 10_000)).await.status(), 503);
    }
    for order in 6..=10 {
        assert_eq!(app.post_ticket(numbered_ticket(order)).await.status(), 202);
    }

    let ready = app.get("/readyz").await;
    let status = ready.status();
    let detail = ready.text().await.expect("text");

    locked.release().await;
    assert_eq!(status, 200, "a typical ticket is accepted: {detail}");
    assert!(detail.starts_with("ready, but 4 of the 10 tickets posted in the last minute (40 %)"), "{detail}");
    app.wait_for_count("tickets", 6).await;
    app.stop().await;
}
