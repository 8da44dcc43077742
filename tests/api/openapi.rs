//! `openapi.yaml` stays true: every documented (path, method, status) is
//! produced by a real request here, and nothing undocumented is exercised;
//! every documented path answers a method it does not list with 405 and an
//! `Allow` header naming the documented ones.

use std::collections::BTreeSet;
use std::io::{Read, Write};

use sqlx::Connection;
use ticket_ingest::config::AckMode;

use crate::console::{spawn_desk, ALICE_SECRET};
use crate::helpers::{raw_request, signing_secrets, spawn_app_with, test_database_url, SAMPLE_TICKET};

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
                // `'404':` or `'431': { $ref: ... }`
                let key = trimmed.split(':').next().unwrap_or_default();
                if let Ok(code) = key.trim_matches('\'').parse::<u16>() {
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

/// A request target for a documented path.
fn target(path: &str) -> &str {
    if path == "/{other}" {
        "/anything-else"
    } else {
        path
    }
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
            triple("/ticket", "post", 400),
            post(b"not gzip".to_vec()).header("Content-Encoding", "gzip").send().await.expect("sent").status().as_u16(),
        ),
        (
            triple("/ticket", "post", 415),
            post(SAMPLE_TICKET.into()).header("Content-Encoding", "br").send().await.expect("sent").status().as_u16(),
        ),
        (triple("/ticket", "post", 501), gzip_transfer_coding_status(&app.address).await),
        (triple("/ping", "get", 200), app.get("/ping").await.status().as_u16()),
        (triple("/healthz", "get", 200), app.get("/healthz").await.status().as_u16()),
        (triple("/readyz", "get", 200), app.get("/readyz").await.status().as_u16()),
        (triple("/metrics", "get", 200), app.get("/metrics").await.status().as_u16()),
        (triple("/{other}", "get", 404), app.get("/anything-else").await.status().as_u16()),
        (triple("/ticket", "post", 408), slow_body_status(&app.address)),
        (triple("/ticket", "post", 409), key_conflict_status(&app).await),
    ];
    for (key, status) in checks {
        assert_eq!(status, key.2, "{key:?}");
        exercised.insert(key);
    }
    exercised.extend(refusals_by_hyper(&app.address, &documented).await);

    let signed = spawn_app_with(|settings| {
        settings.signing_secrets = signing_secrets(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);
    })
    .await;
    assert_eq!(signed.post_ticket(SAMPLE_TICKET).await.status(), 401);
    exercised.insert(triple("/ticket", "post", 401));

    let (full_post, full_ready) = exhausted_budget_statuses().await;
    assert_eq!((full_post, full_ready), (503, 503));
    exercised.insert(triple("/ticket", "post", 503));
    exercised.insert(triple("/readyz", "get", 503));

    exercised.extend(console_responses().await);

    // The database refusing the service's role: /readyz meets it first.
    let refused = crate::readiness::OwnRole::start().await;
    refused.refuse().await;
    assert_eq!(refused.app.get("/readyz").await.status(), 503);
    assert_eq!(refused.app.get("/healthz").await.status(), 503);
    exercised.insert(triple("/healthz", "get", 503));
    refused.admit().await;

    assert_eq!(exercised, documented, "openapi.yaml and the service disagree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_not_documented_for_a_path_is_a_405_allowing_the_documented_ones() {
    let app = spawn_app_with(|_| {}).await;
    let mut methods: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (path, method, _) in documented_responses() {
        methods.entry(path).or_default().push(method.to_uppercase());
    }

    for (path, mut listed) in methods {
        if path == "/{other}" || is_console_path(&path) {
            continue; // no such route: 404 whatever the method; the desk is on its own listener
        }
        listed.dedup();
        if listed == ["GET"] {
            listed.push("HEAD".to_string());
        }
        for method in ["DELETE", "PUT", "PATCH", "OPTIONS", "GET", "POST"] {
            if listed.iter().any(|allowed| allowed == method) {
                continue;
            }
            let request = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let response = app.client.request(request, format!("{}{path}", app.address)).send().await.expect("sent");
            assert_eq!(response.status(), 405, "{method} {path}");
            assert_eq!(response.headers()["allow"], listed.join(", ").as_str(), "{method} {path}");
        }
    }
}

/// The review desk's paths, served on its own listener (`admin_listen`).
fn is_console_path(path: &str) -> bool {
    path.starts_with("/api/") || path == "/login"
}

/// `Transfer-Encoding: gzip, chunked`, which hyper passes on still gzipped.
async fn gzip_transfer_coding_status(address: &str) -> u16 {
    let request = "POST /ticket HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
                   Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    raw_request(address, request.as_bytes()).await.status
}

/// The answers hyper writes itself, without a body: 400 for a malformed
/// head (a control character, a bad Content-Length), 431 for too many
/// header fields, on every documented operation.
async fn refusals_by_hyper(
    address: &str,
    documented: &BTreeSet<(String, String, u16)>,
) -> BTreeSet<(String, String, u16)> {
    let operations: BTreeSet<(String, String)> = documented
        .iter()
        .filter(|(path, _, _)| !is_console_path(path))
        .map(|(path, method, _)| (path.clone(), method.clone()))
        .collect();
    let mut exercised = BTreeSet::new();
    for (path, method) in operations {
        let line =
            format!("{} {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n", method.to_uppercase(), target(&path));
        let control_character = format!("{line}X-Note: a\x01b\r\nContent-Length: 0\r\n\r\n");
        let bad_length = format!("{line}Content-Length: 1x\r\n\r\n");
        let many_headers = format!("{line}{}Content-Length: 0\r\n\r\n", "X-Filler: 1\r\n".repeat(100));
        for (request, code) in [(control_character, 400), (bad_length, 400), (many_headers, 431)] {
            let answer = raw_request(address, request.as_bytes()).await;
            assert_eq!(answer.status, code, "{method} {path}: {}", answer.head);
            assert!(answer.body.is_empty(), "{method} {path} {code} has a body");
            assert!(!answer.head.to_ascii_lowercase().contains("content-type"), "{}", answer.head);
            exercised.insert(triple(&path, &method, code));
        }
    }
    exercised
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

/// The same idempotency key with another body: 409.
async fn key_conflict_status(app: &crate::helpers::TestApp) -> u16 {
    let first = app.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "openapi-409").await;
    assert_eq!(first.status(), 202);
    let other = SAMPLE_TICKET.replace("123456", "654321");
    app.post_ticket_with_header(other, "Idempotency-Key", "openapi-409").await.status().as_u16()
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
