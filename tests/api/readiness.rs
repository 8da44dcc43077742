//! `/readyz` and `/healthz`: what they say, and that they say it at once,
//! whatever the rest of the service is waiting for.

use std::time::{Duration, Instant};

use ticket_ingest::config::AckMode;

use crate::helpers::{numbered_ticket, spawn_app_from, test_settings, TicketsLocked};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_at_once_while_key_lookups_wait_on_a_locked_table() {
    // The keys were stored by another instance: this one must look each up
    // in `tickets`, which is locked, so the lookups hold the shared pool's
    // connections. The database itself answers: readiness must say so
    // without queueing behind them.
    let mut settings = test_settings().await;
    settings.ack = AckMode::Wal;
    settings.db_pool_size = 1;
    let other = spawn_app_from(settings.clone()).await;
    for number in 0..10 {
        let answer =
            other.post_ticket_with_header(numbered_ticket(number), "Idempotency-Key", &format!("k-{number}")).await;
        assert_eq!(answer.status(), 202);
    }
    other.wait_for_count("tickets", 10).await;
    other.stop().await;
    settings.wal_dir = crate::helpers::temp_dir("wal");
    let app = spawn_app_from(settings).await;
    assert_eq!(app.get("/readyz").await.status(), 200, "ready before the lock");
    let locked = TicketsLocked::take(&app.database_url).await;
    let posts: Vec<_> =
        (0..10).map(|number| app.spawn_post_with_key(&numbered_ticket(number), &format!("k-{number}"))).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let ready = app.get("/readyz").await;
    let took = started.elapsed();
    let status = ready.status();
    let reason = ready.text().await.expect("text");

    locked.release().await;
    for post in posts {
        assert_eq!(post.await.expect("post").status(), 202);
    }
    assert_eq!((status.as_u16(), reason.as_str()), (200, "ready"), "after {took:?}");
}
