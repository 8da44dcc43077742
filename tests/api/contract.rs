//! Every answer of the HTTP contract.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::helpers::{raw_request, spawn_app, spawn_app_with, SAMPLE_TICKET};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).expect("in-memory write");
    encoder.finish().expect("in-memory finish")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_is_answered_202_with_its_id_status_and_problems() {
    let app = spawn_app().await;

    let response = app.post_ticket(SAMPLE_TICKET).await;

    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.expect("json body");
    let id: uuid::Uuid = body["id"].as_str().expect("id").parse().expect("uuid");
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["problems"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_body_is_a_400_with_a_json_error_and_stores_nothing() {
    let app = spawn_app().await;

    let response = app.post_ticket("").await;

    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.expect("json body");
    assert!(body["error"].as_str().is_some_and(|message| message.contains("empty")));
    assert_eq!(app.count("tickets").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_a_413() {
    let app = spawn_app_with(|settings| settings.max_body_bytes = 1024).await;

    let response = app.post_ticket(vec![b'a'; 1025]).await;

    assert_eq!(response.status(), 413);
    assert_eq!(app.post_ticket(vec![b'a'; 1024]).await.status(), 202, "exactly the limit is accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_body_that_inflates_past_the_limit_is_a_413_not_inflated() {
    let app = spawn_app().await;
    let bomb = gzip(&vec![0u8; 8 * 1024 * 1024]);

    let response = app
        .client
        .post(format!("{}/ticket", app.address))
        .header("Content-Encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .expect("request sent");

    assert_eq!(response.status(), 413);
    assert_eq!(app.count("tickets").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_gzip_body_is_a_400() {
    let app = spawn_app().await;

    let response = app.post_ticket_with_header("not gzip", "Content-Encoding", "gzip").await;

    assert_eq!(response.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_content_encoding_is_a_415() {
    let app = spawn_app().await;

    let response = app.post_ticket_with_header(SAMPLE_TICKET, "Content-Encoding", "br").await;

    assert_eq!(response.status(), 415);
}

/// `POST /ticket` with `body` in one chunk under the given
/// `Transfer-Encoding` header line(s).
fn chunked_post(transfer_encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /ticket HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{transfer_encoding}\r\n{:x}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_other_than_chunked_is_a_501_with_a_json_error_and_stores_nothing() {
    let app = spawn_app().await;
    let compressed = gzip(SAMPLE_TICKET.as_bytes());

    let listed = raw_request(&app.address, &chunked_post("Transfer-Encoding: gzip, chunked\r\n", &compressed)).await;
    let repeated = raw_request(
        &app.address,
        &chunked_post("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", &compressed),
    )
    .await;

    for answer in [&listed, &repeated] {
        assert_eq!(answer.status, 501, "{}", answer.head);
        let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("json body");
        assert!(body["error"].as_str().is_some_and(|message| message.contains("Transfer-Encoding")), "{body}");
    }
    assert_eq!(app.count("tickets").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_alone_is_accepted_and_chunked_twice_is_a_400() {
    let app = spawn_app().await;

    let chunked =
        raw_request(&app.address, &chunked_post("Transfer-Encoding: chunked\r\n", SAMPLE_TICKET.as_bytes())).await;
    let twice =
        raw_request(&app.address, &chunked_post("Transfer-Encoding: chunked, chunked\r\n", SAMPLE_TICKET.as_bytes()))
            .await;

    assert_eq!(chunked.status, 202, "{}", chunked.head);
    assert_eq!(twice.status, 400, "{}", twice.head);
    app.wait_for_count("tickets", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_request_target_is_a_431_from_hyper_without_a_body() {
    let app = spawn_app().await;
    let request = format!(
        "POST /ticket?{} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        "a".repeat(1024 * 1024)
    );

    let answer = raw_request(&app.address, request.as_bytes()).await;

    assert_eq!(answer.status, 431, "{}", answer.head);
    assert!(answer.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_load_commands_scripts_ticket_txt_is_the_loadtest_sample_and_is_accepted_ok() {
    // `hey -m POST -D scripts/ticket.txt http://localhost:9098/ticket`
    let app = spawn_app().await;
    let old = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ticket.txt")).expect("scripts/ticket.txt");
    let sample =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/loadtest/ticket.txt")).expect("loadtest/ticket.txt");

    let response = app.post_ticket(old.clone()).await;

    assert_eq!(old, sample, "scripts/ticket.txt must stay the loadtest sample");
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.expect("json body");
    assert_eq!(body["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_answers_pong() {
    let app = spawn_app().await;

    let response = app.get("/ping").await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("text"), "Pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_are_200_when_the_database_answers() {
    let app = spawn_app().await;

    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_path_is_a_404_and_a_wrong_method_a_405_with_allow() {
    let app = spawn_app().await;

    let not_found = app.get("/nope").await;
    let wrong_method = app.get("/ticket").await;
    let post_ping = app.client.post(format!("{}/ping", app.address)).send().await.expect("sent");

    assert_eq!(not_found.status(), 404);
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["allow"], "POST");
    assert_eq!(post_ping.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_openmetrics_text_counting_requests_by_route_and_code() {
    let app = spawn_app().await;
    app.post_ticket(SAMPLE_TICKET).await;
    app.post_ticket("").await;
    app.get("/nope").await;

    let response = app
        .client
        .get(format!("{}/metrics", app.address))
        .header("Accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
        .send()
        .await
        .expect("sent");

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    let text = response.text().await.expect("text");
    assert!(text.contains(r#"ticket_ingest_requests_total{route="/ticket",code="202"} 1"#), "{text}");
    assert!(text.contains(r#"ticket_ingest_requests_total{route="/ticket",code="400"} 1"#), "{text}");
    assert!(text.contains(r#"ticket_ingest_requests_total{route="other",code="404"} 1"#), "{text}");
    assert!(text.contains(r#"ticket_ingest_tickets_accepted_total{status="ok"} 1"#), "{text}");
    for name in ["in_flight_capacity", "queue_depth", "batch_size", "flush_duration_seconds", "wal_bytes"] {
        assert!(text.contains(&format!("ticket_ingest_{name}")), "{name} missing");
    }
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_without_an_openmetrics_accept_header_pass_promtool_check_metrics() {
    let app = spawn_app().await;
    app.post_ticket(SAMPLE_TICKET).await;

    let response = app.get("/metrics").await;

    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = response.text().await.expect("text");
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test.sh installs Debian's prometheus package)");
    promtool.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write metrics");
    let output = promtool.wait_with_output().expect("promtool runs");
    let complaints = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool check metrics: {complaints}");
    assert!(text.contains("# TYPE ticket_ingest_requests_total counter"));
}
