//! A repeated request is answered again and stored once.

use crate::helpers::{spawn_app, SAMPLE_TICKET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_twice_gives_two_202s_one_id_and_one_row() {
    let app = spawn_app().await;

    let first = app.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "order-42").await;
    let second = app.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "order-42").await;

    assert_eq!((first.status().as_u16(), second.status().as_u16()), (202, 202));
    let first: serde_json::Value = first.json().await.expect("json");
    let second: serde_json::Value = second.json().await.expect("json");
    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["duplicate"], true);
    app.wait_for_count("tickets", 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(app.count("tickets").await, 1);
    assert_eq!(app.count("ticket_lines").await, 2);
    let times_seen: i64 = sqlx::query_scalar("SELECT times_seen FROM products WHERE product_id = 'IZ8z'")
        .fetch_one(&app.db)
        .await
        .expect("product");
    assert_eq!(times_seen, 1, "a repeat does not count twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_webhooks_id_works_as_an_idempotency_key() {
    let app = spawn_app().await;

    let first = app.post_ticket_with_header(SAMPLE_TICKET, "webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W").await;
    let second = app.post_ticket_with_header(SAMPLE_TICKET, "webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W").await;

    assert_eq!((first.status().as_u16(), second.status().as_u16()), (202, 202));
    app.wait_for_count("tickets", 1).await;
    let key: String = sqlx::query_scalar("SELECT idempotency_key FROM tickets").fetch_one(&app.db).await.expect("row");
    assert_eq!(key, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_with_one_key_store_one_row() {
    let app = spawn_app().await;

    let mut requests = Vec::new();
    for _ in 0..20 {
        let request = app.client.post(format!("{}/ticket", app.address)).header("Idempotency-Key", "burst");
        requests.push(tokio::spawn(request.body(SAMPLE_TICKET).send()));
    }
    for request in requests {
        assert_eq!(request.await.expect("task").expect("sent").status(), 202);
    }

    app.wait_for_count("tickets", 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(app.count("tickets").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_keys_are_different_tickets() {
    let app = spawn_app().await;

    for key in ["a", "b", "c"] {
        assert_eq!(app.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", key).await.status(), 202);
    }

    app.wait_for_count("tickets", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_stored_before_a_restart_is_still_stored_once() {
    let settings = crate::helpers::test_settings().await;
    let app = crate::helpers::spawn_app_from(settings.clone()).await;
    app.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "across-restarts").await;
    app.wait_for_count("tickets", 1).await;
    app.stop().await;

    let app = crate::helpers::spawn_app_from(settings).await;
    let again = app.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "across-restarts").await;

    assert_eq!(again.status(), 202);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.count("tickets").await, 1);
    assert_eq!(app.count("ticket_lines").await, 2);
}
