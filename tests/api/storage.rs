//! What lands in the database, byte for byte.

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use rust_decimal::Decimal;
use ticket_ingest::config::AckMode;
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with, SAMPLE_TICKET};

fn decimal(text: &str) -> Decimal {
    text.parse().expect("decimal literal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_ticket_lands_with_its_lines_and_products() {
    let app = spawn_app().await;

    let response = app.post_ticket(SAMPLE_TICKET).await;
    let body: serde_json::Value = response.json().await.expect("json");
    let id: Uuid = body["id"].as_str().expect("id").parse().expect("uuid");
    app.wait_for_count("tickets", 1).await;

    let (status, order_id, vat, total, problems): (String, String, Decimal, Decimal, Option<serde_json::Value>) =
        sqlx::query_as("SELECT status, order_id, vat, total, problems FROM tickets WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .expect("ticket row");
    assert_eq!((status.as_str(), order_id.as_str()), ("ok", "123456"));
    assert_eq!((vat, total), (decimal("3.10"), decimal("16.90")));
    assert_eq!(problems, None, "problems is NULL for ok tickets");
    let lines: Vec<(i32, String, String, Decimal)> = sqlx::query_as(
        "SELECT line_no, product_id, name, price FROM ticket_lines WHERE ticket_id = $1 ORDER BY line_no",
    )
    .bind(id)
    .fetch_all(&app.db)
    .await
    .expect("lines");
    assert_eq!(
        lines,
        vec![
            (6, "aZde".to_string(), "Formule(s) midi".to_string(), decimal("14.90")),
            (7, "IZ8z".to_string(), "Café".to_string(), decimal("2.00")),
        ]
    );
    let products: Vec<(String, String, Decimal, i64, Uuid)> =
        sqlx::query_as("SELECT product_id, name, price, times_seen, last_ticket_id FROM products ORDER BY product_id")
            .fetch_all(&app.db)
            .await
            .expect("products");
    assert_eq!(products.len(), 2);
    assert_eq!(products[0], ("IZ8z".to_string(), "Café".to_string(), decimal("2.00"), 1, id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ack_commit_the_row_exists_the_moment_the_answer_arrives() {
    let app = spawn_app_with(|settings| settings.ack = AckMode::Commit).await;

    let response = app.post_ticket(SAMPLE_TICKET).await;

    assert_eq!(response.status(), 202);
    assert_eq!(app.count("tickets").await, 1);
    assert_eq!(app.count("ticket_lines").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_bytes_are_stored_exactly_even_when_not_utf8_or_gzip_encoded() {
    let app = spawn_app().await;
    let latin1 = b"Order: 7\nTotal: 3.50\n\nproduct,product_id,price\nCaf\xe9 cr\xe8me,CC1,3.50\n".to_vec();
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(SAMPLE_TICKET.as_bytes()).expect("gzip");
    let gzipped = encoder.finish().expect("gzip");

    let plain: serde_json::Value = app.post_ticket(latin1.clone()).await.json().await.expect("json");
    let compressed: serde_json::Value = app
        .client
        .post(format!("{}/ticket", app.address))
        .header("Content-Encoding", "gzip")
        .body(gzipped)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    app.wait_for_count("tickets", 2).await;

    for (response, expected) in [(&plain, latin1.as_slice()), (&compressed, SAMPLE_TICKET.as_bytes())] {
        let id: Uuid = response["id"].as_str().expect("id").parse().expect("uuid");
        let raw: Vec<u8> =
            sqlx::query_scalar("SELECT raw FROM tickets WHERE id = $1").bind(id).fetch_one(&app.db).await.expect("raw");
        assert_eq!(raw, expected);
    }
    assert_eq!(plain["status"], "partial", "legacy encoding is a warning");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_ticket_is_stored_byte_for_byte_with_its_expected_status() {
    let app = spawn_app().await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tickets");
    let mut fixtures: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "txt"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 30);

    let mut failures = Vec::new();
    for path in &fixtures {
        let raw = std::fs::read(path).expect("fixture");
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path.with_extension("expected.json")).expect("expectation"))
                .expect("expectation json");
        let response = app.post_ticket(raw.clone()).await;
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or("?").to_string();
        if raw.is_empty() {
            if response.status() != 400 {
                failures.push(format!("{name}: empty body answered {}", response.status()));
            }
            continue;
        }
        if response.status() != 202 {
            failures.push(format!("{name}: answered {}", response.status()));
            continue;
        }
        let body: serde_json::Value = response.json().await.expect("json");
        let id: Uuid = body["id"].as_str().expect("id").parse().expect("uuid");
        app.wait_for_row(id).await;
        let (stored_raw, stored_status, problems): (Vec<u8>, String, Option<serde_json::Value>) =
            sqlx::query_as("SELECT raw, status, problems FROM tickets WHERE id = $1")
                .bind(id)
                .fetch_one(&app.db)
                .await
                .expect("row");
        if stored_raw != raw {
            failures.push(format!("{name}: raw bytes differ"));
        }
        if stored_status != expected["status"] || body["status"] != expected["status"] {
            failures.push(format!(
                "{name}: stored {stored_status}, answered {}, expected {}",
                body["status"], expected["status"]
            ));
        }
        match (stored_status.as_str(), &problems) {
            ("ok", None) => {}
            ("ok", Some(_)) => failures.push(format!("{name}: ok ticket with problems")),
            (_, Some(serde_json::Value::Array(list)))
                if list.iter().all(|problem| {
                    problem["code"].is_string() && problem["line"].is_u64() && problem["message"].is_string()
                }) => {}
            _ => failures.push(format!("{name}: problems malformed: {problems:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

impl crate::helpers::TestApp {
    pub async fn wait_for_row(&self, id: Uuid) {
        for _ in 0..400 {
            let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM tickets WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.db)
                .await
                .expect("lookup");
            if found.is_some() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("ticket {id} never landed");
    }
}
