//! Cheap floods do not starve the service: slow bodies, stalled bodies from
//! one address, unfinished request heads, too many connections.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{fresh_database, numbered_ticket, spawn_app_with, temp_dir, ServiceProcess, SAMPLE_TICKET};

/// Connects from `source` (any 127.x.y.z address works on loopback).
async fn connect_from(source: [u8; 4], target: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((source, 0))).expect("bind source address");
    socket.connect(target.parse().expect("target address")).await.expect("connect")
}

/// Sends a request head announcing `declared` body bytes, and `sent` of them.
async fn start_body(stream: &mut TcpStream, host: &str, declared: usize, sent: usize, gzip: bool) {
    let encoding = if gzip { "Content-Encoding: gzip\r\n" } else { "" };
    let head = format!("POST /ticket HTTP/1.1\r\nHost: {host}\r\n{encoding}Content-Length: {declared}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("head sent");
    stream.write_all(&vec![b'a'; sent]).await.expect("body start sent");
}

/// The status code of the first response on `stream`, if one comes in time.
async fn status_of(stream: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut answer = vec![0u8; 1024];
    let read = tokio::time::timeout(within, stream.read(&mut answer)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&answer[..read]);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_bodies_do_not_refuse_a_fast_client_and_are_cut_off_at_the_minimum_rate() {
    let app = spawn_app_with(|settings| {
        settings.queue_max_bytes = 1024 * 1024;
        settings.receive_max_bytes = 1024 * 1024;
    })
    .await;
    let host = app.address.trim_start_matches("http://").to_string();
    // Each announces 64 KiB, sends one byte, then stalls: 64 MiB announced,
    // 64 times both budgets, the same address as the fast client.
    let mut slow = Vec::new();
    for number in 0..1_000 {
        let mut stream = TcpStream::connect(&host).await.expect("connect");
        start_body(&mut stream, &host, 64 * 1024, 1, number % 2 == 0).await;
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let fast = app.post_ticket(SAMPLE_TICKET).await;
    let ready = app.get("/readyz").await;

    assert_eq!(fast.status(), 202, "a fast client is refused by slow ones: {:?}", fast.text().await);
    assert_eq!(ready.status(), 200);
    let started = Instant::now();
    let cut_off = status_of(&mut slow[0], Duration::from_secs(5)).await;
    assert_eq!(cut_off, Some(408), "a body trickling a byte is cut off once the grace is over");
    assert!(started.elapsed() < Duration::from_secs(3), "cut off after {:?}", started.elapsed());
    app.wait_for_count("tickets", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_stalling_large_bodies_cannot_take_the_reception_budget_from_others() {
    let app = spawn_app_with(|settings| {
        settings.receive_max_bytes = 1024 * 1024;
        settings.receive_max_bytes_per_peer = 256 * 1024;
    })
    .await;
    let host = app.address.trim_start_matches("http://").to_string();
    // 20 bodies of which 60 KiB arrive fast, then nothing: 1.2 MiB wanted.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut stream = connect_from([127, 0, 0, 2], &host).await;
        start_body(&mut stream, &host, 64 * 1024, 60 * 1024, false).await;
        stalled.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let other = app.post_ticket(numbered_ticket(1).repeat(200)).await;

    assert_eq!(other.status(), 202, "another address is refused: {:?}", other.text().await);
    let mut refused = 0;
    for stream in &mut stalled {
        if status_of(stream, Duration::from_millis(50)).await == Some(503) {
            refused += 1;
        }
    }
    assert!(refused >= 15, "the stalling address holds at most its share: {refused} of 20 refused");
}

/// Resident memory of a process, in bytes.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("VmRSS line");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|value| value.parse().ok()).expect("VmRSS value");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_unfinished_heads_stay_within_the_documented_memory_bound_and_the_service_answers_after() {
    let max_connections: u64 = 500;
    let max_head_bytes: u64 = 16 * 1024;
    let connections = max_connections.to_string();
    let head_bytes = max_head_bytes.to_string();
    let database_url = fresh_database().await;
    let env = [
        ("TICKET_INGEST_MAX_CONNECTIONS", connections.as_str()),
        ("TICKET_INGEST_MAX_HEAD_BYTES", head_bytes.as_str()),
        ("TICKET_INGEST_HEADER_READ_TIMEOUT_MS", "2000"),
    ];
    let service =
        ServiceProcess::start(&database_url, &temp_dir("wal"), ticket_ingest::config::AckMode::Wal, &env).await;
    let host = service.address.trim_start_matches("http://").to_string();
    let before = rss_of(service.child.id());

    // Heads that never end: a header line of 64 KiB and counting.
    let mut floods = Vec::new();
    for _ in 0..2_000 {
        let host = host.clone();
        floods.push(tokio::spawn(async move {
            let Ok(mut stream) = TcpStream::connect(&host).await else { return None };
            let head = format!("POST /ticket HTTP/1.1\r\nHost: {host}\r\nX-Pad: {}", "a".repeat(64 * 1024));
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(head.as_bytes())).await;
            Some(stream)
        }));
    }
    let mut open = Vec::new();
    for flood in floods {
        open.push(flood.await.expect("flood task"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rss_of(service.child.id());

    // docs/architecture.md: max_connections × (max_head_bytes + 16 KiB).
    let bound = max_connections * (max_head_bytes + 16 * 1024);
    let growth = during.saturating_sub(before);
    assert!(growth <= bound, "RSS grew by {} KiB, the bound is {} KiB", growth / 1024, bound / 1024);
    drop(open);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let after = client.post(format!("{}/ticket", service.address)).body(SAMPLE_TICKET).send().await.expect("answer");
    assert_eq!(after.status(), 202);
}
