//! SIGHUP applies the run-time tunables from the config file.

use std::time::Duration;

use ticket_ingest::config::AckMode;

use crate::helpers::{fresh_database, temp_dir, ServiceProcess};

async fn gauge(address: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{address}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|line| line.strip_prefix(&format!("{name} "))?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_batch_triggers_from_the_config_file_and_keeps_serving() {
    let config = temp_dir("config").join("ticket-ingest.toml");
    std::fs::write(&config, "batch_max_tickets = 500\nbatch_max_wait_ms = 0\n").expect("write config");
    let database_url = fresh_database().await;
    let service = ServiceProcess::start_with_config(&database_url, &temp_dir("wal"), AckMode::Wal, &[], &config).await;
    assert_eq!(gauge(&service.address, "ticket_ingest_batch_max_tickets").await, Some(500.0));

    let reloaded_config =
        "batch_max_tickets = 7\nbatch_max_wait_ms = 3\nbatch_max_bytes = 65536\nlog_level = \"debug\"\n";
    std::fs::write(&config, reloaded_config).expect("rewrite");
    service.signal("HUP");
    let mut reloaded = None;
    for _ in 0..100 {
        reloaded = gauge(&service.address, "ticket_ingest_batch_max_tickets").await;
        if reloaded == Some(7.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(reloaded, Some(7.0));
    assert_eq!(gauge(&service.address, "ticket_ingest_batch_max_wait_seconds").await, Some(0.003));
    assert_eq!(gauge(&service.address, "ticket_ingest_batch_max_bytes").await, Some(65536.0));
    let answer = reqwest::Client::new()
        .post(format!("{}/ticket", service.address))
        .body(crate::helpers::SAMPLE_TICKET)
        .send()
        .await
        .expect("sent");
    assert_eq!(answer.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_on_sighup_is_refused_and_the_running_one_stays() {
    let config = temp_dir("config").join("ticket-ingest.toml");
    std::fs::write(&config, "batch_max_tickets = 40\n").expect("write config");
    let database_url = fresh_database().await;
    let service = ServiceProcess::start_with_config(&database_url, &temp_dir("wal"), AckMode::Wal, &[], &config).await;

    std::fs::write(&config, "batch_max_tickets = \"lots\"\n").expect("rewrite");
    service.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(gauge(&service.address, "ticket_ingest_batch_max_tickets").await, Some(40.0));
    assert_eq!(reqwest::get(format!("{}/healthz", service.address)).await.expect("healthz").status(), 200);
}
