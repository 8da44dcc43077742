//! A repeated request is answered again and stored once.

use std::time::Duration;

use ticket_ingest::config::AckMode;

use crate::helpers::{
    fresh_database, numbered_ticket, parsed_url, spawn_app, spawn_app_from, spawn_app_with, DbProxy, TicketsLocked,
    SAMPLE_TICKET,
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
async fn a_key_stored_before_a_restart_is_answered_with_the_first_id_and_stored_once() {
    let settings = crate::helpers::test_settings().await;
    let app = crate::helpers::spawn_app_from(settings.clone()).await;
    let first = app.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "across-restarts").await;
    let first: serde_json::Value = first.json().await.expect("json");
    app.wait_for_count("tickets", 1).await;
    app.stop().await;

    let app = crate::helpers::spawn_app_from(settings).await;
    let again = app.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "across-restarts").await;
    let other_body = app.post_ticket_with_header(numbered_ticket(9), "Idempotency-Key", "across-restarts").await;

    assert_eq!((again.status().as_u16(), other_body.status().as_u16()), (202, 409));
    let again: serde_json::Value = again.json().await.expect("json");
    assert_eq!(again["id"], first["id"], "a repeat after a restart gets the id acknowledged the first time");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["status"], "ok");
    let other_body: serde_json::Value = other_body.json().await.expect("json");
    assert_eq!(other_body["id"], first["id"], "another body under the key: the first stands");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.count("tickets").await, 1);
    assert_eq!(app.count("ticket_lines").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_answers_a_key_the_first_instance_stored_with_the_first_id() {
    let first_instance = spawn_app().await;
    let mut settings = crate::helpers::test_settings().await;
    settings.database_url = Some(parsed_url(&first_instance.database_url));
    let second_instance = spawn_app_from(settings).await;

    let first = first_instance.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "two-instances").await;
    let first: serde_json::Value = first.json().await.expect("json");
    first_instance.wait_for_count("tickets", 1).await;
    let again = second_instance.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "two-instances").await;

    assert_eq!(again.status(), 202);
    let again: serde_json::Value = again.json().await.expect("json");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["duplicate"], true);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(first_instance.count("tickets").await, 1);
    let key_of: uuid::Uuid = sqlx::query_scalar("SELECT ticket_id FROM idempotency_keys WHERE key = 'two-instances'")
        .fetch_one(&first_instance.db)
        .await
        .expect("key row");
    assert_eq!(key_of.to_string(), first["id"].as_str().expect("id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_database_cannot_be_asked_about_is_stored_under_its_own_id_and_keeps_its_first() {
    // The key is stored by one instance; another, whose database link is
    // cut, cannot look it up: it acknowledges the ticket under a fresh id
    // (into its WAL), and that id must be stored, never dropped.
    let first_instance = spawn_app().await;
    let proxy = DbProxy::start(&first_instance.database_url).await;
    let mut settings = crate::helpers::test_settings().await;
    settings.database_url = Some(parsed_url(&proxy.url(&first_instance.database_url)));
    let cut_off = spawn_app_from(settings).await;
    let first = first_instance.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "unchecked").await;
    let first: serde_json::Value = first.json().await.expect("json");
    first_instance.wait_for_count("tickets", 1).await;

    proxy.cut();
    let blind = cut_off.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "unchecked").await;
    assert_eq!(blind.status(), 202);
    let blind: serde_json::Value = blind.json().await.expect("json");
    assert_ne!(blind["id"], first["id"]);
    proxy.restore();

    first_instance.wait_for_count("tickets", 2).await;
    let ids: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM tickets ORDER BY id").fetch_all(&first_instance.db).await.expect("ids");
    let answered: Vec<String> =
        [&first["id"], &blind["id"]].iter().map(|id| id.as_str().expect("id").to_string()).collect();
    assert_eq!(ids.iter().map(ToString::to_string).collect::<Vec<_>>(), answered, "every id answered 202 is stored");
    let key_of: uuid::Uuid = sqlx::query_scalar("SELECT ticket_id FROM idempotency_keys WHERE key = 'unchecked'")
        .fetch_one(&first_instance.db)
        .await
        .expect("key row");
    assert_eq!(key_of.to_string(), answered[0], "the key keeps standing for the first ticket");
    let metrics = cut_off.get("/metrics").await.text().await.expect("metrics");
    assert!(metrics.contains("ticket_ingest_idempotency_keys_unchecked_total 1"), "{metrics}");
    assert!(metrics.contains("ticket_ingest_idempotency_keys_taken_total 1"), "{metrics}");
    let again = first_instance.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "unchecked").await;
    let again: serde_json::Value = again.json().await.expect("json");
    assert_eq!(again["id"], first["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_older_than_the_retention_are_expired_and_the_recent_ones_kept() {
    let database_url = fresh_database().await;
    let db = sqlx::PgPool::connect(&database_url).await.expect("pool");
    ticket_ingest::store::migrate(&db).await.expect("migrations");
    for (key, hours_ago) in [("expired-1", 200), ("expired-2", 169), ("kept", 167)] {
        sqlx::query(
            "INSERT INTO idempotency_keys (key, ticket_id, received_at, status, body_sha256)
             VALUES ($1, $2, now() - make_interval(hours => $3), 'ok', sha256(''::bytea))",
        )
        .bind(key)
        .bind(uuid::Uuid::now_v7())
        .bind(hours_ago)
        .execute(&db)
        .await
        .expect("key row");
    }
    let mut settings = crate::helpers::test_settings().await;
    settings.database_url = Some(parsed_url(&database_url));
    settings.idempotency_retention_hours = 168;

    let app = spawn_app_from(settings).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let keys: Vec<String> =
            sqlx::query_scalar("SELECT key FROM idempotency_keys ORDER BY key").fetch_all(&db).await.expect("keys");
        if keys == ["kept"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "expiry left {keys:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(metrics.contains("ticket_ingest_idempotency_keys_expired_total 2"), "{metrics}");
    let reused = app.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "expired-1").await;
    assert_eq!(reused.status(), 202);
    let reused: serde_json::Value = reused.json().await.expect("json");
    assert_eq!(reused.get("duplicate"), None, "an expired key is a new key: {reused}");
    app.wait_for_count("tickets", 1).await;
    let stored: uuid::Uuid = sqlx::query_scalar("SELECT ticket_id FROM idempotency_keys WHERE key = 'expired-1'")
        .fetch_one(&db)
        .await
        .expect("key row");
    assert_eq!(reused["id"], stored.to_string());
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
    settings.database_url = Some(parsed_url(&proxy.url(&database_url)));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_under_load_before_and_after_a_restart_store_each_key_once_and_always_answer_its_first_id() {
    const KEYS: u64 = 200;
    let settings = crate::helpers::test_settings().await;
    let post_every_key = |app: &crate::helpers::TestApp, copies: usize| {
        let mut requests = Vec::new();
        for key in 0..KEYS {
            for _ in 0..copies {
                let request = app
                    .client
                    .post(format!("{}/ticket", app.address))
                    .header("Idempotency-Key", format!("load-{key}"))
                    .body(numbered_ticket(key));
                requests.push(tokio::spawn(async move {
                    let response = request.send().await.expect("sent");
                    assert_eq!(response.status(), 202);
                    let body: serde_json::Value = response.json().await.expect("json");
                    (key, body["id"].as_str().expect("id").to_string())
                }));
            }
        }
        requests
    };
    let mut answers: std::collections::HashMap<u64, std::collections::HashSet<String>> = Default::default();

    let app = spawn_app_from(settings.clone()).await;
    for request in post_every_key(&app, 3) {
        let (key, id) = request.await.expect("task");
        answers.entry(key).or_default().insert(id);
    }
    app.stop().await;
    let app = spawn_app_from(settings).await;
    for request in post_every_key(&app, 2) {
        let (key, id) = request.await.expect("task");
        answers.entry(key).or_default().insert(id);
    }
    app.wait_for_count("tickets", KEYS as i64).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stored: Vec<(String, String)> =
        sqlx::query_as("SELECT idempotency_key, id::text FROM tickets").fetch_all(&app.db).await.expect("rows");
    assert_eq!(stored.len() as u64, KEYS, "one ticket per key");
    for (key, id) in stored {
        let number: u64 = key.trim_start_matches("load-").parse().expect("key");
        let answered = &answers[&number];
        assert_eq!(answered.len(), 1, "every answer for {key} gives one id: {answered:?}");
        assert!(answered.contains(&id), "{key}: answered {answered:?}, stored {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_ticket_is_gone_is_a_new_key_not_a_repeat_of_a_missing_ticket() {
    // A partition dropped by the retention takes its tickets, not their
    // keys: a repeat must not be answered with an id that is not stored.
    let settings = crate::helpers::test_settings().await;
    let app = spawn_app_from(settings.clone()).await;
    let first = app.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "outlived").await;
    let first: serde_json::Value = first.json().await.expect("json");
    app.wait_for_count("tickets", 1).await;
    app.stop().await;
    let db = sqlx::PgPool::connect(settings.database_url.as_ref().expect("url").as_str()).await.expect("pool");
    sqlx::query("DELETE FROM ticket_lines").execute(&db).await.expect("lines gone");
    sqlx::query("DELETE FROM tickets").execute(&db).await.expect("tickets gone");

    let app = spawn_app_from(settings).await;
    let again = app.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "outlived").await;

    assert_eq!(again.status(), 202);
    let again: serde_json::Value = again.json().await.expect("json");
    assert_eq!(again.get("duplicate"), None, "{again}");
    assert_ne!(again["id"], first["id"]);
    app.wait_for_count("tickets", 1).await;
    let stored: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tickets").fetch_one(&db).await.expect("row");
    assert_eq!(again["id"], stored.to_string(), "the id answered is stored");
    let key_of: uuid::Uuid = sqlx::query_scalar("SELECT ticket_id FROM idempotency_keys WHERE key = 'outlived'")
        .fetch_one(&db)
        .await
        .expect("key row");
    assert_eq!(key_of, stored, "the key stands for the stored ticket now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_remembered_in_memory_whose_ticket_is_gone_is_a_new_key_not_a_repeat_of_a_missing_ticket() {
    // The same instance keeps running: its memory of the key must not
    // outlive the row (a partition dropped by the retention, here a
    // DELETE, takes the ticket while the instance remembers its key).
    let app = spawn_app().await;
    let first = app.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "remembered").await;
    let first: serde_json::Value = first.json().await.expect("json");
    app.wait_for_count("tickets", 1).await;
    sqlx::query("DELETE FROM ticket_lines").execute(&app.db).await.expect("lines gone");
    sqlx::query("DELETE FROM tickets").execute(&app.db).await.expect("tickets gone");

    let again = app.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "remembered").await;

    assert_eq!(again.status(), 202);
    let again: serde_json::Value = again.json().await.expect("json");
    assert_eq!(again.get("duplicate"), None, "a duplicate of a ticket that is not stored: {again}");
    assert_ne!(again["id"], first["id"]);
    app.wait_for_count("tickets", 1).await;
    let stored: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tickets").fetch_one(&app.db).await.expect("row");
    assert_eq!(again["id"], stored.to_string(), "the id answered is stored");
    let third = app.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "remembered").await;
    let third: serde_json::Value = third.json().await.expect("json");
    assert_eq!((&third["id"], &third["duplicate"]), (&again["id"], &serde_json::Value::Bool(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_is_answered_with_the_ticket_the_key_row_stands_for() {
    // Two instances took a key's first request at the same instant: both
    // stored their ticket, the key row keeps one. Once that is known, the
    // repeats get the key row's ticket, from either instance.
    let app = spawn_app().await;
    let first = app.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "raced").await;
    let first: serde_json::Value = first.json().await.expect("json");
    app.wait_for_count("tickets", 1).await;
    // What the other instance's ticket looks like once written: its own
    // row, and the key row pointing at it.
    let other = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO tickets (id, received_at, idempotency_key, status, order_id, vat, total, problems, raw)
         SELECT $1, received_at, idempotency_key, status, order_id, vat, total, problems, raw FROM tickets",
    )
    .bind(other)
    .execute(&app.db)
    .await
    .expect("the other instance's ticket");
    sqlx::query(
        "UPDATE idempotency_keys SET ticket_id = $1, received_at = (SELECT received_at FROM tickets WHERE id = $1)",
    )
    .bind(other)
    .execute(&app.db)
    .await
    .expect("key row");

    let again = app.post_ticket_with_header(SAMPLE_TICKET, "Idempotency-Key", "raced").await;

    let again: serde_json::Value = again.json().await.expect("json");
    assert_ne!(first["id"], other.to_string());
    assert_eq!((&again["id"], &again["duplicate"]), (&serde_json::Value::from(other.to_string()), &true.into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_during_a_conversion_to_partitions_gets_the_first_id_and_stores_nothing() {
    // The conversion moves old tickets in batches: until it has moved a
    // ticket, the ticket is in tickets_unpartitioned, and its key still
    // stands for it.
    let settings = crate::helpers::test_settings().await;
    if crate::helpers::partitioned_schema() {
        return; // Already partitioned: there is nothing to convert.
    }
    let database_url = settings.database_url.as_ref().expect("url").as_str().to_string();
    let app = spawn_app_from(settings.clone()).await;
    let mut first_ids = Vec::new();
    for number in 0..5 {
        let response =
            app.post_ticket_with_header(numbered_ticket(number), "Idempotency-Key", &format!("k{number}")).await;
        let body: serde_json::Value = response.json().await.expect("json");
        first_ids.push(body["id"].clone());
    }
    app.wait_for_count("tickets", 5).await;
    app.stop().await;
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&database_url).await.expect("connect");
    let pace = ticket_ingest::partition::Pace { batch_size: 100, max_batches: Some(0) };
    let progress = ticket_ingest::partition::convert(&mut connection, &settings.partition_layout(), pace, |_| {})
        .await
        .expect("swap");
    assert!(progress.swapped && progress.tickets_moved == 0, "{progress:?}");

    // A fresh instance: nothing in memory, every key looked up.
    let app = spawn_app_from(settings).await;
    for (number, first_id) in first_ids.iter().enumerate() {
        let key = format!("k{number}");
        let again = app.post_ticket_with_header(numbered_ticket(number as u64), "Idempotency-Key", &key).await;
        let again: serde_json::Value = again.json().await.expect("json");
        assert_eq!((&again["id"], &again["duplicate"]), (first_id, &true.into()), "{key}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (new, old, moved_keys): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tickets), (SELECT count(*) FROM tickets_unpartitioned),
                (SELECT count(*) FROM idempotency_keys k WHERE NOT EXISTS
                    (SELECT 1 FROM tickets_unpartitioned t WHERE t.id = k.ticket_id))",
    )
    .fetch_one(&app.db)
    .await
    .expect("counts");
    assert_eq!((new, old, moved_keys), (0, 5, 0), "nothing stored again, no key moved off its first ticket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_stuck_keyed_requests_are_not_held_by_the_key_lookup_one_after_the_other() {
    // `tickets` locked (as a database that stopped answering): the key
    // lookups cannot finish. The outage rule (accept into the WAL, the key
    // unchecked) applies at once once that is known, not after a lookup
    // that waits its full timeout on every request.
    // The keys were stored by another instance (or before a restart):
    // this one must look each up, and the lookup reads `tickets`.
    let mut settings = crate::helpers::test_settings().await;
    settings.ack = AckMode::Wal;
    let other = spawn_app_from(settings.clone()).await;
    for number in 0..20 {
        let key = format!("stuck-{number}");
        let answer = other.post_ticket_with_header(numbered_ticket(number), "Idempotency-Key", &key).await;
        assert_eq!(answer.status(), 202);
    }
    other.wait_for_count("tickets", 20).await;
    other.stop().await;
    settings.wal_dir = crate::helpers::temp_dir("wal");
    let app = spawn_app_from(settings).await;
    let locked = TicketsLocked::take(&app.database_url).await;

    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for number in 0..20 {
        let key = format!("stuck-{number}");
        let answer = app.post_ticket_with_header(numbered_ticket(number), "Idempotency-Key", &key).await;
        assert_eq!(answer.status(), 202);
        let answer: serde_json::Value = answer.json().await.expect("json");
        ids.push(answer["id"].as_str().expect("id").to_string());
    }
    let took = started.elapsed();
    locked.release().await;

    assert!(took < Duration::from_secs(6), "20 keyed tickets one after the other took {took:?}");
    app.wait_for_count("tickets", 40).await;
    for id in ids {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM tickets WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.db)
            .await
            .expect("count");
        assert_eq!(stored, 1, "{id} answered 202 and stored once");
    }
}
