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
