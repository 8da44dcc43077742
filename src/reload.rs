//! SIGHUP: read the configuration again and apply what can change safely
//! while running — the batch triggers
//! ([`BatchLimits`](crate::config::BatchLimits): the next batch uses
//! them) and `log_level` — logging each change as old → new. Any other key
//! that changed is named as needing a restart (its value is not shown: it
//! may be a secret); a configuration that does not load is refused with its
//! message and the running one is kept.

use std::sync::Arc;

use crate::config::{ConfigError, Settings};
use crate::telemetry::LogLevelSetter;
use crate::writer::BatchTuning;

/// Reads the configuration from the same sources as at start.
pub type Loader = Box<dyn Fn() -> Result<Settings, ConfigError> + Send + Sync>;

/// The key reloaded besides [`BatchLimits`]'s.
const LOG_LEVEL: &str = "log_level";

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
        let batch_limit_keys = by_key(&fresh.batch_limits());
        self.tuning.set(fresh.batch_limits());
        let mut needs_restart = Vec::new();
        for (key, old, new) in changed_keys(&self.current, &fresh) {
            if batch_limit_keys.contains_key(&key) {
                tracing::info!(message = "reloaded", key, old = %old, new = %new);
            } else if key == LOG_LEVEL {
                match self.set_log_level.as_ref().map(|set| set(&fresh.log_level)) {
                    Some(Ok(())) | None => tracing::info!(message = "reloaded", key, old = %old, new = %new),
                    Some(Err(error)) => tracing::error!(message = "log_level not reloaded", %error),
                }
            } else {
                needs_restart.push(key);
            }
        }
        if !needs_restart.is_empty() {
            tracing::warn!(
                message = "other configuration changes take effect at the next restart",
                keys = needs_restart.join(", ")
            );
        }
        self.current = fresh;
    }
}

/// A value's keys and values, as the configuration spells them.
fn by_key(value: &impl serde::Serialize) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map,
        other => unreachable!("a struct serializes to a map of its fields, not {other:?}"),
    }
}

/// The keys whose values differ, with both values, in key order.
fn changed_keys(old: &Settings, new: &Settings) -> Vec<(String, serde_json::Value, serde_json::Value)> {
    let new = by_key(new);
    by_key(old)
        .into_iter()
        .filter_map(|(key, old_value)| {
            let new_value = new.get(&key).cloned().unwrap_or_default();
            (old_value != new_value).then_some((key, old_value, new_value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_batch_limit_is_a_key_and_only_the_changed_keys_are_named() {
        let old = Settings::default();
        let new = Settings { batch_max_tickets: 7, writers: 3, ..Settings::default() };

        let changed: Vec<String> = changed_keys(&old, &new).into_iter().map(|(key, _, _)| key).collect();

        assert_eq!(changed, ["batch_max_tickets", "writers"]);
        let keys = crate::config::keys();
        for key in by_key(&old.batch_limits()).keys() {
            assert!(keys.contains(key), "{key} is no key of the configuration");
        }
        assert!(keys.contains(&LOG_LEVEL.to_string()));
    }
}
