//! Patroni: the leader of a Patroni cluster killed under load, a replica
//! promoted by Patroni, and the service following it — through its
//! `database_url` host list (`target_session_attrs=read-write`) or through
//! HAProxy checking Patroni's REST API (`docker/haproxy/patroni.cfg`); and a
//! planned `patronictl switchover` under load.
//!
//! # The cluster
//! [`PatroniCluster::start`] runs, on free loopback ports, one etcd (the
//! v3 API Patroni's `etcd3` section talks to) and three PostgreSQL nodes,
//! each run by a Patroni of its own, with `synchronous_mode` on: a commit on
//! the leader returns once the synchronous standby Patroni chose has
//! flushed it, and only that standby may be promoted. The first node
//! bootstraps the cluster (initdb), the database `tickets` is created on it
//! (partitioned with `TEST_SCHEMA=partitioned`), then the two others clone
//! it. `track_commit_timestamp` is on, so that the commit times of the
//! stored tickets tell when the service wrote again after a failure.
//!
//! As root, Patroni and PostgreSQL run as `postgres`, in
//! `/var/tmp/ticket-ingest-patroni-<uuid>/`, which that user can reach.
//! Dropping the cluster kills every Patroni (its process group), stops
//! every PostgreSQL (`pg_ctl stop -m immediate`: Patroni starts the
//! postmaster in a session of its own), kills etcd and deletes the
//! directory, also when the test fails (the end of each log is printed
//! first).
//!
//! # Tools
//! Debian's `patroni` (with `patronictl`) and `etcd-server`, which
//! `scripts/test.sh` installs when run as root; without them these tests
//! fail, naming the packages. HAProxy as for `scale.rs`.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::{Connection, PgConnection, PgPool};
use ticket_ingest::config::AckMode;
use uuid::Uuid;

use crate::failover::{assert_one_key_per_acknowledged_ticket, catalogue_mismatches, pg_sh};
use crate::helpers::{
    assert_every_acknowledged_ticket_stored_once, free_port, run_keyed_load, temp_dir, LoadOutcome, ServiceProcess,
};
use crate::scale::Haproxy;

const INSTALL_HINT: &str = "install Debian's patroni and etcd-server \
    (scripts/test.sh does when run as root: apt-get install patroni etcd-server)";

/// Patroni's leader lock lives this long without renewal: a leader that
/// dies is replaced after at most this (`bootstrap.dcs.ttl`).
const TTL_S: u64 = 10;

/// How long the cluster may take to bootstrap and replicate.
const START: Duration = Duration::from_secs(60);

/// One Patroni-managed PostgreSQL.
struct Node {
    name: String,
    pg_port: u16,
    /// Patroni's REST API (`/primary`, `/sync`, …).
    api_port: u16,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    patroni: Option<Child>,
}

/// An etcd and three Patroni nodes; everything stopped and deleted on drop.
struct PatroniCluster {
    base: PathBuf,
    /// The `postgres` user's uid and gid when we are root.
    owner: Option<(u32, u32)>,
    bindir: String,
    etcd: Option<Child>,
    nodes: Vec<Node>,
}

impl PatroniCluster {
    async fn start() -> PatroniCluster {
        for tool in ["patroni", "patronictl", "etcd"] {
            if let Err(error) = Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status()
            {
                panic!("cannot run {tool}: {error}: {INSTALL_HINT}");
            }
        }
        // pg.sh finds the PostgreSQL binaries and, as root, the owner.
        let bindir = pg_sh("pg_ensure_owner_user >&2; echo \"$PG_BINDIR\"").lines().last().expect("bindir").to_string();
        let owner = running_as_root().then(postgres_user);
        let base = PathBuf::from(format!("/var/tmp/ticket-ingest-patroni-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&base).expect("base dir");
        let mut cluster = PatroniCluster { base, owner, bindir, etcd: None, nodes: Vec::new() };
        pg_sh(&format!("chmod 755 {0}; if pg_is_root; then chown {1}: {0}; fi", cluster.base.display(), "postgres"));

        let (etcd_client, etcd_peer) = (free_port(), free_port());
        cluster.start_etcd(etcd_client, etcd_peer).await;
        for index in 0..3 {
            let node = cluster.node_config(index, etcd_client);
            cluster.nodes.push(node);
        }
        // The first node bootstraps; the database is created before the
        // others clone it.
        cluster.start_patroni(0);
        cluster.wait_for_leader(&[0], Instant::now() + START).await;
        let mut admin = PgConnection::connect(&cluster.url(0, "postgres")).await.expect("leader");
        sqlx::query("CREATE DATABASE tickets").execute(&mut admin).await.expect("create database");
        if crate::helpers::partitioned_schema() {
            crate::helpers::partition_database(&cluster.url(0, "tickets")).await;
        }
        cluster.start_patroni(1);
        cluster.start_patroni(2);
        cluster.wait_until_both_replicas_stream(0, Instant::now() + START).await;
        cluster
    }

    async fn start_etcd(&mut self, client: u16, peer: u16) {
        let log = std::fs::File::create(self.base.join("etcd.log")).expect("etcd log");
        let (client_url, peer_url) = (format!("http://127.0.0.1:{client}"), format!("http://127.0.0.1:{peer}"));
        let mut command = Command::new("etcd");
        command
            .args(["--name", "etcd", "--data-dir"])
            .arg(self.base.join("etcd"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("etcd={peer_url}"), "--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log"))
            .stderr(log);
        self.etcd = Some(command.spawn().unwrap_or_else(|error| panic!("cannot start etcd: {error}: {INSTALL_HINT}")));
        let client = http_client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = client.get(format!("{client_url}/health")).send().await {
                if response.text().await.is_ok_and(|body| body.contains("\"true\"")) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "etcd did not answer healthy within 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes node `index`'s Patroni configuration.
    fn node_config(&self, index: usize, etcd_client: u16) -> Node {
        let name = format!("node{index}");
        let (pg_port, api_port) = (free_port(), free_port());
        let (data, config, log) =
            (self.base.join(&name), self.base.join(format!("{name}.yml")), self.base.join(format!("{name}.log")));
        let yaml = format!(
            "scope: tickets
namespace: /ticket-ingest/
name: {name}
restapi:
  listen: 127.0.0.1:{api_port}
  connect_address: 127.0.0.1:{api_port}
etcd3:
  hosts: 127.0.0.1:{etcd_client}
bootstrap:
  dcs:
    ttl: {TTL_S}
    loop_wait: 1
    retry_timeout: 5
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_connections: 200
        wal_log_hints: 'on'
        track_commit_timestamp: 'on'
  initdb:
  - encoding: UTF8
  - locale: C
  - auth: trust
  pg_hba:
  - local all all trust
  - host all all 127.0.0.1/32 trust
  - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {data}
  bin_dir: {bindir}
  pgpass: {base}/{name}.pgpass
  basebackup:
  - checkpoint: fast
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
  parameters:
    unix_socket_directories: '{base}'
",
            data = data.display(),
            bindir = self.bindir,
            base = self.base.display(),
        );
        std::fs::write(&config, yaml).expect("write the Patroni configuration");
        Node { name, pg_port, api_port, config, data, log, patroni: None }
    }

    fn start_patroni(&mut self, index: usize) {
        let node = &self.nodes[index];
        let log = std::fs::File::create(&node.log).expect("patroni log");
        let mut command = Command::new("patroni");
        command
            .arg(&node.config)
            .current_dir(&self.base)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("patroni log"))
            .stderr(log)
            .process_group(0);
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid).env("HOME", &self.base);
        }
        let child = command.spawn().unwrap_or_else(|error| panic!("cannot start patroni: {error}: {INSTALL_HINT}"));
        self.nodes[index].patroni = Some(child);
    }

    fn url(&self, index: usize, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.nodes[index].pg_port)
    }

    /// Every node, in order, as libpq would take them.
    fn host_list_url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|node| format!("127.0.0.1:{}", node.pg_port)).collect();
        format!("postgres://postgres@{}/tickets?target_session_attrs=read-write", hosts.join(","))
    }

    /// The status Patroni's REST API answers `path` with on node `index`
    /// (0 when it does not answer).
    async fn api_status(&self, index: usize, path: &str) -> u16 {
        let url = format!("http://127.0.0.1:{}{path}", self.nodes[index].api_port);
        match http_client().get(url).send().await {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// The first of `candidates` whose Patroni answers `/primary` with 200.
    async fn wait_for_leader(&self, candidates: &[usize], deadline: Instant) -> usize {
        loop {
            for &index in candidates {
                if self.api_status(index, "/primary").await == 200 {
                    return index;
                }
            }
            assert!(Instant::now() < deadline, "none of nodes {candidates:?} became the leader\n{}", self.log_tails());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node Patroni chose as the synchronous standby.
    async fn sync_standby(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for index in 0..self.nodes.len() {
                if self.nodes[index].patroni.is_some() && self.api_status(index, "/sync").await == 200 {
                    return index;
                }
            }
            assert!(Instant::now() < deadline, "no synchronous standby after 30 s\n{}", self.log_tails());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the leader streams to two standbys, one synchronous.
    async fn wait_until_both_replicas_stream(&self, leader: usize, deadline: Instant) {
        let mut admin = PgConnection::connect(&self.url(leader, "postgres")).await.expect("leader");
        loop {
            let (streaming, sync): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE state = 'streaming'), count(*) FILTER (WHERE sync_state = 'sync')
                 FROM pg_stat_replication",
            )
            .fetch_one(&mut admin)
            .await
            .expect("pg_stat_replication");
            if (streaming, sync) == (2, 1) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{streaming} standbys streaming, {sync} synchronous\n{}",
                self.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A host lost: node `index`'s Patroni killed (`SIGKILL`), its
    /// PostgreSQL stopped at once (`-m immediate`, no checkpoint).
    fn kill(&mut self, index: usize) {
        if let Some(mut patroni) = self.nodes[index].patroni.take() {
            kill_group(&mut patroni);
        }
        let stopped = self.stop_postgres(index);
        assert!(stopped, "pg_ctl stop -m immediate on {}", self.nodes[index].name);
    }

    fn stop_postgres(&self, index: usize) -> bool {
        let data = &self.nodes[index].data;
        if !data.join("postmaster.pid").exists() {
            return true;
        }
        let mut command = Command::new(format!("{}/pg_ctl", self.bindir));
        command.arg("-D").arg(data).args(["-m", "immediate", "-w", "-t", "30", "stop"]).stdout(Stdio::null());
        command.current_dir("/");
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command.status().is_ok_and(|status| status.success())
    }

    /// `patronictl switchover --force` from the leader to `candidate`.
    fn switchover(&self, leader: usize, candidate: usize) -> String {
        let output = Command::new("timeout")
            .args(["60", "patronictl", "-c"])
            .arg(&self.nodes[leader].config)
            .args(["switchover", "--leader", &self.nodes[leader].name, "--candidate", &self.nodes[candidate].name])
            .arg("--force")
            .output()
            .expect("patronictl runs");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "patronictl switchover:\n{text}");
        text
    }

    /// The last lines of every Patroni log and etcd's.
    fn log_tails(&self) -> String {
        let mut logs: Vec<PathBuf> = self.nodes.iter().map(|node| node.log.clone()).collect();
        logs.push(self.base.join("etcd.log"));
        let mut text = String::new();
        for log in logs {
            let content = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            text.push_str(&format!("--- last lines of {}:\n", log.display()));
            text.push_str(&lines[lines.len().saturating_sub(15)..].join("\n"));
            text.push('\n');
        }
        text
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
        for index in 0..self.nodes.len() {
            if let Some(mut patroni) = self.nodes[index].patroni.take() {
                kill_group(&mut patroni);
            }
        }
        for index in 0..self.nodes.len() {
            self.stop_postgres(index);
        }
        if let Some(mut etcd) = self.etcd.take() {
            let _ = etcd.kill();
            let _ = etcd.wait();
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Kills a process started in a group of its own, and its group.
fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
    let _ = child.kill();
    let _ = child.wait();
}

fn running_as_root() -> bool {
    let output = Command::new("id").arg("-u").output().expect("id runs");
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

/// The uid and gid of `postgres`.
fn postgres_user() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let output = Command::new("id").args([flag, "postgres"]).output().expect("id runs");
        String::from_utf8_lossy(&output.stdout).trim().parse().expect("the postgres user exists")
    };
    (id("-u"), id("-g"))
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("HTTP client")
}

fn epoch_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64()
}

/// How long after `after` the first stored ticket was committed (by its
/// commit timestamp), if any was.
async fn first_commit_after(db: &PgPool, after: SystemTime) -> Option<Duration> {
    let seconds: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM min(pg_xact_commit_timestamp(xmin)))::float8 - $1
         FROM tickets WHERE pg_xact_commit_timestamp(xmin) > to_timestamp($1)",
    )
    .bind(epoch_seconds(after))
    .fetch_one(db)
    .await
    .expect("first commit");
    seconds.map(Duration::from_secs_f64)
}

/// The longest time between two consecutive commits of stored tickets.
async fn longest_commit_pause(db: &PgPool) -> Duration {
    let seconds: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(at - previous))::float8
         FROM (SELECT at, lag(at) OVER (ORDER BY at) AS previous
               FROM (SELECT DISTINCT pg_xact_commit_timestamp(xmin) AS at FROM tickets) commits) pauses",
    )
    .fetch_one(db)
    .await
    .expect("commit pauses");
    Duration::from_secs_f64(seconds.unwrap_or(0.0))
}

/// Waits until the service has committed on node `index` since it was
/// promoted: its count of tickets grows past the one read first.
async fn wait_for_a_commit_on(db: &PgPool, deadline: Instant) {
    let first: i64 = sqlx::query_scalar("SELECT count(*) FROM tickets").fetch_one(db).await.expect("count");
    loop {
        let now: i64 = sqlx::query_scalar("SELECT count(*) FROM tickets").fetch_one(db).await.expect("count");
        if now > first {
            return;
        }
        assert!(Instant::now() < deadline, "the service wrote nothing to the new leader ({now} tickets)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The checks of every run on the leader at the end: each ticket answered
/// `202` stored once under its id, one key per ticket, the catalogue equal
/// to the stored lines.
async fn assert_nothing_lost(db: &PgPool, outcome: &LoadOutcome) {
    assert!(outcome.unexpected.is_empty(), "unexpected answers: {:?}", outcome.unexpected);
    assert_every_acknowledged_ticket_stored_once(db, outcome).await;
    assert_one_key_per_acknowledged_ticket(db, outcome).await;
    let mismatches = catalogue_mismatches(db).await;
    assert!(mismatches.is_empty(), "products.times_seen against the stored lines: {mismatches:?}");
}

/// What a run saw.
struct Run {
    accepted: usize,
    stored: i64,
    /// From the event (kill, switchover) to the new leader's `/primary`.
    new_leader_after: Duration,
    /// From the kill to the first ticket committed after it (on the new
    /// leader: the old one is gone).
    first_commit_after: Option<Duration>,
    longest_commit_pause: Duration,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} answered 202, {} stored, 0 missing; new leader after {:.2} s",
            self.accepted,
            self.stored,
            self.new_leader_after.as_secs_f64()
        )?;
        if let Some(first_commit_after) = self.first_commit_after {
            write!(f, ", first commit on it {:.2} s after the kill", first_commit_after.as_secs_f64())?;
        }
        write!(f, ", longest pause between commits {:.2} s", self.longest_commit_pause.as_secs_f64())
    }
}

/// Load on a service reaching the cluster through `database_url`; the
/// leader killed (host loss); Patroni promotes the synchronous standby
/// after the leader lock's TTL; the load runs on until the service has
/// written to the new leader, and two seconds more.
async fn kill_the_leader_under_load(cluster: &mut PatroniCluster, database_url: &str) -> Run {
    let service = ServiceProcess::start(database_url, &temp_dir("wal"), AckMode::Wal, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_keyed_load(service.address.clone(), 20, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let leader = cluster.wait_for_leader(&[0, 1, 2], Instant::now()).await;

    cluster.kill(leader);
    let (killed, killed_at) = (Instant::now(), SystemTime::now());
    let survivors: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
    let new_leader = cluster.wait_for_leader(&survivors, killed + Duration::from_secs(TTL_S + 20)).await;
    let new_leader_after = killed.elapsed();
    let db = PgPool::connect(&cluster.url(new_leader, "tickets")).await.expect("new leader");
    wait_for_a_commit_on(&db, Instant::now() + Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let outcome = load.await.expect("load");

    assert_nothing_lost(&db, &outcome).await;
    let first_commit_after = first_commit_after(&db, killed_at).await;
    assert!(first_commit_after.is_some(), "a ticket committed on the new leader after the kill");
    // The survivor left is the new synchronous standby: commits wait for
    // a copy again.
    let sync = cluster.sync_standby().await;
    assert!(survivors.contains(&sync) && sync != new_leader, "node{sync} is the synchronous standby");
    drop(service);
    Run {
        accepted: outcome.accepted.len(),
        stored: crate::helpers::count(&db, "tickets").await,
        new_leader_after,
        first_commit_after,
        longest_commit_pause: longest_commit_pause(&db).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_patroni_leader_under_load_loses_no_acknowledged_ticket_and_the_host_list_follows_the_promoted_standby(
) {
    let mut cluster = PatroniCluster::start().await;
    let url = cluster.host_list_url();

    let run = kill_the_leader_under_load(&mut cluster, &url).await;

    eprintln!("patroni, leader killed, host list: {run}");
}

/// HAProxy with the shipped configuration for Patroni, on `port`, in
/// front of the cluster's nodes.
fn start_haproxy_for(cluster: &PatroniCluster, port: u16) -> Haproxy {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/haproxy/patroni.cfg"))
        .expect("docker/haproxy/patroni.cfg");
    let mut config = shipped.replace("bind *:5432", &format!("bind 127.0.0.1:{port}"));
    for (index, node) in cluster.nodes.iter().enumerate() {
        config = config.replace(
            &format!("pg-{}:5432 check port 8008", index + 1),
            &format!("127.0.0.1:{} check port {}", node.pg_port, node.api_port),
        );
    }
    assert!(
        !config.contains("check port 8008"),
        "every server of docker/haproxy/patroni.cfg mapped to a node:\n{config}"
    );
    Haproxy::run(&config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_patroni_leader_under_load_loses_no_acknowledged_ticket_through_haproxy_checking_the_primary_endpoint(
) {
    let mut cluster = PatroniCluster::start().await;
    let port = free_port();
    let _haproxy = start_haproxy_for(&cluster, port);
    let url = format!("postgres://postgres@127.0.0.1:{port}/tickets");
    let deadline = Instant::now() + Duration::from_secs(10);
    while PgConnection::connect(&url).await.is_err() {
        assert!(Instant::now() < deadline, "no connection through HAProxy within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let run = kill_the_leader_under_load(&mut cluster, &url).await;

    eprintln!("patroni, leader killed, HAProxy /primary: {run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patronictl_switchover_under_load_loses_no_acknowledged_ticket() {
    let cluster = PatroniCluster::start().await;
    let service = ServiceProcess::start(&cluster.host_list_url(), &temp_dir("wal"), AckMode::Wal, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_keyed_load(service.address.clone(), 20, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let leader = cluster.wait_for_leader(&[0, 1, 2], Instant::now()).await;
    let candidate = cluster.sync_standby().await;

    let switched = Instant::now();
    cluster.switchover(leader, candidate);
    cluster.wait_for_leader(&[candidate], switched + Duration::from_secs(30)).await;
    let new_leader_after = switched.elapsed();
    let db = PgPool::connect(&cluster.url(candidate, "tickets")).await.expect("new leader");
    wait_for_a_commit_on(&db, Instant::now() + Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let outcome = load.await.expect("load");

    assert_nothing_lost(&db, &outcome).await;
    let run = Run {
        accepted: outcome.accepted.len(),
        stored: crate::helpers::count(&db, "tickets").await,
        new_leader_after,
        first_commit_after: None,
        longest_commit_pause: longest_commit_pause(&db).await,
    };
    eprintln!("patroni, switchover node{leader} -> node{candidate}, host list: {run}");
    drop(service);
}
