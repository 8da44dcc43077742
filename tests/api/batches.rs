//! Batches: mixed quality, huge tickets, hot products under two writers.

use rust_decimal::Decimal;
use uuid::Uuid;

use crate::helpers::{history, history_of_stored_lines, numbered_ticket, spawn_app_with};

async fn post_all(app: &crate::helpers::TestApp, bodies: Vec<String>, concurrency: usize) -> Vec<serde_json::Value> {
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for body in bodies {
        let request = app.client.post(format!("{}/ticket", app.address)).body(body);
        let permit = std::sync::Arc::clone(&semaphore).acquire_owned().await.expect("semaphore");
        tasks.push(tokio::spawn(async move {
            let response = request.send().await.expect("sent");
            assert_eq!(response.status(), 202);
            let body: serde_json::Value = response.json().await.expect("json");
            drop(permit);
            body
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("task"));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_mixing_good_partial_and_invalid_tickets_commits_all_of_them() {
    let app = spawn_app_with(|settings| {
        settings.batch_max_tickets = 100;
        settings.batch_max_wait_ms = 50;
    })
    .await;
    let mut bodies = Vec::new();
    for order in 0..50u64 {
        bodies.push(match order % 5 {
            0 => format!("Order: {order}\nTotal: 1.00\n\nproduct,product_id,price\nA,a,1.0O\nB,b,1\n"),
            1 => "\u{0}\u{1}\u{2}binary junk\u{0}\u{0}\u{0}\u{0}\u{0}".to_string(),
            2 => format!("<html>{order}</html>"),
            3 => format!("Order: {order}\nVAT: x\nTotal: 9.99\n\nproduct,product_id,price\nA,a,1\n"),
            _ => numbered_ticket(order),
        });
    }

    let answers = post_all(&app, bodies, 50).await;

    app.wait_for_count("tickets", 50).await;
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM tickets GROUP BY status ORDER BY status")
            .fetch_all(&app.db)
            .await
            .expect("statuses");
    assert_eq!(
        statuses,
        vec![("invalid".to_string(), 20), ("ok".to_string(), 10), ("partial".to_string(), 20)],
        "answers: {answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_of_two_thousand_lines_in_large_batches_are_stored_whole() {
    let app = spawn_app_with(|settings| {
        settings.batch_max_tickets = 500;
        settings.batch_max_wait_ms = 100;
        settings.batch_max_bytes = usize::MAX;
        settings.max_body_bytes = 1024 * 1024;
    })
    .await;
    let mut bodies = Vec::new();
    for ticket in 0..20 {
        let mut body = format!("Order: big-{ticket}\nVAT: 0\nTotal: 2000.00\n\nproduct,product_id,price\n");
        for line in 0..2000 {
            body.push_str(&format!("Item {line},P{line:04},1.00\n"));
        }
        bodies.push(body);
    }

    let answers = post_all(&app, bodies, 20).await;

    assert!(answers.iter().all(|answer| answer["status"] == "ok"), "{answers:?}");
    app.wait_for_count("tickets", 20).await;
    app.wait_for_count("ticket_lines", 40_000).await;
    let times_seen: i64 = sqlx::query_scalar("SELECT times_seen FROM products WHERE product_id = 'P0042'")
        .fetch_one(&app.db)
        .await
        .expect("product");
    assert_eq!(times_seen, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_the_same_hot_products_neither_deadlock_nor_let_an_older_price_win() {
    let app = spawn_app_with(|settings| {
        settings.writers = 2;
        settings.batch_max_tickets = 5;
    })
    .await;
    let ids = ["HOT1", "HOT2", "HOT3", "HOT4", "HOT5"];
    let mut bodies = Vec::new();
    for ticket in 0..400usize {
        let mut lines: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(index, id)| format!("Hot {id},{id},{}.{:02}", ticket % 97 + index, ticket % 100))
            .collect();
        lines.rotate_left(ticket % ids.len());
        if ticket % 2 == 1 {
            lines.reverse();
        }
        bodies.push(format!("Order: hot-{ticket}\n\nproduct,product_id,price\n{}\n", lines.join("\n")));
    }

    post_all(&app, bodies, 16).await;

    app.wait_for_count("tickets", 400).await;
    let expected: Vec<(String, Decimal, Uuid)> = sqlx::query_as(
        "SELECT DISTINCT ON (l.product_id) l.product_id, l.price, t.id
         FROM ticket_lines l JOIN tickets t ON t.id = l.ticket_id
         ORDER BY l.product_id, t.received_at DESC, t.id DESC",
    )
    .fetch_all(&app.db)
    .await
    .expect("expected prices");
    let actual: Vec<(String, Decimal, Uuid)> =
        sqlx::query_as("SELECT product_id, price, last_ticket_id FROM products ORDER BY product_id")
            .fetch_all(&app.db)
            .await
            .expect("products");
    assert_eq!(actual, expected);
    let times_seen: Vec<i64> =
        sqlx::query_scalar("SELECT times_seen FROM products").fetch_all(&app.db).await.expect("times seen");
    assert_eq!(times_seen, vec![400; 5]);
    assert_eq!(history(&app.db).await, history_of_stored_lines(&app.db).await);
    assert!(batches_of_writer(&app, 1).await >= 1.0, "both writers wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_the_same_hot_history_rows_neither_deadlock_nor_miscount() {
    let app = spawn_app_with(|settings| {
        settings.writers = 2;
        settings.batch_max_tickets = 5;
    })
    .await;
    // Five products, each under two names at two prices and a third name at
    // a third price: 25 history rows, of which every ticket touches 10, in
    // an order that changes from ticket to ticket.
    let mut bodies = Vec::new();
    for ticket in 0..400usize {
        let mut lines: Vec<String> = (1..=5)
            .flat_map(|product| {
                let name = if (ticket + product) % 2 == 0 { "Hot" } else { "Hot (promo)" };
                let price = if (ticket / 2 + product) % 2 == 0 { "1.00" } else { "0.90" };
                [format!("{name} {product},HOT{product},{price}"), format!("Cold {product},HOT{product},2.00")]
            })
            .collect();
        let count = lines.len();
        lines.rotate_left(ticket % count);
        if ticket % 2 == 1 {
            lines.reverse();
        }
        bodies.push(format!("Order: hot-{ticket}\n\nproduct,product_id,price\n{}\n", lines.join("\n")));
    }

    post_all(&app, bodies, 16).await;

    app.wait_for_count("tickets", 400).await;
    let rows = history(&app.db).await;
    assert_eq!(rows, history_of_stored_lines(&app.db).await);
    assert_eq!(rows.len(), 25);
    assert_eq!(rows.iter().map(|row| row.5).sum::<i64>(), 4000);
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(metrics.contains("ticket_ingest_retries_total 0"), "no batch retried (no deadlock): {metrics}");
    assert!(batches_of_writer(&app, 1).await >= 1.0, "both writers wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_the_database_refuses_is_isolated_and_stored_as_invalid_while_its_batch_commits() {
    let app = spawn_app_with(|settings| {
        settings.batch_max_tickets = 100;
        settings.batch_max_wait_ms = 100;
    })
    .await;
    // A rule the parser knows nothing about, as a stricter schema would add.
    sqlx::query("ALTER TABLE tickets ADD CONSTRAINT no_poison CHECK (order_id IS DISTINCT FROM 'poison')")
        .execute(&app.db)
        .await
        .expect("constraint");
    let mut bodies: Vec<String> = (0..30).map(numbered_ticket).collect();
    bodies.push(numbered_ticket(0).replace("Order: 0", "Order: poison"));

    post_all(&app, bodies, 31).await;

    app.wait_for_count("tickets", 31).await;
    let (status, problems): (String, serde_json::Value) =
        sqlx::query_as("SELECT status, problems FROM tickets WHERE order_id IS NULL")
            .fetch_one(&app.db)
            .await
            .expect("the poison ticket");
    assert_eq!(status, "invalid");
    assert!(problems.to_string().contains("database_rejected"), "{problems}");
    assert_eq!(app.count("ticket_lines").await, 60, "the good tickets' lines, not the poison's");
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(metrics.contains("ticket_ingest_poison_tickets_total 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stops_growing_once_its_tickets_reach_batch_max_bytes() {
    let app = spawn_app_with(|settings| {
        settings.writers = 1;
        settings.batch_max_tickets = 500;
        settings.batch_max_wait_ms = 300;
        // A ticket holds more than 1 KiB of the budget: two fill a batch.
        settings.batch_max_bytes = 2048;
    })
    .await;

    post_all(&app, (0..12).map(numbered_ticket).collect(), 12).await;

    app.wait_for_count("tickets", 12).await;
    // The rows are visible as soon as they commit; the batch is counted just
    // before its permits are given back.
    let mut metrics = app.get("/metrics").await.text().await.expect("metrics");
    for _ in 0..100 {
        if metrics.lines().any(|line| line == "ticket_ingest_in_flight 0") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        metrics = app.get("/metrics").await.text().await.expect("metrics");
    }
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} "))?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert_eq!(value("ticket_ingest_batch_size_sum"), 12.0);
    assert!(value("ticket_ingest_batch_size_count") >= 6.0, "at most two tickets per batch: {metrics}");
    assert_eq!(value("ticket_ingest_batch_max_bytes"), 2048.0);
}

/// `ticket_ingest_batches_total{writer="N"}`, 0 when absent.
async fn batches_of_writer(app: &crate::helpers::TestApp, writer: usize) -> f64 {
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    let prefix = format!("ticket_ingest_batches_total{{writer=\"{writer}\"}} ");
    metrics.lines().find_map(|line| line.strip_prefix(&prefix)?.parse().ok()).unwrap_or(0.0)
}

/// Posts `count` tickets while the tickets table is locked — writer 0 is
/// stuck with its first batch, so the rest queue up — then unlocks and
/// waits until all are stored.
async fn post_while_tickets_are_locked(app: &crate::helpers::TestApp, count: u64) {
    let mut locker = app.db.acquire().await.expect("locker");
    sqlx::Executor::execute(&mut *locker, "BEGIN; LOCK TABLE tickets IN ACCESS EXCLUSIVE MODE").await.expect("lock");
    for order in 0..count {
        assert_eq!(app.post_ticket(numbered_ticket(order)).await.status(), 202);
    }
    // Time for a spare writer to see the queue and take a batch.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    sqlx::Executor::execute(&mut *locker, "ROLLBACK").await.expect("unlock");
    drop(locker);
    app.wait_for_count("tickets", count as i64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_backlog_only_the_first_writer_writes() {
    let app = spawn_app_with(|settings| {
        settings.writers = 3;
        settings.batch_max_tickets = 100;
    })
    .await;

    for order in 0..20 {
        assert_eq!(app.post_ticket(numbered_ticket(order)).await.status(), 202);
    }

    app.wait_for_count("tickets", 20).await;
    assert!(batches_of_writer(&app, 0).await >= 1.0);
    assert_eq!((batches_of_writer(&app, 1).await, batches_of_writer(&app, 2).await), (0.0, 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spare_writers_join_once_a_full_batch_is_waiting() {
    let app = spawn_app_with(|settings| {
        settings.writers = 2;
        settings.batch_max_tickets = 5;
    })
    .await;
    post_while_tickets_are_locked(&app, 40).await;
    assert!(batches_of_writer(&app, 1).await >= 1.0, "the spare writer wrote nothing");
    assert_eq!(app.count("ticket_lines").await, 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spare_writers_join_when_the_waiting_tickets_fill_a_batch_in_bytes() {
    let app = spawn_app_with(|settings| {
        settings.writers = 2;
        settings.batch_max_tickets = 500;
        // Two tickets fill a batch; 20 queued are far from 500.
        settings.batch_max_bytes = 2048;
    })
    .await;
    post_while_tickets_are_locked(&app, 20).await;
    assert!(batches_of_writer(&app, 1).await >= 1.0, "the spare writer wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ack_commit_a_ticket_the_database_refuses_even_as_invalid_is_answered_503_not_202() {
    let app = spawn_app_with(|settings| settings.ack = ticket_ingest::config::AckMode::Commit).await;
    // A rule on the raw bytes themselves: not even the invalid copy passes.
    sqlx::query("ALTER TABLE tickets ADD CONSTRAINT no_unstorable CHECK (position('unstorable'::bytea IN raw) = 0)")
        .execute(&app.db)
        .await
        .expect("constraint");

    let refused = app.post_ticket(numbered_ticket(1).replace("Order: 1", "Order: unstorable")).await;
    let stored = app.post_ticket(numbered_ticket(2)).await;

    assert_eq!(refused.status(), 503, "never a 202 for a ticket that was not stored");
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(stored.status(), 202);
    assert_eq!(app.count("tickets").await, 1);
}
