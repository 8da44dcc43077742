//! schemathesis, with all its checks, against `openapi.yaml` and the
//! service: generated requests (valid ones, invalid ones, methods the file
//! does not list) must get the answers the file documents.
//!
//! `scripts/test.sh` installs the pinned version when it is missing; the
//! binary is `$SCHEMATHESIS`, else `schemathesis` on the `PATH`. The run is
//! bounded: a few examples per operation, a timeout per request and one
//! for the whole process.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{spawn_app_with, temp_dir};

/// The version `scripts/test.sh` installs; its command-line flags are the
/// ones used here (they changed between 3.x and 4.x).
const VERSION: &str = "4.32.5";
/// Test cases per operation and phase.
const MAX_EXAMPLES: &str = "30";
/// The whole run: schemathesis itself takes 5-10 s on a 2-core machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn schemathesis() -> String {
    std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_the_openapi_file_does_not_document() {
    let version = Command::new(schemathesis()).arg("--version").output();
    let version = match version {
        Ok(output) => String::from_utf8_lossy(&output.stdout).trim().to_string(),
        Err(error) => panic!(
            "{} cannot run ({error}): scripts/test.sh installs schemathesis=={VERSION}, or set SCHEMATHESIS",
            schemathesis()
        ),
    };
    assert!(version.ends_with(VERSION), "{version}: the flags below are those of schemathesis {VERSION}");
    let app = spawn_app_with(|settings| settings.signing_secrets = Vec::new()).await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = temp_dir("schemathesis");
    let log = work.join("schemathesis.log");

    let mut child = Command::new(schemathesis())
        .current_dir(&work)
        .arg("--config-file")
        .arg(root.join("tests/api/schemathesis.toml"))
        .arg("run")
        .arg(root.join("openapi.yaml"))
        .args(["--url", &app.address, "--checks", "all", "--max-examples", MAX_EXAMPLES])
        // The review desk's paths are on its own listener.
        .args(["--exclude-path-regex", "^/(api/|login)"])
        .args(["--seed", "1", "--workers", "1", "--request-timeout", "5", "--generation-database", "none"])
        .args(["--no-color", "--output-truncate", "false"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log file"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start schemathesis");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let output = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.is_some(), "schemathesis still running after {RUN_TIMEOUT:?}:\n{output}");
    assert!(status.is_some_and(|status| status.success()), "schemathesis found failures:\n{output}");
}
