//! `openapi.yaml` stays true: every documented (path, method, status) is
//! produced by a real request here, and nothing undocumented is exercised.

use std::collections::BTreeSet;
use std::io::{Read, Write};

use sqlx::Connection;
use ticket_ingest::config::AckMode;

use crate::console::{spawn_desk, ALICE_SECRET};
use crate::helpers::{spawn_app_with, test_database_url, SAMPLE_TICKET};

/// `(path, method, status)` triples documented under `paths:`.
fn documented_responses() -> BTreeSet<(String, String, u16)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).expect("openapi.yaml");
    let mut found = BTreeSet::new();
    let (mut in_paths, mut path, mut method, mut in_responses) = (false, String::new(), String::new(), false);
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        match indent {
            0 => in_paths = trimmed == "paths:",
            2 if in_paths && trimmed.ends_with(':') => path = trimmed.trim_end_matches(':').to_string(),
            4 if in_paths && trimmed.ends_with(':') => {
                method = trimmed.trim_end_matches(':').to_string();
                in_responses = false;
            }
            6 if in_paths => in_responses = trimmed == "responses:",
            8 if in_paths && in_responses => {
                if let Ok(code) = trimmed.trim_end_matches(':').trim_matches('\'').parse::<u16>() {
                    found.insert((path.clone(), method.clone(), code));
                }
            }
            _ => {}
        }
    }
    found
}

fn triple(path: &str, method: &str, code: u16) -> (String, String, u16) {
    (path.to_string(), method.to_string(), code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_documented_in_openapi_yaml_is_what_the_service_answers() {
    let documented = documented_responses();
    let mut exercised = BTreeSet::new();
    let app = spawn_app_with(|settings| {
        settings.max_body_bytes = 1024;
        settings.body_read_timeout_ms = 300;
        settings.signing_secrets = Vec::new();
    })
    .await;
    let post = |body: Vec<u8>| app.client.post(format!("{}/ticket", app.address)).body(body);

    let checks: Vec<((String, String, u16), u16)> = vec![
        (triple("/ticket", "post", 202), post(SAMPLE_TICKET.into()).send().await.expect("sent").status().as_u16()),
        (triple("/ticket", "post", 400), post(Vec::new()).send().await.expect("sent").status().as_u16()),
        (triple("/ticket", "post", 413), post(vec![b'a'; 2048]).send().await.expect("sent").status().as_u16()),
        (
            triple("/ticket", "post", 415),
            post(SAMPLE_TICKET.into()).header("Content-Encoding", "br").send().await.expect("sent").status().as_u16(),
        ),
        (triple("/ticket", "get", 405), app.get("/ticket").await.status().as_u16()),
        (triple("/ping", "get", 200), app.get("/ping").await.status().as_u16()),
        (triple("/healthz", "get", 200), app.get("/healthz").await.status().as_u16()),
        (triple("/readyz", "get", 200), app.get("/readyz").await.status().as_u16()),
        (triple("/metrics", "get", 200), app.get("/metrics").await.status().as_u16()),
        (triple("/{other}", "get", 404), app.get("/anything-else").await.status().as_u16()),
        (triple("/ticket", "post", 408), slow_body_status(&app.address)),
    ];
    for (key, status) in checks {
        assert_eq!(status, key.2, "{key:?}");
        exercised.insert(key);
    }

    let signed = spawn_app_with(|settings| {
        settings.signing_secrets = vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string()];
    })
    .await;
    assert_eq!(signed.post_ticket(SAMPLE_TICKET).await.status(), 401);
    exercised.insert(triple("/ticket", "post", 401));

    let (full_post, full_ready) = exhausted_budget_statuses().await;
    assert_eq!((full_post, full_ready), (503, 503));
    exercised.insert(triple("/ticket", "post", 503));
    exercised.insert(triple("/readyz", "get", 503));

    exercised.extend(console_responses().await);

    assert_eq!(exercised, documented, "openapi.yaml and the service disagree");
}

/// Every response of the review desk, on its own listener.
async fn console_responses() -> Vec<(String, String, u16)> {
    let desk = spawn_desk().await;
    let id = desk.ingest(SAMPLE_TICKET).await;
    let unknown = uuid::Uuid::now_v7();
    let review = serde_json::json!({ "decision": "accepted" });
    let cookie = desk.log_in().await;
    let anonymous = |path: &str| desk.client.get(format!("{}{path}", desk.base)).send();
    let cookie_post = desk
        .client
        .post(format!("{}/api/v1/tickets/{id}/review", desk.base))
        .header("cookie", &cookie)
        .body(review.to_string())
        .send();

    let checks: Vec<((String, String, u16), u16)> = vec![
        (triple("/login", "get", 200), anonymous("/login").await.expect("sent").status().as_u16()),
        (
            triple("/login", "get", 303),
            anonymous(&format!("/login?token={ALICE_SECRET}")).await.expect("sent").status().as_u16(),
        ),
        (
            triple("/login", "get", 401),
            anonymous("/login?token=wrong-0123456789abcdef").await.expect("sent").status().as_u16(),
        ),
        (triple("/api/v1/session", "get", 200), desk.get("/api/v1/session").await.status().as_u16()),
        (triple("/api/v1/session", "get", 401), anonymous("/api/v1/session").await.expect("sent").status().as_u16()),
        (triple("/api/v1/tickets", "get", 200), desk.get("/api/v1/tickets?status=ok").await.status().as_u16()),
        (triple("/api/v1/tickets", "get", 400), desk.get("/api/v1/tickets?since=yesterday").await.status().as_u16()),
        (triple("/api/v1/tickets", "get", 401), anonymous("/api/v1/tickets").await.expect("sent").status().as_u16()),
        (
            triple("/api/v1/tickets/{id}", "get", 200),
            desk.get(&format!("/api/v1/tickets/{id}")).await.status().as_u16(),
        ),
        (
            triple("/api/v1/tickets/{id}", "get", 404),
            desk.get(&format!("/api/v1/tickets/{unknown}")).await.status().as_u16(),
        ),
        (
            triple("/api/v1/tickets/{id}/raw", "get", 200),
            desk.get(&format!("/api/v1/tickets/{id}/raw")).await.status().as_u16(),
        ),
        (
            triple("/api/v1/tickets/{id}/raw", "get", 404),
            desk.get(&format!("/api/v1/tickets/{unknown}/raw")).await.status().as_u16(),
        ),
        (
            triple("/api/v1/tickets/{id}/review", "post", 201),
            desk.post_json(&format!("/api/v1/tickets/{id}/review"), &review).await.status().as_u16(),
        ),
        (
            triple("/api/v1/tickets/{id}/review", "post", 400),
            desk.post(&format!("/api/v1/tickets/{id}/review"), "{}").await.status().as_u16(),
        ),
        (triple("/api/v1/tickets/{id}/review", "post", 403), cookie_post.await.expect("sent").status().as_u16()),
        (
            triple("/api/v1/tickets/{id}/review", "post", 404),
            desk.post_json(&format!("/api/v1/tickets/{unknown}/review"), &review).await.status().as_u16(),
        ),
        (
            triple("/api/v1/tickets/{id}/reprocess", "post", 200),
            desk.post(&format!("/api/v1/tickets/{id}/reprocess"), "").await.status().as_u16(),
        ),
        (
            triple("/api/v1/tickets/{id}/reprocess", "post", 404),
            desk.post(&format!("/api/v1/tickets/{unknown}/reprocess"), "").await.status().as_u16(),
        ),
        (
            triple("/api/v1/tickets/{id}/correction", "post", 201),
            desk.post(&format!("/api/v1/tickets/{id}/correction"), SAMPLE_TICKET).await.status().as_u16(),
        ),
        (
            triple("/api/v1/tickets/{id}/correction", "post", 409),
            desk.post(&format!("/api/v1/tickets/{id}/correction"), SAMPLE_TICKET).await.status().as_u16(),
        ),
        (
            triple("/api/v1/tickets/{id}/correction", "post", 404),
            desk.post(&format!("/api/v1/tickets/{unknown}/correction"), SAMPLE_TICKET).await.status().as_u16(),
        ),
        (triple("/api/v1/products", "get", 200), desk.get("/api/v1/products?q=caf").await.status().as_u16()),
        (triple("/api/v1/products", "get", 400), desk.get("/api/v1/products?limit=100000").await.status().as_u16()),
        (
            triple("/api/v1/products/{product_id}", "get", 200),
            desk.get("/api/v1/products/aZde").await.status().as_u16(),
        ),
        (
            triple("/api/v1/products/{product_id}", "get", 404),
            desk.get("/api/v1/products/none").await.status().as_u16(),
        ),
        (triple("/api/v1/stats", "get", 200), desk.get("/api/v1/stats?window=7d").await.status().as_u16()),
        (triple("/api/v1/stats", "get", 400), desk.get("/api/v1/stats?window=1y").await.status().as_u16()),
    ];
    let mut exercised = Vec::new();
    for (key, status) in checks {
        assert_eq!(status, key.2, "{key:?}");
        exercised.push(key);
    }
    exercised
}

/// Sends half a body and then waits: the body read timeout answers 408.
fn slow_body_status(address: &str) -> u16 {
    let host = address.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    let head = format!("POST /ticket HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100\r\n\r\nOrder: 1\n");
    stream.write_all(head.as_bytes()).expect("write");
    let mut answer = Vec::new();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

/// With the writers held back by a table lock and a budget of one ticket.
async fn exhausted_budget_statuses() -> (u16, u16) {
    let app = spawn_app_with(|settings| {
        settings.queue_capacity = 1;
        settings.ack = AckMode::Memory;
    })
    .await;
    let database: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&app.db).await.expect("name");
    let url = format!("{}/{database}", test_database_url().rsplit_once('/').expect("path").0);
    let mut blocker = sqlx::PgConnection::connect(&url).await.expect("connect");
    let mut transaction = blocker.begin().await.expect("begin");
    sqlx::query("LOCK TABLE tickets IN ACCESS EXCLUSIVE MODE").execute(&mut *transaction).await.expect("lock");
    assert_eq!(app.post_ticket(SAMPLE_TICKET).await.status(), 202);
    let post = app.post_ticket(SAMPLE_TICKET).await.status().as_u16();
    let ready = app.get("/readyz").await.status().as_u16();
    transaction.rollback().await.expect("unlock");
    (post, ready)
}
