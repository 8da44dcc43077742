//! Two instances behind HAProxy, one PostgreSQL: an instance killed and
//! restarted mid-load loses no acknowledged ticket; a key's requests meet
//! on one instance, so a key posted twice at once is stored once.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ticket_ingest::config::AckMode;

use crate::helpers::{
    assert_every_acknowledged_ticket_stored_once, free_port, fresh_database, numbered_ticket, run_load, temp_dir,
    LoadOutcome, ServiceProcess,
};

/// An HAProxy process, killed on drop.
pub(crate) struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HAProxy with the shipped configuration, pointed at local instances.
fn start_haproxy(port: u16, instances: &[&str]) -> Haproxy {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/haproxy/haproxy.cfg"))
        .expect("docker/haproxy/haproxy.cfg");
    let config = shipped
        .replace("bind *:9098", &format!("bind 127.0.0.1:{port}"))
        .replace("ticket-ingest-1:9098", instances[0])
        .replace("ticket-ingest-2:9098", instances[1]);
    Haproxy::run(&config)
}

impl Haproxy {
    /// HAProxy in the foreground on `config`, written to a file of its own.
    pub(crate) fn run(config: &str) -> Haproxy {
        let path = temp_dir("haproxy").join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is installed (scripts/test.sh installs Debian's haproxy)");
        Haproxy(child)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_and_restarting_one_of_two_instances_behind_haproxy_loses_no_acknowledged_ticket() {
    let database_url = fresh_database().await;
    let (first, second) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let first_wal = temp_dir("wal");
    let mut one =
        ServiceProcess::start(&database_url, &first_wal, AckMode::Wal, &[("TICKET_INGEST_LISTEN", &first)]).await;
    let two =
        ServiceProcess::start(&database_url, &temp_dir("wal"), AckMode::Wal, &[("TICKET_INGEST_LISTEN", &second)])
            .await;
    let proxy_port = free_port();
    let _haproxy = start_haproxy(proxy_port, &[&first, &second]);
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    for _ in 0..100 {
        if reqwest::get(format!("{proxy}/ping")).await.is_ok_and(|response| response.status() == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(proxy.clone(), 20, 4_000, 1, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(500)).await;

    one.signal("KILL");
    let _ = one.wait_exit(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let restarted =
        ServiceProcess::start(&database_url, &first_wal, AckMode::Wal, &[("TICKET_INGEST_LISTEN", &first)]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let outcome = load.await.expect("load");

    // A request in flight to the killed instance gets 502 from the proxy:
    // not acknowledged, so the producer retries it.
    assert!(outcome.unexpected.iter().all(|status| *status == 502), "unexpected answers: {:?}", outcome.unexpected);
    assert!(
        outcome.accepted.len() > 100,
        "the load went through the proxy: {} accepted, {} refused, {} failed",
        outcome.accepted.len(),
        outcome.refused,
        outcome.failed
    );
    let db = sqlx::PgPool::connect(&database_url).await.expect("pool");
    assert_every_acknowledged_ticket_stored_once(&db, &outcome).await;
    drop((two, restarted));
}

/// Two instances on one database, each on a port and with a log of its
/// own.
async fn two_instances(database_url: &str) -> [(ServiceProcess, std::path::PathBuf); 2] {
    let mut instances = Vec::new();
    for _ in 0..2 {
        let (listen, wal) = (format!("127.0.0.1:{}", free_port()), temp_dir("wal"));
        let service =
            ServiceProcess::start(database_url, &wal, AckMode::Wal, &[("TICKET_INGEST_LISTEN", &listen)]).await;
        instances.push((service, wal));
    }
    let second = instances.pop().expect("two");
    [instances.pop().expect("two"), second]
}

/// The header a producer names its key with: `Idempotency-Key` for even
/// orders, the Standard Webhooks `webhook-id` for odd ones.
fn key_header(order: u64) -> (&'static str, String) {
    if order % 2 == 0 {
        ("Idempotency-Key", format!("key-{order}"))
    } else {
        ("webhook-id", format!("msg_{order}"))
    }
}

/// Posts ticket `order` with its key to `addresses[0]` and `addresses[1]`
/// at the same instant; the ids of the answers that were 202.
async fn post_twice_at_once(
    client: &reqwest::Client,
    addresses: [&str; 2],
    order: u64,
) -> (Option<uuid::Uuid>, Option<uuid::Uuid>) {
    let post = |address: &str| {
        let (name, value) = key_header(order);
        let request = client.post(format!("{address}/ticket")).header(name, value).body(numbered_ticket(order));
        async move {
            let response = request.send().await.ok()?;
            if response.status() != 202 {
                return None;
            }
            let answer: serde_json::Value = response.json().await.ok()?;
            answer["id"].as_str()?.parse().ok()
        }
    };
    tokio::join!(post(addresses[0]), post(addresses[1]))
}

/// Every order in `orders` posted twice at once, 50 orders at a time.
async fn post_each_twice_at_once(
    addresses: [&str; 2],
    orders: std::ops::Range<u64>,
) -> Vec<(u64, [Option<uuid::Uuid>; 2])> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let mut answers = Vec::new();
    let orders: Vec<u64> = orders.collect();
    for chunk in orders.chunks(50) {
        let mut tasks = Vec::new();
        for &order in chunk {
            let (client, addresses) = (client.clone(), addresses.map(str::to_string));
            tasks.push(tokio::spawn(async move {
                let (first, second) = post_twice_at_once(&client, [&addresses[0], &addresses[1]], order).await;
                (order, [first, second])
            }));
        }
        for task in tasks {
            answers.push(task.await.expect("post task"));
        }
    }
    answers
}

/// How many of `orders` are stored more than once.
async fn stored_twice(db: &sqlx::PgPool, orders: std::ops::Range<u64>) -> i64 {
    let orders: Vec<String> = orders.map(|order| order.to_string()).collect();
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT order_id FROM tickets WHERE order_id = ANY($1) GROUP BY order_id HAVING count(*) > 1) d",
    )
    .bind(&orders)
    .fetch_one(db)
    .await
    .expect("stored twice")
}

async fn wait_until_routed(proxy: &str) {
    for _ in 0..100 {
        if reqwest::get(format!("{proxy}/ping")).await.is_ok_and(|response| response.status() == 200) {
            // Both servers' checks up (rise 2, 1 s apart).
            tokio::time::sleep(Duration::from_millis(2_500)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_posted_twice_at_once_through_haproxy_is_stored_once_and_both_answers_name_that_ticket() {
    let database_url = fresh_database().await;
    let [(one, _), (two, _)] = two_instances(&database_url).await;
    let proxy_port = free_port();
    let _haproxy = start_haproxy(
        proxy_port,
        &[one.address.trim_start_matches("http://"), two.address.trim_start_matches("http://")],
    );
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    wait_until_routed(&proxy).await;

    // 500 keys, half Idempotency-Key, half webhook-id, each posted twice
    // at the same instant through the balancer.
    let answers = post_each_twice_at_once([&proxy, &proxy], 1..501).await;

    let db = sqlx::PgPool::connect(&database_url).await.expect("pool");
    let mut outcome = LoadOutcome::default();
    let mut differing = Vec::new();
    for (order, ids) in &answers {
        let [Some(first), Some(second)] = ids else { panic!("order {order}: both posts answered 202: {ids:?}") };
        if first != second {
            differing.push(*order);
        }
        outcome.accepted.extend([*order, *order]);
        outcome.ids.extend([*first, *second]);
    }
    assert!(
        differing.is_empty(),
        "{} of 500 keys got two ids: {:?}",
        differing.len(),
        &differing[..differing.len().min(10)]
    );
    // Every id answered is stored under it, and no order twice.
    assert_every_acknowledged_ticket_stored_once(&db, &outcome).await;
    drop((one, two));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_posted_to_two_instances_at_once_keeps_every_answer_stored_and_after_a_kill_9_repeats_name_the_key_rows_ticket(
) {
    let database_url = fresh_database().await;
    let [(mut one, one_wal), (two, _)] = two_instances(&database_url).await;
    let addresses = [one.address.clone(), two.address.clone()];

    // Bypassing the balancer: the window the routing closes. Then the first
    // instance killed at once and restarted on its log.
    let answers = post_each_twice_at_once([&addresses[0], &addresses[1]], 1..501).await;
    one.signal("KILL");
    let _ = one.wait_exit(Duration::from_secs(10)).await;
    let listen = addresses[0].trim_start_matches("http://");
    let one = ServiceProcess::start(&database_url, &one_wal, AckMode::Wal, &[("TICKET_INGEST_LISTEN", listen)]).await;

    let db = sqlx::PgPool::connect(&database_url).await.expect("pool");
    let ids: Vec<uuid::Uuid> = answers.iter().flat_map(|(_, ids)| ids.iter().flatten().copied()).collect();
    assert_eq!(ids.len(), 1_000, "every post answered 202");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let missing: i64 =
            sqlx::query_scalar("SELECT count(*) FROM unnest($1::uuid[]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM tickets t WHERE t.id = a.id)")
                .bind(&ids)
                .fetch_one(&db)
                .await
                .expect("missing");
        if missing == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{missing} acknowledged ids are not stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let twice = stored_twice(&db, 1..501).await;

    // Once written, a repeat to either instance is answered with the
    // ticket the key row stands for.
    let again = post_each_twice_at_once([&addresses[0], &addresses[1]], 1..501).await;
    let keys: std::collections::HashMap<String, uuid::Uuid> =
        sqlx::query_as("SELECT key, ticket_id FROM idempotency_keys")
            .fetch_all(&db)
            .await
            .expect("keys")
            .into_iter()
            .collect();
    let mut not_the_key_row = 0;
    for (order, ids) in &again {
        let (_, key) = key_header(*order);
        for id in ids {
            assert!(id.is_some(), "order {order}: a repeat answered 202");
            not_the_key_row += usize::from(id.as_ref() != keys.get(&key));
        }
    }
    eprintln!("posted to two instances at once: {twice} of 500 keys stored twice; after a kill -9 and restart of one, {not_the_key_row} of 1000 repeats not answered with the key row's ticket");
    assert_eq!(not_the_key_row, 0, "repeats answered with another ticket than the key row's");
    assert_eq!(stored_twice(&db, 1..501).await, twice, "the repeats stored nothing");
    drop((one, two));
}
