//! Test harness: the real service against a real PostgreSQL, a fresh
//! database per test.
//!
//! `scripts/test.sh` starts a throwaway cluster and exports
//! `TEST_DATABASE_URL`; each test creates its own database in it.
//!
//! The schema matrix: with `TEST_SCHEMA=partitioned` every fresh database
//! is migrated and partitioned ([`fresh_database`]) before the test uses
//! it, so each test runs against partitioned `tickets` and `ticket_lines`
//! (`scripts/test.sh` runs the API tests once on each schema). A test that
//! needs a particular schema starts from [`empty_database`].

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};
use ticket_ingest::config::{AckMode, AdminTokens, Settings};
use ticket_ingest::database_url::DatabaseUrl;
use ticket_ingest::signature::Secret;
use ticket_ingest::startup::Application;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

pub const SAMPLE_TICKET: &str =
    "Order: 123456\nVAT: 3.10\nTotal: 16.90\n\nproduct,product_id,price\nFormule(s) midi,aZde,14.90\nCafé,IZ8z,2\n";

pub fn test_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .expect("TEST_DATABASE_URL is not set: run the tests with scripts/test.sh, which starts a throwaway PostgreSQL")
}

/// The schema the API tests run on: `TEST_SCHEMA`, `plain` (the default)
/// or `partitioned`.
pub fn partitioned_schema() -> bool {
    match std::env::var("TEST_SCHEMA").as_deref() {
        Ok("partitioned") => true,
        Ok("plain") | Ok("") | Err(_) => false,
        Ok(other) => panic!("TEST_SCHEMA={other}: plain or partitioned"),
    }
}

/// A database for a test: empty on the plain schema (the service applies
/// the migrations), migrated and partitioned with `TEST_SCHEMA=partitioned`.
pub async fn fresh_database() -> String {
    let url = empty_database().await;
    if partitioned_schema() {
        partition_database(&url).await;
    }
    url
}

/// Applies the migrations and partitions `tickets` and `ticket_lines`, as
/// `ticket-ingest migrate --partitioned` does.
pub async fn partition_database(url: &str) {
    let pool = PgPool::connect(url).await.expect("connect to the test database");
    ticket_ingest::store::migrate(&pool).await.expect("migrations");
    pool.close().await;
    let mut connection = PgConnection::connect(url).await.expect("connect to the test database");
    let pace = ticket_ingest::partition::Pace { batch_size: 1000, max_batches: None };
    ticket_ingest::partition::convert(&mut connection, &Settings::default().partition_layout(), pace, |_| {})
        .await
        .expect("partition the test database (pg_partman: postgresql-15-partman)");
}

/// Creates an empty database, whatever `TEST_SCHEMA` says, and returns its
/// URL.
pub async fn empty_database() -> String {
    let admin_url = test_database_url();
    let name = format!("test_{}", Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(&admin_url).await.expect("connect to TEST_DATABASE_URL");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create test database");
    let (base, _) = admin_url.rsplit_once('/').expect("database URL has a path");
    format!("{base}/{name}")
}

pub fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ticket-ingest-{label}-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// `text` as `database_url` takes it.
pub fn parsed_url(text: &str) -> DatabaseUrl {
    DatabaseUrl::parse(text).expect("a valid database URL")
}

/// `entries` as `admin_tokens` takes them.
pub fn admin_tokens(entries: &[String]) -> AdminTokens {
    AdminTokens::parse(entries).expect("valid admin tokens")
}

/// `secrets` as `signing_secrets` takes them.
pub fn signing_secrets(secrets: &[&str]) -> Vec<Secret> {
    secrets.iter().map(|secret| Secret::parse(secret).expect("a valid signing secret")).collect()
}

/// Settings for a test: fresh database, port 0, private WAL directory.
pub async fn test_settings() -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().expect("address"),
        database_url: Some(parsed_url(&fresh_database().await)),
        wal_dir: temp_dir("wal"),
        log_level: "warn".to_string(),
        // Started only by the tests that give it tokens.
        admin_listen: Some("127.0.0.1:0".parse().expect("address")),
        ..Settings::default()
    }
}

/// The service running in this process.
pub struct TestApp {
    pub address: String,
    /// The review desk's base URL, when it runs (`admin_tokens` given).
    pub admin_address: Option<String>,
    pub database_url: String,
    pub db: PgPool,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings().await;
    configure(&mut settings);
    spawn_app_from(settings).await
}

pub async fn spawn_app_from(settings: Settings) -> TestApp {
    let database_url = settings.database_url.as_ref().expect("test settings have a database").as_str().to_string();
    let application = Application::build(settings).await.expect("application builds");
    let address = format!("http://127.0.0.1:{}", application.port());
    let admin_address = application.console_port().map(|port| format!("http://127.0.0.1:{port}"));
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let db = PgPool::connect(&database_url).await.expect("test pool");
    TestApp {
        address,
        admin_address,
        database_url,
        db,
        client: reqwest::Client::new(),
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

impl TestApp {
    pub async fn post_ticket(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client.post(format!("{}/ticket", self.address)).body(body).send().await.expect("request sent")
    }

    pub async fn post_ticket_with_header(
        &self,
        body: impl Into<reqwest::Body>,
        name: &str,
        value: &str,
    ) -> reqwest::Response {
        self.client
            .post(format!("{}/ticket", self.address))
            .header(name, value)
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.address)).send().await.expect("request sent")
    }

    pub async fn count(&self, table: &str) -> i64 {
        count(&self.db, table).await
    }

    pub async fn wait_for_count(&self, table: &str, expected: i64) {
        wait_for_count(&self.db, table, expected, Duration::from_secs(20)).await;
    }

    /// Starts posting `body` with an `Idempotency-Key` in a task of its own.
    pub fn spawn_post_with_key(&self, body: &str, key: &str) -> JoinHandle<reqwest::Response> {
        let request =
            self.client.post(format!("{}/ticket", self.address)).header("Idempotency-Key", key).body(body.to_string());
        tokio::spawn(async move { request.send().await.expect("request sent") })
    }

    /// Fires the shutdown and waits until every accepted ticket is committed.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("clean shutdown");
        }
    }
}

/// Holds `LOCK TABLE tickets` in an open transaction, so that every write
/// of the writers waits, until [`TicketsLocked::release`].
pub struct TicketsLocked {
    connection: PgConnection,
}

impl TicketsLocked {
    pub async fn take(database_url: &str) -> TicketsLocked {
        let mut connection = PgConnection::connect(database_url).await.expect("locker connection");
        sqlx::Executor::execute(&mut connection, "BEGIN; LOCK TABLE tickets IN ACCESS EXCLUSIVE MODE")
            .await
            .expect("lock tickets");
        TicketsLocked { connection }
    }

    pub async fn release(mut self) {
        sqlx::Executor::execute(&mut self.connection, "ROLLBACK").await.expect("unlock tickets");
    }
}

/// An answer read off the wire.
pub struct RawAnswer {
    pub status: u16,
    /// The status line and the header fields, as sent.
    pub head: String,
    pub body: Vec<u8>,
}

/// Writes `request` as is on a fresh connection, for the requests a client
/// library will not send (odd framing, a malformed head), and reads until
/// the service closes the connection (the request should say
/// `Connection: close`) or 5 s pass. An error while reading (a reset after
/// a refusal) ends the answer where it is.
pub async fn raw_request(address: &str, request: &[u8]) -> RawAnswer {
    let host = address.trim_start_matches("http://");
    let stream = TcpStream::connect(host).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    // Written while the answer is read: the service may answer and close
    // before it has read a large request whole.
    let request = request.to_vec();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, reader.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(read)) => answer.extend_from_slice(&chunk[..read]),
        }
    }
    writing.abort();
    let split = answer.windows(4).position(|window| window == b"\r\n\r\n").map_or(answer.len(), |at| at + 4);
    let head = String::from_utf8_lossy(&answer[..split]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    RawAnswer { status, head, body: answer[split..].to_vec() }
}

pub async fn count(db: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(db).await.expect("count query")
}

pub async fn wait_for_count(db: &PgPool, table: &str, expected: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let current = count(db, table).await;
        if current == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{table}: {current} rows, expected {expected}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `product_history` row: product id, name, price, first seen, last
/// seen, times seen.
pub type HistoryRow = (String, String, rust_decimal::Decimal, time::OffsetDateTime, time::OffsetDateTime, i64);

/// `product_history`, in key order.
pub async fn history(db: &PgPool) -> Vec<HistoryRow> {
    sqlx::query_as(
        "SELECT product_id, name, price, first_seen_at, last_seen_at, times_seen
         FROM product_history ORDER BY product_id, name, price",
    )
    .fetch_all(db)
    .await
    .expect("product history")
}

/// What `product_history` must hold for the lines stored: the writers'
/// rows, recomputed from `ticket_lines` (names cut as the writers cut them).
pub async fn history_of_stored_lines(db: &PgPool) -> Vec<HistoryRow> {
    sqlx::query_as(
        "SELECT product_id, left(name, 200) AS name, price, min(received_at), max(received_at), count(*)
         FROM ticket_lines GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .fetch_all(db)
    .await
    .expect("history of the stored lines")
}

/// A ticket whose order number tells it apart from every other one.
pub fn numbered_ticket(order: u64) -> String {
    format!("Order: {order}\nVAT: 0.30\nTotal: 3.00\n\nproduct,product_id,price\nCafé,IZ8z,2\nCroissant,CR01,1.00\n")
}

/// The real binary as a child process.
pub struct ServiceProcess {
    pub child: Child,
    pub address: String,
    /// Where its standard error (the log) goes.
    pub log: PathBuf,
}

/// The child's log, kept in a temp directory for post-mortems and tests.
fn log_file() -> (Stdio, PathBuf) {
    let path = temp_dir("log").join("ticket-ingest.log");
    match std::fs::File::create(&path) {
        Ok(file) => (Stdio::from(file), path),
        Err(_) => (Stdio::null(), path),
    }
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local address").port()
}

impl ServiceProcess {
    /// Starts `ticket-ingest serve` and waits until `/healthz` answers.
    pub async fn start(
        database_url: &str,
        wal_dir: &std::path::Path,
        ack: AckMode,
        extra_env: &[(&str, &str)],
    ) -> Self {
        Self::start_with_config(database_url, wal_dir, ack, extra_env, std::path::Path::new("/dev/null")).await
    }

    /// Like [`ServiceProcess::start`], reading `config` as its config file.
    pub async fn start_with_config(
        database_url: &str,
        wal_dir: &std::path::Path,
        ack: AckMode,
        extra_env: &[(&str, &str)],
        config: &std::path::Path,
    ) -> Self {
        let listen = extra_env
            .iter()
            .find(|(key, _)| *key == "TICKET_INGEST_LISTEN")
            .map(|(_, value)| value.to_string())
            .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
        let ack = match ack {
            AckMode::Wal => "wal",
            AckMode::Commit => "commit",
            AckMode::Memory => "memory",
        };
        let (stderr, log) = log_file();
        let mut command = Command::new(env!("CARGO_BIN_EXE_ticket-ingest"));
        command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("TICKET_INGEST_DATABASE_URL", database_url)
            .env("TICKET_INGEST_LISTEN", &listen)
            .env("TICKET_INGEST_ACK", ack)
            .env("TICKET_INGEST_WAL_DIR", wal_dir)
            .env("TICKET_INGEST_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start ticket-ingest");
        let process = ServiceProcess { child, address: format!("http://{listen}"), log };
        process.wait_until_healthy().await;
        process
    }

    async fn wait_until_healthy(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = client.get(format!("{}/healthz", self.address)).send().await {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "ticket-ingest did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(status.expect("kill runs").success(), "kill -{signal} failed");
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "ticket-ingest did not exit within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a load run saw.
#[derive(Default, Debug)]
pub struct LoadOutcome {
    /// Order numbers answered 202.
    pub accepted: Vec<u64>,
    /// The ticket id each of them was answered with.
    pub ids: Vec<Uuid>,
    /// Answers 503.
    pub refused: u64,
    /// Requests that got no answer (connection refused or reset).
    pub failed: u64,
    /// Any other status: must stay empty.
    pub unexpected: Vec<u16>,
}

/// Posts numbered tickets from `clients` concurrent clients until `stop` is
/// set or `max_requests` were sent. Order numbers start at `first_order`.
/// A refused or failed order is given up, and the next one posted.
pub async fn run_load(
    address: String,
    clients: usize,
    max_requests: u64,
    first_order: u64,
    stop: Arc<AtomicBool>,
) -> LoadOutcome {
    load(address, clients, max_requests, first_order, stop, false).await
}

/// As [`run_load`], as a careful producer posts: each order with
/// `Idempotency-Key: order-N`, and a refused or failed order retried with
/// the same key until it is answered 202 (or `stop` is set).
pub async fn run_keyed_load(address: String, clients: usize, stop: Arc<AtomicBool>) -> LoadOutcome {
    load(address, clients, u64::MAX - 1, 1, stop, true).await
}

async fn load(
    address: String,
    clients: usize,
    max_requests: u64,
    first_order: u64,
    stop: Arc<AtomicBool>,
    keyed: bool,
) -> LoadOutcome {
    let next = Arc::new(AtomicU64::new(first_order));
    let last = first_order.saturating_add(max_requests);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, address, next, stop) = (client.clone(), address.clone(), Arc::clone(&next), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut outcome = LoadOutcome::default();
            let mut retrying = None;
            while !stop.load(Ordering::Relaxed) {
                let order = match retrying.take() {
                    Some(order) => order,
                    None => next.fetch_add(1, Ordering::Relaxed),
                };
                if order >= last {
                    break;
                }
                let mut request = client.post(format!("{address}/ticket")).body(numbered_ticket(order));
                if keyed {
                    request = request.header("Idempotency-Key", format!("order-{order}"));
                }
                match request.send().await {
                    Ok(response) if response.status() == 202 => {
                        let answer: serde_json::Value = response.json().await.expect("202 body");
                        let id = answer["id"].as_str().and_then(|id| id.parse().ok()).expect("202 carries an id");
                        outcome.accepted.push(order);
                        outcome.ids.push(id);
                    }
                    Ok(response) if response.status() == 503 => {
                        outcome.refused += 1;
                        retrying = keyed.then_some(order);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok(response) => outcome.unexpected.push(response.status().as_u16()),
                    Err(_) => {
                        outcome.failed += 1;
                        retrying = keyed.then_some(order);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            outcome
        }));
    }
    let mut total = LoadOutcome::default();
    for task in tasks {
        let outcome = task.await.expect("load task");
        total.accepted.extend(outcome.accepted);
        total.ids.extend(outcome.ids);
        total.refused += outcome.refused;
        total.failed += outcome.failed;
        total.unexpected.extend(outcome.unexpected);
    }
    total
}

/// Asserts that every ticket answered 202 is stored under the id it was
/// answered with, and that no order at all is stored twice.
pub async fn assert_every_acknowledged_ticket_stored_once(db: &PgPool, outcome: &LoadOutcome) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let orders: Vec<String> = outcome.accepted.iter().map(u64::to_string).collect();
    loop {
        let missing: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM unnest($1::text[], $2::uuid[]) AS a(order_id, id)
             WHERE NOT EXISTS (SELECT 1 FROM tickets t WHERE t.id = a.id AND t.order_id = a.order_id)",
        )
        .bind(&orders)
        .bind(&outcome.ids)
        .fetch_one(db)
        .await
        .expect("missing query");
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged tickets are not stored under the id they were answered with",
            orders.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let duplicated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT order_id FROM tickets GROUP BY order_id HAVING count(*) > 1) d",
    )
    .fetch_one(db)
    .await
    .expect("duplicate query");
    assert_eq!(duplicated, 0, "tickets stored twice");
}

/// A TCP proxy between the service and PostgreSQL that a test can cut
/// (every connection dropped, new ones refused) and restore.
pub struct DbProxy {
    pub port: u16,
    state: watch::Sender<ProxyState>,
}

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyState {
    Up,
    /// Every connection dropped, new ones refused.
    Cut,
    /// Connections held open, nothing forwarded either way: a database
    /// that stopped answering without refusing (a network partition).
    Stalled,
}

impl DbProxy {
    pub async fn start(database_url: &str) -> DbProxy {
        let upstream = upstream_address(database_url);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (state, state_watch) = watch::channel(ProxyState::Up);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let now = *state_watch.borrow();
                match now {
                    ProxyState::Cut => continue,
                    ProxyState::Stalled => {
                        tokio::spawn(async move {
                            let _held = inbound;
                            std::future::pending::<()>().await;
                        });
                        continue;
                    }
                    ProxyState::Up => {}
                }
                let upstream = upstream.clone();
                let mut state_watch = state_watch.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else { return };
                    let changed = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                        changed = state_watch.wait_for(|state| *state != ProxyState::Up) => changed.map(|state| *state),
                    };
                    if matches!(changed, Ok(ProxyState::Stalled)) {
                        let _held = (inbound, outbound);
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        DbProxy { port, state }
    }

    /// The database URL that goes through the proxy.
    pub fn url(&self, database_url: &str) -> String {
        let upstream = upstream_address(database_url);
        database_url.replacen(&upstream, &format!("127.0.0.1:{}", self.port), 1)
    }

    pub fn cut(&self) {
        let _ = self.state.send(ProxyState::Cut);
    }

    /// Stops forwarding, keeping every connection open.
    pub fn stall(&self) {
        let _ = self.state.send(ProxyState::Stalled);
    }

    pub fn restore(&self) {
        let _ = self.state.send(ProxyState::Up);
    }
}

fn upstream_address(database_url: &str) -> String {
    let after_at = database_url.split_once('@').map_or(database_url, |(_, rest)| rest);
    after_at.split('/').next().expect("host:port").to_string()
}
