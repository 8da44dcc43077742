//! A primary failure: a streaming replica promoted under load, the
//! service following it through its `database_url` host list, no restart.
//!
//! Each test starts its own primary and replica (`pg_basebackup -R`) on free
//! ports with scripts/pg.sh's functions, as the `postgres` user when root,
//! and removes them at the end.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};
use ticket_ingest::config::AckMode;
use uuid::Uuid;

use crate::helpers::{
    assert_every_acknowledged_ticket_stored_once, free_port, run_keyed_load, temp_dir, DbProxy, LoadOutcome,
    ServiceProcess,
};

/// Runs `script` in bash with scripts/pg.sh's functions loaded; panics
/// with its output when it fails or outlives two minutes.
pub(crate) fn pg_sh(script: &str) -> String {
    let output = Command::new("timeout")
        .args(["120", "bash", "-c", &format!("set -euo pipefail; source scripts/pg.sh; pg_find_binaries; {script}")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("bash runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{script}\n{text}");
    text
}

/// A primary and its streaming replica, stopped and deleted on drop.
struct Pair {
    base: PathBuf,
    primary_port: u16,
    replica_port: u16,
    /// The replica's streaming connection goes through this proxy, when
    /// the test makes the replica fall behind ([`Pair::start_lagging`]).
    standby_link: Option<DbProxy>,
}

/// How long the standby falls behind before the primary is killed, in
/// [`kill_the_primary_under_load_and_promote`] on a lagging pair.
const STANDBY_LAG: Duration = Duration::from_millis(1_500);

impl Pair {
    /// Starts a primary, creates `tickets` in it, clones it into a
    /// streaming replica. `synchronous`: a commit on the primary waits
    /// until the replica has flushed it (`synchronous_standby_names`).
    async fn start(synchronous: bool) -> Pair {
        Pair::start_with(synchronous, false).await
    }

    /// An asynchronous pair whose replica streams through a [`DbProxy`]:
    /// stalled, the replica receives (and flushes) nothing more while the
    /// primary still counts it as streaming.
    async fn start_lagging() -> Pair {
        Pair::start_with(false, true).await
    }

    async fn start_with(synchronous: bool, through_proxy: bool) -> Pair {
        // The `postgres` user must reach it: not under root's home.
        let base = PathBuf::from(format!("/var/tmp/ticket-ingest-failover-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&base).expect("base dir");
        pg_sh(&format!("chmod 755 {}", base.display()));
        let mut pair = Pair { base, primary_port: free_port(), replica_port: free_port(), standby_link: None };
        let (primary, replica) = (pair.dir("primary"), pair.dir("replica"));
        pg_sh(&format!("pg_start {primary} {}", pair.primary_port));
        if through_proxy {
            pair.standby_link = Some(DbProxy::start(&pair.url(pair.primary_port, "postgres")).await);
        }
        // pg_basebackup -R writes the port it copied through into
        // primary_conninfo: the proxy's, when there is one.
        let upstream_port = pair.standby_link.as_ref().map_or(pair.primary_port, |link| link.port);
        let mut admin = PgConnection::connect(&pair.url(pair.primary_port, "postgres")).await.expect("primary");
        sqlx::query("CREATE DATABASE tickets").execute(&mut admin).await.expect("create database");
        if crate::helpers::partitioned_schema() {
            crate::helpers::partition_database(&pair.url(pair.primary_port, "tickets")).await;
        }
        // initdb -A trust lets local replication connections in; the
        // default wal_level (replica) and max_wal_senders do the rest.
        pg_sh(&format!(
            "real=$(pg_prepare_dir {replica}); pg_as_owner \"$PG_BINDIR/pg_basebackup\" -h 127.0.0.1 -p {} -U postgres -D \"$real\" -R -X stream -c fast; pg_start {replica} {}",
            upstream_port, pair.replica_port
        ));
        // After the copy, or the replica would inherit it and, promoted,
        // wait for a standby of its own at every commit.
        if synchronous {
            sqlx::query("ALTER SYSTEM SET synchronous_standby_names = '*'").execute(&mut admin).await.expect("sync");
            sqlx::query("SELECT pg_reload_conf()").execute(&mut admin).await.expect("reload");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let wanted = if synchronous { "sync" } else { "async" };
        loop {
            let state: Option<String> =
                sqlx::query_scalar("SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'")
                    .fetch_optional(&mut admin)
                    .await
                    .expect("pg_stat_replication");
            if state.as_deref() == Some(wanted) {
                break;
            }
            assert!(Instant::now() < deadline, "the replica is not streaming ({wanted}) after 30 s: {state:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pair
    }

    fn dir(&self, name: &str) -> String {
        self.base.join(name).display().to_string()
    }

    fn url(&self, port: u16, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{database}")
    }

    /// Both hosts, primary first, as libpq would take them.
    fn service_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/tickets?target_session_attrs=read-write",
            self.primary_port, self.replica_port
        )
    }

    fn kill_primary(&self) {
        pg_sh(&format!(
            "pg_as_owner \"$PG_BINDIR/pg_ctl\" -D \"$(pg_real_dir {})\" -m immediate -w -t 60 stop",
            self.dir("primary")
        ));
    }

    fn promote_replica(&self) {
        pg_sh(&format!(
            "pg_as_owner \"$PG_BINDIR/pg_ctl\" -D \"$(pg_real_dir {})\" -w -t 60 promote",
            self.dir("replica")
        ));
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for name in ["primary", "replica"] {
            let dir = self.dir(name);
            let _ = Command::new("timeout")
                .args([
                    "90",
                    "bash",
                    "-c",
                    &format!("source scripts/pg.sh; pg_stop {dir}; rm -rf \"$(pg_real_dir {dir})\" {dir}"),
                ])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

async fn readyz(service: &ServiceProcess) -> u16 {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().expect("client");
    match client.get(format!("{}/readyz", service.address)).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// `times_seen` of every product against a recount of the stored lines:
/// the products that differ.
pub(crate) async fn catalogue_mismatches(db: &PgPool) -> Vec<(String, i64, i64)> {
    sqlx::query_as(
        "SELECT coalesce(p.product_id, l.product_id), coalesce(p.times_seen, 0), coalesce(l.lines, 0)
         FROM products p
         FULL JOIN (SELECT product_id, count(*) AS lines FROM ticket_lines GROUP BY product_id) l
                ON l.product_id = p.product_id
         WHERE coalesce(p.times_seen, 0) <> coalesce(l.lines, 0)",
    )
    .fetch_all(db)
    .await
    .expect("catalogue query")
}

/// Asserts that `idempotency_keys` holds one key per ticket answered
/// `202` by [`run_keyed_load`] (`order-N`), standing for the id it was
/// answered with: no ticket stored twice under two keys.
pub(crate) async fn assert_one_key_per_acknowledged_ticket(db: &PgPool, outcome: &LoadOutcome) {
    let keys: Vec<(String, uuid::Uuid)> =
        sqlx::query_as("SELECT key, ticket_id FROM idempotency_keys").fetch_all(db).await.expect("keys");
    let acknowledged: std::collections::HashMap<String, uuid::Uuid> =
        outcome.accepted.iter().zip(&outcome.ids).map(|(order, id)| (format!("order-{order}"), *id)).collect();
    assert_eq!(keys.len(), acknowledged.len(), "one key per acknowledged ticket, none stored twice under two keys");
    for (key, ticket_id) in keys {
        assert_eq!(acknowledged.get(&key), Some(&ticket_id), "{key} stands for the id it was answered with");
    }
}

/// What one failover run saw.
struct FailoverRun {
    accepted: usize,
    stored_at_promotion: i64,
    stored_at_end: i64,
    saw_503_during_outage: bool,
    ready_after_promotion: Duration,
    /// Records the service wrote again on the promoted replica.
    written_again: u64,
}

/// A counter of the service's `/metrics`, 0 when absent.
async fn counter(service: &ServiceProcess, name: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", service.address))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines().find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0)
}

/// Load on the service, the primary killed (`-m immediate`), two seconds
/// later the replica promoted; the load runs on until the service is ready
/// again and two seconds more. Checks every acknowledged ticket and the
/// catalogue on the new primary.
async fn kill_the_primary_under_load_and_promote(pair: &Pair, ack: AckMode) -> FailoverRun {
    let service = ServiceProcess::start(&pair.service_url(), &temp_dir("wal"), ack, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Producers that retry a refused ticket with the same Idempotency-Key.
    let load = tokio::spawn(run_keyed_load(service.address.clone(), 20, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(readyz(&service).await, 200, "ready before the failure");
    if let Some(link) = &pair.standby_link {
        // The replica stops receiving; what the primary commits from now
        // on is on the primary alone when it dies.
        link.stall();
        tokio::time::sleep(STANDBY_LAG).await;
    }

    pair.kill_primary();
    let killed = Instant::now();
    let mut saw_503_during_outage = false;
    while killed.elapsed() < Duration::from_secs(2) {
        saw_503_during_outage |= readyz(&service).await == 503;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pair.promote_replica();
    let promoted = Instant::now();
    let new_primary = PgPool::connect(&pair.url(pair.replica_port, "tickets")).await.expect("new primary");
    let stored_at_promotion: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tickets").fetch_one(&new_primary).await.expect("count");
    loop {
        if readyz(&service).await == 200 {
            break;
        }
        assert!(promoted.elapsed() < Duration::from_secs(30), "not ready 30 s after the promotion");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_after_promotion = promoted.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let outcome = load.await.expect("load");

    assert!(outcome.unexpected.is_empty(), "unexpected answers: {:?}", outcome.unexpected);
    assert_every_acknowledged_ticket_stored_once(&new_primary, &outcome).await;
    assert_one_key_per_acknowledged_ticket(&new_primary, &outcome).await;
    let stored_at_end: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tickets").fetch_one(&new_primary).await.expect("count");
    assert!(stored_at_end > stored_at_promotion, "the service wrote to the promoted replica without a restart");
    let mismatches = catalogue_mismatches(&new_primary).await;
    assert!(mismatches.is_empty(), "products.times_seen against the stored lines: {mismatches:?}");
    let written_again = counter(&service, "ticket_ingest_wal_records_written_again_total").await;
    drop(service);
    FailoverRun {
        accepted: outcome.accepted.len(),
        stored_at_promotion,
        stored_at_end,
        saw_503_during_outage,
        ready_after_promotion,
        written_again,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_holds_every_ticket_acknowledged_from_the_wal_and_the_service_follows_it() {
    let pair = Pair::start(true).await;

    let run = kill_the_primary_under_load_and_promote(&pair, AckMode::Wal).await;

    assert!(run.saw_503_during_outage, "/readyz answered 503 while no primary was up");
    eprintln!(
        "failover (ack = wal): {} tickets acknowledged, {} stored at the promotion, {} at the end, ready {:?} after the promotion",
        run.accepted, run.stored_at_promotion, run.stored_at_end, run.ready_after_promotion
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_synchronous_replication_every_ticket_acknowledged_on_commit_survives_the_failover() {
    let pair = Pair::start(true).await;

    let run = kill_the_primary_under_load_and_promote(&pair, AckMode::Commit).await;

    assert!(run.saw_503_during_outage, "/readyz answered 503 while no primary was up");
    eprintln!(
        "failover (ack = commit): {} tickets acknowledged, {} stored at the promotion, {} at the end, ready {:?} after the promotion",
        run.accepted, run.stored_at_promotion, run.stored_at_end, run.ready_after_promotion
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_asynchronous_replication_a_standby_behind_loses_no_ticket_acknowledged_from_the_wal() {
    let pair = Pair::start_lagging().await;

    let run = kill_the_primary_under_load_and_promote(&pair, AckMode::Wal).await;

    assert!(run.saw_503_during_outage, "/readyz answered 503 while no primary was up");
    assert!(run.written_again > 0, "the records the standby lacked were written again on it");
    eprintln!(
        "failover (ack = wal, asynchronous, standby {STANDBY_LAG:?} behind): {} tickets acknowledged, {} stored at the promotion, {} at the end, {} records written again, ready {:?} after the promotion",
        run.accepted, run.stored_at_promotion, run.stored_at_end, run.written_again, run.ready_after_promotion
    );
}
