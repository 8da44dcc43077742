//! A repeated request is answered again and stored once.

use std::time::Duration;

use ticket_ingest::config::AckMode;

use crate::helpers::{
    fresh_database, numbered_ticket, spawn_app, spawn_app_from, spawn_app_with, DbProxy, TicketsLocked, SAMPLE_TICKET,
};

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
    let mut settings = crate::helpers::test_settings().await;
    // Plain tables whatever TEST_SCHEMA says, until the key's uniqueness
    // lives in idempotency_keys (migration 20261202000001): a partitioned
    // `tickets` cannot have a unique index on the key alone.
    settings.database_url = Some(crate::helpers::empty_database().await);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_is_answered_only_once_its_first_ticket_is_committed_under_ack_commit() {
    let app = spawn_app_with(|settings| settings.ack = AckMode::Commit).await;
    let lock = TicketsLocked::take(&app.database_url).await;
    let first = app.spawn_post_with_key(SAMPLE_TICKET, "order-7");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let repeat = app.spawn_post_with_key(SAMPLE_TICKET, "order-7");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answered_early = repeat.is_finished();
    lock.release().await;
    let (first, repeat) = (first.await.expect("first"), repeat.await.expect("repeat"));

    assert!(!answered_early, "the repeat was answered before the first ticket was committed");
    assert_eq!((first.status().as_u16(), repeat.status().as_u16()), (202, 202));
    let first: serde_json::Value = first.json().await.expect("json");
    let repeat: serde_json::Value = repeat.json().await.expect("json");
    assert_eq!(first["id"], repeat["id"]);
    assert_eq!(repeat["duplicate"], true);
    assert_eq!(app.count("tickets").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_first_request_is_refused_its_waiting_repeat_is_refused_too_and_nothing_is_stored() {
    // ack = commit with the database unreachable: the first request waits
    // for a commit that cannot happen; at shutdown it is refused with 503.
    let database_url = fresh_database().await;
    let proxy = DbProxy::start(&database_url).await;
    let mut settings = crate::helpers::test_settings().await;
    settings.database_url = Some(proxy.url(&database_url));
    settings.ack = AckMode::Commit;
    settings.shutdown_grace_ms = 2_000;
    let app = spawn_app_from(settings).await;
    proxy.cut();
    let first = app.spawn_post_with_key(SAMPLE_TICKET, "doomed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let repeat = app.spawn_post_with_key(SAMPLE_TICKET, "doomed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answered_early = repeat.is_finished();

    let stopping = tokio::spawn(app.stop());
    let (first, repeat) = (first.await.expect("first"), repeat.await.expect("repeat"));
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown bounded by the grace period while the database is down")
        .expect("stopped");
    proxy.restore();

    assert!(!answered_early, "the repeat was answered before the first request had its answer");
    assert_eq!((first.status().as_u16(), repeat.status().as_u16()), (503, 503));
    assert!(first.headers().contains_key("retry-after"));
    let db = sqlx::PgPool::connect(&database_url).await.expect("pool");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM tickets").fetch_one(&db).await.expect("count");
    assert_eq!(stored, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_with_another_body_is_answered_409_with_the_first_id_and_not_stored() {
    let app = spawn_app().await;
    let first = app.post_ticket_with_header(numbered_ticket(1), "Idempotency-Key", "order-1").await;
    let first: serde_json::Value = first.json().await.expect("json");

    let corrected = app.post_ticket_with_header(numbered_ticket(2), "Idempotency-Key", "order-1").await;

    assert_eq!(corrected.status(), 409);
    let corrected: serde_json::Value = corrected.json().await.expect("json");
    assert_eq!(corrected["id"], first["id"]);
    assert!(corrected["error"].as_str().is_some_and(|error| error.contains("not stored")), "{corrected}");
    app.wait_for_count("tickets", 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let order: String = sqlx::query_scalar("SELECT order_id FROM tickets").fetch_one(&app.db).await.expect("row");
    assert_eq!(order, "1", "first wins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_after_the_first_client_hung_up_gets_the_id_that_is_stored() {
    use tokio::io::AsyncWriteExt;

    let app = spawn_app_with(|settings| settings.ack = AckMode::Commit).await;
    let lock = TicketsLocked::take(&app.database_url).await;
    let host = app.address.trim_start_matches("http://").to_string();
    let request = format!(
        "POST /ticket HTTP/1.1\r\nHost: {host}\r\nIdempotency-Key: hung-up\r\nContent-Length: {}\r\n\r\n{SAMPLE_TICKET}",
        SAMPLE_TICKET.len()
    );
    let mut first = tokio::net::TcpStream::connect(&host).await.expect("connect");
    first.write_all(request.as_bytes()).await.expect("request");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(first); // hangs up while its ticket waits for the commit
    tokio::time::sleep(Duration::from_millis(100)).await;

    let repeat = app.spawn_post_with_key(SAMPLE_TICKET, "hung-up");
    tokio::time::sleep(Duration::from_millis(200)).await;
    lock.release().await;
    let repeat = repeat.await.expect("repeat");

    assert_eq!(repeat.status(), 202);
    let repeat: serde_json::Value = repeat.json().await.expect("json");
    app.wait_for_count("tickets", 1).await;
    let stored: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tickets").fetch_one(&app.db).await.expect("row");
    assert_eq!(repeat["id"], stored.to_string(), "the id answered is the one stored");
}
