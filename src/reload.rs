//! SIGHUP: read the configuration again and apply what can change safely
//! while running — `batch_max_tickets`, `batch_max_wait_ms`,
//! `batch_max_bytes` (the next batch uses them) and `log_level` — logging
//! each change as old → new. Any other key that changed is reported as
//! needing a restart; a configuration that does not load is refused with
//! its message and the running one is kept.

use std::sync::Arc;

use crate::config::{ConfigError, Settings};
use crate::telemetry::LogLevelSetter;
use crate::writer::BatchTuning;

/// Reads the configuration from the same sources as at start.
pub type Loader = Box<dyn Fn() -> Result<Settings, ConfigError> + Send + Sync>;

pub struct Reloader {
    load: Loader,
    current: Settings,
    tuning: Arc<BatchTuning>,
    set_log_level: Option<LogLevelSetter>,
}

impl Reloader {
    pub fn new(
        load: Loader,
        current: Settings,
        tuning: Arc<BatchTuning>,
        set_log_level: Option<LogLevelSetter>,
    ) -> Self {
        Reloader { load, current, tuning, set_log_level }
    }

    /// Applies the configuration every time SIGHUP arrives.
    #[cfg(unix)]
    pub async fn run_on_sighup(mut self) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::warn!(message = "cannot listen for SIGHUP, no reload", %error);
                return;
            }
        };
        while hangups.recv().await.is_some() {
            self.reload();
        }
    }

    fn reload(&mut self) {
        let fresh = match (self.load)() {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::error!(message = "reload refused, the running configuration stays", %error);
                return;
            }
        };
        let old = &self.current;
        self.tuning.set(&fresh);
        for (key, old, new) in [
            ("batch_max_tickets", old.batch_max_tickets as u64, fresh.batch_max_tickets as u64),
            ("batch_max_wait_ms", old.batch_max_wait_ms, fresh.batch_max_wait_ms),
            ("batch_max_bytes", old.batch_max_bytes as u64, fresh.batch_max_bytes as u64),
        ] {
            if old != new {
                tracing::info!(message = "reloaded", key, old, new);
            }
        }
        if old.log_level != fresh.log_level {
            match self.set_log_level.as_ref().map(|set| set(&fresh.log_level)) {
                Some(Ok(())) | None => {
                    tracing::info!(message = "reloaded", key = "log_level", old = %old.log_level, new = %fresh.log_level);
                }
                Some(Err(error)) => tracing::error!(message = "log_level not reloaded", %error),
            }
        }
        let mut rest_old = old.clone();
        let mut rest_new = fresh.clone();
        for settings in [&mut rest_old, &mut rest_new] {
            settings.batch_max_tickets = 0;
            settings.batch_max_wait_ms = 0;
            settings.batch_max_bytes = 0;
            settings.log_level.clear();
        }
        if rest_old != rest_new {
            tracing::warn!(message = "other configuration changes take effect at the next restart");
        }
        self.current = fresh;
    }
}
