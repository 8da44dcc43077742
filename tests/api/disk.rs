//! A full disk under the write-ahead log: loud refusals, no litter, an
//! honest `/readyz`, and recovery once space is back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ticket_ingest::config::AckMode;

use crate::helpers::{numbered_ticket, spawn_app_from, temp_dir, test_settings, TicketsLocked};

/// A small tmpfs mounted for the test, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// `None` when this process may not mount (not root).
    fn mount(size: &str) -> Option<SmallDisk> {
        let path = temp_dir("small-disk");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|status| status.success());
        mounted.then_some(SmallDisk { path })
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![1u8; 4096];
        while file.write_all(&chunk).and_then(|()| file.sync_data()).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|entries| entries.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_with_503_leaves_no_segment_files_reports_not_ready_and_recovers_when_space_returns() {
    let Some(disk) = SmallDisk::mount("1m") else {
        eprintln!("skipped: mounting a tmpfs needs root (scripts/test.sh runs as root in CI)");
        return;
    };
    let mut settings = test_settings().await;
    settings.ack = AckMode::Wal;
    settings.wal_dir = disk.path.join("wal");
    settings.wal_segment_bytes = 64 * 1024;
    let app = spawn_app_from(settings.clone()).await;
    assert_eq!(app.post_ticket(numbered_ticket(0)).await.status(), 202);
    // Nothing committed, so no segment is deleted and the disk stays full.
    let lock = TicketsLocked::take(&app.database_url).await;
    let filler = disk.fill();

    let mut statuses = Vec::new();
    for order in 1..=2_000 {
        statuses.push(app.post_ticket(numbered_ticket(order)).await.status().as_u16());
    }
    let refused = statuses.iter().filter(|status| **status == 503).count();
    let files = files_in(&settings.wal_dir);
    let ready = app.get("/readyz").await;
    let ready_status = ready.status();
    let ready_text = ready.text().await.expect("readyz text");

    assert!(statuses.iter().all(|status| *status == 202 || *status == 503), "{statuses:?}");
    assert!(statuses[1_900..].iter().all(|status| *status == 503), "a full disk refuses: {refused} of 2000 refused");
    assert!(files <= 3, "{files} files in the WAL directory after {refused} refusals");
    assert_eq!(ready_status, 503);
    assert!(ready_text.contains("write-ahead log"), "{ready_text}");

    std::fs::remove_file(filler).expect("space freed");
    lock.release().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.get("/readyz").await.status() != 200 {
        assert!(Instant::now() < deadline, "not ready again within 5 s of the space coming back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.post_ticket(numbered_ticket(2_000)).await.status(), 202);
    let accepted = statuses.iter().filter(|status| **status == 202).count() as i64 + 2;
    app.wait_for_count("tickets", accepted).await;
    app.stop().await;

    let restarted = spawn_app_from(settings).await;
    let metrics = restarted.get("/metrics").await.text().await.expect("metrics");
    assert!(metrics.contains("ticket_ingest_wal_truncations_total 0"), "a clean restart truncates nothing: {metrics}");
    restarted.stop().await;
}
