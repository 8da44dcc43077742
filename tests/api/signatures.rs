//! Signed webhooks: with `signing_secrets` set, only valid signatures pass.

use ticket_ingest::signature::sign;

use crate::helpers::{signing_secrets, spawn_app_with, TestApp, SAMPLE_TICKET};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OLD_SECRET: &str = "whsec_b2xkLXNlY3JldC1rZXktZm9yLXRlc3Rz";

async fn signed_app() -> TestApp {
    spawn_app_with(|settings| settings.signing_secrets = signing_secrets(&[SECRET, OLD_SECRET])).await
}

async fn post_signed(app: &TestApp, id: &str, timestamp: i64, signature: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/ticket", app.address))
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(SAMPLE_TICKET)
        .send()
        .await
        .expect("sent")
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correctly_signed_ticket_is_accepted_with_either_secret_of_a_rotation() {
    let app = signed_app().await;
    let timestamp = now();

    let with_new = post_signed(
        &app,
        "msg_1",
        timestamp,
        &sign(SECRET, "msg_1", timestamp, SAMPLE_TICKET.as_bytes()).expect("sign"),
    )
    .await;
    let with_old = post_signed(
        &app,
        "msg_2",
        timestamp,
        &sign(OLD_SECRET, "msg_2", timestamp, SAMPLE_TICKET.as_bytes()).expect("sign"),
    )
    .await;

    assert_eq!((with_new.status().as_u16(), with_old.status().as_u16()), (202, 202));
    app.wait_for_count("tickets", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_tampered_or_stale_tickets_are_refused_with_401_and_counted() {
    let app = signed_app().await;
    let timestamp = now();
    let other_body_signature = sign(SECRET, "msg_1", timestamp, b"Order: 999\n").expect("sign");
    let stale = timestamp - 3600;

    let unsigned = app.post_ticket(SAMPLE_TICKET).await;
    let tampered = post_signed(&app, "msg_1", timestamp, &other_body_signature).await;
    let replayed =
        post_signed(&app, "msg_3", stale, &sign(SECRET, "msg_3", stale, SAMPLE_TICKET.as_bytes()).expect("sign")).await;

    assert_eq!(unsigned.status(), 401);
    assert_eq!(tampered.status(), 401);
    assert_eq!(replayed.status(), 401);
    assert_eq!(app.count("tickets").await, 0);
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(metrics.contains("ticket_ingest_signature_failures_total 3"), "{metrics}");
}
