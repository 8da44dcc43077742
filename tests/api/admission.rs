//! The admission budget: bounded in-flight tickets, 503 + Retry-After, recovery.

use sqlx::Connection;
use ticket_ingest::config::AckMode;

use crate::helpers::{numbered_ticket, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_budget_answers_503_with_retry_after_and_recovers_when_writers_catch_up() {
    let app = spawn_app_with(|settings| {
        settings.queue_capacity = 4;
        settings.ack = AckMode::Memory;
    })
    .await;
    let database_url: String =
        sqlx::query_scalar("SELECT current_database()").fetch_one(&app.db).await.expect("database name");
    let admin = crate::helpers::test_database_url();
    let url = format!("{}/{database_url}", admin.rsplit_once('/').expect("path").0);
    let mut blocker = sqlx::PgConnection::connect(&url).await.expect("blocker connection");
    let mut transaction = blocker.begin().await.expect("begin");
    sqlx::query("LOCK TABLE tickets IN ACCESS EXCLUSIVE MODE").execute(&mut *transaction).await.expect("lock");

    for order in 0..4 {
        assert_eq!(app.post_ticket(numbered_ticket(order)).await.status(), 202);
    }
    let refused = app.post_ticket(numbered_ticket(4)).await;
    let ready = app.get("/readyz").await;

    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(ready.status(), 503);

    transaction.rollback().await.expect("release the lock");
    app.wait_for_count("tickets", 4).await;
    for _ in 0..100 {
        if app.get("/readyz").await.status() == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(app.get("/readyz").await.status(), 200);
    assert_eq!(app.post_ticket(numbered_ticket(5)).await.status(), 202);
    app.wait_for_count("tickets", 5).await;
}

/// A ticket of `lines` product lines, its order number telling it apart.
pub(crate) fn long_ticket(order: u64, lines: usize) -> String {
    let mut ticket = format!("Order: {order}\nVAT: 1.00\nTotal: 10.00\n\nproduct,product_id,price\n");
    for line in 0..lines {
        ticket.push_str(&format!("Produit {line},P{line:05},1.00\n"));
    }
    ticket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_tickets_are_bounded_by_the_byte_budget_long_before_the_ticket_count() {
    let app = spawn_app_with(|settings| {
        settings.queue_capacity = 1000;
        settings.queue_max_bytes = 200_000;
        settings.ack = AckMode::Memory;
    })
    .await;
    let database_url: String =
        sqlx::query_scalar("SELECT current_database()").fetch_one(&app.db).await.expect("database name");
    let admin = crate::helpers::test_database_url();
    let url = format!("{}/{database_url}", admin.rsplit_once('/').expect("path").0);
    let mut blocker = sqlx::PgConnection::connect(&url).await.expect("blocker connection");
    let mut transaction = blocker.begin().await.expect("begin");
    sqlx::query("LOCK TABLE tickets IN ACCESS EXCLUSIVE MODE").execute(&mut *transaction).await.expect("lock");

    // Each ticket: a 5 kB body and 200 parsed lines.
    let mut accepted = 0;
    let mut refused = None;
    for order in 0..50 {
        let response = app.post_ticket(long_ticket(order, 200)).await;
        match response.status().as_u16() {
            202 => accepted += 1,
            503 => {
                refused = Some(response);
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let refused = refused.expect("the byte budget refuses before 50 tickets");
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!((1..20).contains(&accepted), "{accepted} tickets accepted before the first 503");
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    let in_flight_bytes: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("ticket_ingest_in_flight_bytes "))
        .and_then(|value| value.trim().parse().ok())
        .expect("in_flight_bytes");
    assert!(in_flight_bytes > 0.0 && in_flight_bytes <= 200_000.0, "{in_flight_bytes} bytes in flight");

    transaction.rollback().await.expect("release the lock");
    app.wait_for_count("tickets", accepted).await;
    assert_eq!(app.post_ticket(long_ticket(99, 200)).await.status(), 202);
    app.wait_for_count("tickets", accepted + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_as_soon_as_the_byte_budget_cannot_take_a_small_ticket() {
    let app = spawn_app_with(|settings| {
        settings.queue_max_bytes = 256 * 1024;
        settings.ack = AckMode::Memory;
    })
    .await;
    let lock = crate::helpers::TicketsLocked::take(&app.database_url).await;
    // Large tickets first, then small ones, until even a small one is refused.
    let mut order = 0;
    for lines in [400, 10] {
        loop {
            order += 1;
            let status = app.post_ticket(long_ticket(order, lines)).await.status();
            if status == 503 {
                break;
            }
            assert_eq!(status, 202);
        }
    }

    let ready = app.get("/readyz").await;

    assert_eq!(ready.status(), 503, "ready while a ticket of 10 lines is refused");
    assert!(ready.text().await.expect("text").contains("admission budget"));
    lock.release().await;
}
