//! Two instances behind HAProxy, one PostgreSQL: an instance killed and
//! restarted mid-load loses no acknowledged ticket.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ticket_ingest::config::AckMode;

use crate::helpers::{
    assert_every_acknowledged_ticket_stored_once, free_port, fresh_database, run_load, temp_dir, ServiceProcess,
};

struct Haproxy(Child);

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
