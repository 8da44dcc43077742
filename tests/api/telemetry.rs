//! The log: what is logged during a request carries its span's fields
//! (`method`, `route`, `status`, the ticket `id`), in the JSON format.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use ticket_ingest::config::AckMode;

use crate::console::ALICE_SECRET;
use crate::helpers::{free_port, fresh_database, temp_dir, ServiceProcess, SAMPLE_TICKET};

/// A directory removed when the test ends, also on panic.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The JSON log lines of `service` whose message is `message`, waiting
/// up to 10 s for the first.
async fn logged(service: &ServiceProcess, message: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = service.log_text();
        let lines: Vec<Value> = log
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["message"] == message)
            .collect();
        if !lines.is_empty() {
            return lines;
        }
        assert!(Instant::now() < deadline, "nothing logged as {message:?}:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A database URL nothing answers at.
fn unreachable_database_url() -> String {
    format!("postgres://postgres@127.0.0.1:{}/nowhere", free_port())
}

#[tokio::test]
async fn a_warning_logged_while_the_desk_answers_carries_the_route_and_the_status_of_its_request() {
    let database_url = fresh_database().await;
    let wal_dir = Scratch(temp_dir("wal"));
    let admin_listen = format!("127.0.0.1:{}", free_port());
    let read_database_url = unreachable_database_url();
    let service = ServiceProcess::start(
        &database_url,
        &wal_dir.0,
        AckMode::Wal,
        &[
            ("TICKET_INGEST_LOG_FORMAT", "json"),
            ("TICKET_INGEST_LOG_LEVEL", "info"),
            ("TICKET_INGEST_ADMIN_LISTEN", &admin_listen),
            ("TICKET_INGEST_ADMIN_TOKENS", &format!("alice:{ALICE_SECRET}")),
            // The desk's listings read from there: they fail, `503`.
            ("TICKET_INGEST_READ_DATABASE_URL", &read_database_url),
        ],
    )
    .await;

    let client = reqwest::Client::new();
    let response = client
        .get(format!("http://{admin_listen}/api/v1/tickets?status=ok"))
        .bearer_auth(ALICE_SECRET)
        .send()
        .await
        .expect("sent");
    let warnings = logged(&service, "console query: database unavailable").await;

    assert_eq!(response.status(), 503);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let warning = &warnings[0];
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["span"]["name"], "request", "{warning}");
    assert_eq!(warning["span"]["method"], "GET", "{warning}");
    assert_eq!(warning["span"]["route"], "/api/v1/tickets", "the route, not the path with its query: {warning}");
    assert_eq!(warning["span"]["status"], 503, "{warning}");
}

#[tokio::test]
async fn what_is_logged_while_a_ticket_is_received_names_its_route_and_its_id() {
    let wal_dir = Scratch(temp_dir("wal"));
    // The database does not answer: the ticket's key cannot be looked up
    // (logged at DEBUG), the ticket is accepted into the log all the same.
    let service = ServiceProcess::start(
        &unreachable_database_url(),
        &wal_dir.0,
        AckMode::Wal,
        &[("TICKET_INGEST_LOG_FORMAT", "json"), ("TICKET_INGEST_LOG_LEVEL", "info,ticket_ingest::http::ingest=debug")],
    )
    .await;

    let response = reqwest::Client::new()
        .post(format!("{}/ticket", service.address))
        .header("idempotency-key", "key-of-a-logged-ticket")
        .body(SAMPLE_TICKET)
        .send()
        .await
        .expect("sent");
    let status = response.status();
    let answer: Value = response.json().await.expect("JSON");
    let events = logged(&service, "idempotency key not looked up: the database did not answer").await;

    assert_eq!(status, 202, "{answer}");
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["span"]["name"], "request", "{event}");
    assert_eq!(event["span"]["method"], "POST", "{event}");
    assert_eq!(event["span"]["route"], "/ticket", "{event}");
    assert_eq!(event["span"]["id"], answer["id"], "the id the ticket was answered with: {event}");
}
