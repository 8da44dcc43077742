//! Settings: defaults → config file → `TICKET_INGEST_<KEY>` environment →
//! command-line flags, each layer overriding the one before.
//!
//! Every key is documented in `config/ticket-ingest.toml`. A value of the
//! wrong type or out of range stops the start with a message naming the key.
//!
//! The keys are the fields of [`Settings`], and nothing else lists them: the
//! environment layer, SIGHUP's reload (which names what changed) and the
//! documentation test take them from `Settings::default()` serialized
//! ([`defaults_by_key`]); the command-line flags are checked against them
//! by a test.
//!
//! Values are parsed once, as they are read, into what their consumers
//! take: a [`DatabaseUrl`], signing [`Secret`]s, [`AdminTokens`], the
//! console's `Option<SocketAddr>`. A value its parser refuses stops the
//! start like a value out of range, naming its key and where it came from.
//!
//! # The environment layer
//! `TICKET_INGEST_<KEY>` sets `<key>`. A value is read as figment reads
//! environment variables (`4`, `true`, `"text"`, `[1, 2]`), except that a
//! list-valued key (one whose default is a list) also takes a single item
//! or items separated by commas, taken as text: `a`, `a,b` and `[a, b]` are
//! lists, so that a secret store can hand over one secret as it is. An empty
//! value is refused there (`[]` is the empty list), lest a store that failed
//! to deliver switches a list off.
//!
//! A `TICKET_INGEST_*` variable that names no key is refused, as an unknown
//! key in the file is, and with the same exit code: a typo must not leave a
//! default in force in silence. The project's scripts read a few such
//! variables of their own ([`SCRIPT_VARIABLES`]); those are accepted.

mod environment;
mod validate;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::database_url::{self, DatabaseUrl};
use crate::partition::{Interval, Layout};
use crate::signature::Secret;
use environment::EnvironmentLayer;
pub use values::{AckMode, AdminToken, AdminTokens, HoldForStandbys, LogFormat, MIN_ADMIN_SECRET_CHARS};

/// The file read when no `--config` is given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "config/ticket-ingest.toml";

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "TICKET_INGEST_";

/// `TICKET_INGEST_*` variables that are not keys: the project's scripts read
/// them, and the service inherits them from the scripts' environment.
/// `TICKET_INGEST_PG_PORT`: the port of the private PostgreSQL of
/// `scripts/pg.sh` (`scripts/run.sh`, `loadtest/`).
pub const SCRIPT_VARIABLES: [&str; 1] = ["TICKET_INGEST_PG_PORT"];

/// The effective configuration of one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address the HTTP listener binds.
    pub listen: SocketAddr,
    /// PostgreSQL URL; `DATABASE_URL` is used when this is unset. A libpq
    /// host list with `target_session_attrs` follows a failover.
    pub database_url: Option<DatabaseUrl>,
    /// PostgreSQL URL of a read replica for the console's reads and
    /// `reprocess`'s; `database_url` when unset. Writes never go there.
    pub read_database_url: Option<DatabaseUrl>,
    /// Threads of the HTTP runtime; 0 means one per CPU core.
    pub http_threads: usize,
    /// Connections of the shared pool (migrations, readiness checks,
    /// idempotency key lookups). Each writer has its own connection on top
    /// of these.
    pub db_pool_size: u32,
    /// When a request is answered: `wal`, `commit` or `memory`.
    pub ack: AckMode,
    /// Tickets accepted but not yet committed, at most (the admission budget).
    pub queue_capacity: usize,
    /// Bytes those tickets may take, bodies and parsed lines, at most.
    pub queue_max_bytes: usize,
    /// Batch writer threads, each with its own database connection.
    pub writers: usize,
    /// A batch is flushed when it holds this many tickets…
    pub batch_max_tickets: usize,
    /// …or this long after its first ticket arrived. 0: as soon as the
    /// queue is momentarily empty (the next batch gathers during the flush).
    pub batch_max_wait_ms: u64,
    /// …or once its tickets take this many bytes (as the admission budget
    /// counts them), so that a batch of large tickets stays small in memory.
    pub batch_max_bytes: usize,
    /// Largest accepted body, after gzip decoding.
    pub max_body_bytes: usize,
    /// Most request headers accepted; more is answered `431`.
    pub max_headers: usize,
    /// Largest request head (request line and headers) buffered for one
    /// connection; a longer head is answered `431`.
    pub max_head_bytes: usize,
    /// Connections served at once; past this the listener stops accepting
    /// (new connections wait in the kernel's backlog) until one closes.
    pub max_connections: usize,
    /// Bytes of request bodies being received at once, counted as they
    /// arrive; past this a body is refused with `503`.
    pub receive_max_bytes: usize,
    /// The same, for the bodies of one peer address.
    pub receive_max_bytes_per_peer: usize,
    /// After its first 2 s, a body must have arrived at this many bytes per
    /// second on average, else `408`.
    pub body_min_bytes_per_s: u64,
    /// A client must send its request head within this time.
    pub header_read_timeout_ms: u64,
    /// A client must send its whole body within this time.
    pub body_read_timeout_ms: u64,
    /// Seconds a refused producer is told to wait (`Retry-After`).
    pub retry_after_s: u32,
    /// Directory of the write-ahead log segments (replayed at every start).
    pub wal_dir: PathBuf,
    /// A segment is closed and a new one started past this size.
    pub wal_segment_bytes: u64,
    /// Past this many bytes on disk, tickets are refused with `503`.
    pub wal_max_bytes: u64,
    /// Whether a record committed on the primary stays in the log until
    /// the standbys flushed its commit: `off`, `auto` or `always`.
    pub wal_hold_for_standbys: HoldForStandbys,
    /// How many standbys must have flushed a commit before its records
    /// leave the log.
    pub wal_standbys_flushed: usize,
    /// How long an `Idempotency-Key` is kept in the database: a repeat
    /// within it is answered with the first id, whichever instance takes
    /// it and whatever restarts happened meanwhile.
    pub idempotency_retention_hours: u64,
    /// Standard Webhooks secrets (`whsec_…`); when any is set, every
    /// `POST /ticket` must be signed with one of them, else `401`.
    pub signing_secrets: Vec<Secret>,
    /// How far `webhook-timestamp` may be from our clock, in seconds.
    pub signing_tolerance_s: u64,
    /// Apply pending migrations before serving.
    pub migrate_on_start: bool,
    /// `pretty` for people, `json` for log pipelines.
    pub log_format: LogFormat,
    /// A tracing filter: `info`, `debug`, `ticket_ingest=debug,sqlx=warn`…
    pub log_level: String,
    /// How long shutdown waits for in-flight requests to finish.
    pub shutdown_grace_ms: u64,
    /// Address of the review desk (`console`), a listener for people apart
    /// from the webhook's; empty: no console.
    #[serde(with = "values::optional_address")]
    pub admin_listen: Option<SocketAddr>,
    /// Tokens of the review desk, `name:secret` or a bare `secret`; none:
    /// no console. The name is who a review is recorded as.
    pub admin_tokens: AdminTokens,
    /// Connections of the console's own pool, apart from the ingest's.
    pub admin_db_pool_size: u32,
    /// Longest a console statement may run before PostgreSQL cancels it.
    pub admin_statement_timeout_ms: u64,
    /// Partitions of `tickets` and `ticket_lines` made by `migrate
    /// --partitioned` and `partition`: `daily` or `monthly`.
    pub partition_interval: Interval,
    /// Partitions kept ready ahead of now.
    pub partition_premake: u32,
    /// Partitions wholly older than this are dropped by the maintenance, a
    /// PostgreSQL interval such as `90 days` or `13 months`; empty: kept
    /// for ever.
    pub partition_retention: String,
    /// Seconds between two runs of pg_partman's maintenance by `serve` on a
    /// partitioned database; 0: the service never runs it (pg_cron does).
    pub partition_maintenance_s: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 9098)),
            database_url: None,
            read_database_url: None,
            http_threads: 0,
            db_pool_size: 4,
            ack: AckMode::Wal,
            queue_capacity: 20_000,
            queue_max_bytes: 64 * 1024 * 1024,
            writers: 2,
            batch_max_tickets: 500,
            batch_max_wait_ms: 0,
            batch_max_bytes: 4 * 1024 * 1024,
            max_body_bytes: 64 * 1024,
            max_headers: 64,
            max_head_bytes: 16 * 1024,
            max_connections: 4096,
            receive_max_bytes: 32 * 1024 * 1024,
            receive_max_bytes_per_peer: 8 * 1024 * 1024,
            body_min_bytes_per_s: 1024,
            header_read_timeout_ms: 5_000,
            body_read_timeout_ms: 10_000,
            retry_after_s: 1,
            wal_dir: PathBuf::from(".data/wal"),
            wal_segment_bytes: 64 * 1024 * 1024,
            wal_max_bytes: 1024 * 1024 * 1024,
            wal_hold_for_standbys: HoldForStandbys::Auto,
            wal_standbys_flushed: 1,
            idempotency_retention_hours: 7 * 24,
            signing_secrets: Vec::new(),
            signing_tolerance_s: 300,
            migrate_on_start: true,
            log_format: LogFormat::Pretty,
            log_level: "info".to_string(),
            shutdown_grace_ms: 10_000,
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9099))),
            admin_tokens: AdminTokens::default(),
            admin_db_pool_size: 2,
            admin_statement_timeout_ms: 2_000,
            partition_interval: Interval::Monthly,
            partition_premake: 4,
            partition_retention: String::new(),
            partition_maintenance_s: 3_600,
        }
    }
}

/// Every key with its default value: `Settings::default()` serialized, so
/// that a field added to `Settings` is a key everywhere without more ado.
pub fn defaults_by_key() -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(Settings::default()) {
        Ok(serde_json::Value::Object(map)) => map,
        other => unreachable!("Settings serializes to a map of its fields, not {other:?}"),
    }
}

/// Every key, as spelled in the file, in alphabetical order.
pub fn keys() -> Vec<String> {
    defaults_by_key().into_iter().map(|(key, _)| key).collect()
}

/// A configuration that cannot be used, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(String),
    #[error("{0}")]
    Invalid(Box<figment::Error>),
    #[error("invalid value for key `{key}`: {reason}")]
    OutOfRange { key: &'static str, reason: String },
    /// A value its parser refused (a URL, a token, an address, a secret);
    /// the reason never shows the value, which may be a secret.
    #[error("invalid value for key `{key}` ({origin}): {reason}")]
    Refused { key: String, origin: String, reason: String },
    /// `TICKET_INGEST_*` variables that name no key, each described with
    /// the key it probably meant.
    #[error(
        "unknown environment variable {}: {ENV_PREFIX}<KEY> sets one of the keys {}; besides, only {} (read by the scripts) is accepted",
        .unknown.join(", "),
        keys().join(", "),
        SCRIPT_VARIABLES.join(", ")
    )]
    UnknownVariables { unknown: Vec<String> },
    /// A list-valued key's variable that holds no list; its value is not
    /// shown, as it may be a secret.
    #[error("environment variable {variable} {reason}")]
    NotAList { variable: String, reason: &'static str },
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> ConfigError {
        let (figment::error::Kind::Message(reason), Some(key), Some(metadata), Some(profile)) =
            (&error.kind, error.path.first(), &error.metadata, &error.profile)
        else {
            return ConfigError::Invalid(Box::new(error));
        };
        let origin = match &metadata.source {
            Some(figment::Source::File(path)) => format!("{} {}", metadata.name, path.display()),
            Some(_) => "a command-line flag".to_string(),
            None => format!("{} in {}", metadata.interpolate(profile, &error.path[..1]), metadata.name),
        };
        ConfigError::Refused { key: key.clone(), origin, reason: reason.clone() }
    }
}

impl Settings {
    /// Layers the sources. `file` is `--config`; `overrides` are the flags,
    /// as a partial map of keys (absent keys are left alone).
    pub fn load(file: Option<&Path>, overrides: impl figment::Provider) -> Result<Settings, ConfigError> {
        let environment: Vec<(String, String)> = std::env::vars_os()
            .map(|(name, value)| (name.to_string_lossy().into_owned(), value.to_string_lossy().into_owned()))
            .collect();
        Settings::load_with_environment(file, &environment, overrides)
    }

    /// [`Settings::load`] with `environment`, pairs of name and value, in
    /// place of the process's environment variables.
    pub fn load_with_environment(
        file: Option<&Path>,
        environment: &[(String, String)],
        overrides: impl figment::Provider,
    ) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        match file {
            Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path.display().to_string())),
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE))
            }
            None => {}
        }
        let environment_layer = EnvironmentLayer::read(environment)?;
        if !environment_layer.values.contains_key("database_url") {
            if let Some((_, url)) = environment.iter().find(|(name, _)| name == "DATABASE_URL") {
                if let Err(reason) = DatabaseUrl::parse(url) {
                    return Err(ConfigError::Refused {
                        key: "database_url".to_string(),
                        origin: "DATABASE_URL in the environment".to_string(),
                        reason,
                    });
                }
                figment = figment.merge(Serialized::default("database_url", url));
            }
        }
        figment = figment.merge(environment_layer).merge(overrides);
        let settings: Settings = figment.extract().map_err(ConfigError::from)?;
        settings.validate()?;
        Ok(settings)
    }

    /// The database written to: `database_url`, or an error saying how to
    /// give one.
    pub fn database(&self) -> anyhow::Result<&DatabaseUrl> {
        self.database_url.as_ref().ok_or_else(|| {
            anyhow::anyhow!("no database configured: set `database_url` in the config file, TICKET_INGEST_DATABASE_URL or DATABASE_URL")
        })
    }

    /// The database read from by the console and `reprocess`:
    /// `read_database_url`, else [`Settings::database`].
    pub fn read_database(&self) -> anyhow::Result<&DatabaseUrl> {
        match &self.read_database_url {
            Some(url) => Ok(url),
            None => self.database(),
        }
    }

    pub fn batch_max_wait(&self) -> Duration {
        Duration::from_millis(self.batch_max_wait_ms)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    pub fn idempotency_retention(&self) -> Duration {
        Duration::from_secs(self.idempotency_retention_hours * 3600)
    }

    /// How the partitions are cut, made ahead and kept.
    pub fn partition_layout(&self) -> Layout {
        let retention = self.partition_retention.trim();
        Layout {
            interval: self.partition_interval,
            premake: self.partition_premake,
            retention: (!retention.is_empty()).then(|| retention.to_string()),
        }
    }

    /// How often `serve` runs pg_partman's maintenance; `None`: never.
    pub fn partition_maintenance_every(&self) -> Option<Duration> {
        (self.partition_maintenance_s > 0).then(|| Duration::from_secs(self.partition_maintenance_s))
    }

    /// The batch triggers (`batch_max_*`), the keys applied while running.
    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            batch_max_tickets: self.batch_max_tickets,
            batch_max_wait_ms: self.batch_max_wait_ms,
            batch_max_bytes: self.batch_max_bytes,
        }
    }

    /// The effective configuration as TOML, the secrets hidden: passwords
    /// of the URLs, signing secrets, and the admin tokens' secrets (their
    /// names are shown).
    pub fn to_toml_hiding_secrets(&self) -> anyhow::Result<String> {
        let mut shown = toml::Table::try_from(self)?;
        for key in ["database_url", "read_database_url"] {
            if let Some(toml::Value::String(url)) = shown.get_mut(key) {
                *url = database_url::hide_password(url);
            }
        }
        let hidden = |count: usize| toml::Value::Array(vec![toml::Value::from("***"); count]);
        shown.insert("signing_secrets".to_string(), hidden(self.signing_secrets.len()));
        let names = self.admin_tokens.iter().map(|token| toml::Value::from(format!("{}:***", token.name))).collect();
        shown.insert("admin_tokens".to_string(), toml::Value::Array(names));
        Ok(toml::to_string(&shown)?)
    }
}

/// The batch triggers, as one value: what SIGHUP applies to the running
/// writers. The field names are the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BatchLimits {
    pub batch_max_tickets: usize,
    pub batch_max_wait_ms: u64,
    pub batch_max_bytes: usize,
}

impl BatchLimits {
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.batch_max_wait_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_overrides() -> Serialized<serde_json::Value> {
        Serialized::defaults(serde_json::json!({}))
    }

    #[test]
    fn the_shipped_config_file_parses_to_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_FILE);
        let from_file: Settings = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::file_exact(&path))
            .extract()
            .expect("shipped config parses");
        assert_eq!(from_file, Settings::default());
    }

    #[test]
    fn every_key_is_documented_in_the_shipped_config_file() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_FILE);
        let text = std::fs::read_to_string(path).expect("shipped config readable");
        for key in keys() {
            assert!(text.contains(&format!("\n{key} =")) || text.contains(&format!("\n# {key} =")), "{key} missing");
        }
    }

    #[test]
    fn a_timeout_beyond_an_hour_is_refused_rather_than_overflowing_a_deadline() {
        let overrides = Serialized::defaults(serde_json::json!({ "body_read_timeout_ms": u64::MAX }));
        let error = Settings::load(Some(Path::new("/dev/null")), overrides).unwrap_err();
        assert!(error.to_string().contains("`body_read_timeout_ms`"), "{error}");
    }

    #[test]
    fn an_out_of_range_value_names_its_key() {
        let overrides = Serialized::defaults(serde_json::json!({ "writers": 0 }));
        let error = Settings::load(Some(Path::new("/dev/null")), overrides).unwrap_err();
        assert!(error.to_string().contains("`writers`"), "{error}");
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        let overrides = Serialized::defaults(serde_json::json!({ "batch_max_tickets": "many" }));
        let error = Settings::load(Some(Path::new("/dev/null")), overrides).unwrap_err();
        assert!(error.to_string().contains("batch_max_tickets"), "{error}");
    }

    #[test]
    fn an_unknown_ack_mode_is_refused() {
        let overrides = Serialized::defaults(serde_json::json!({ "ack": "eventually" }));
        let error = Settings::load(Some(Path::new("/dev/null")), overrides).unwrap_err();
        assert!(error.to_string().contains("ack"), "{error}");
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const OLD_SECRET: &str = "whsec_b2xkLXNlY3JldC1rZXktZm9yLXRlc3Rz";

    /// Loads with no file, no flags and exactly `variables` as the environment.
    fn load_with(variables: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let environment: Vec<(String, String)> =
            variables.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        Settings::load_with_environment(Some(Path::new("/dev/null")), &environment, no_overrides())
    }

    /// A field missing from the map (say, skipped when serialized) would be
    /// missing here, and `Settings` would not deserialize from it; an
    /// `Option` would, but the shipped file documents it (test below).
    #[test]
    fn a_partition_retention_is_a_number_and_a_unit_or_nothing() {
        for good in ["", "90 days", "1 month", "13 months", "2 years"] {
            let settings = load_with(&[("TICKET_INGEST_PARTITION_RETENTION", good)]).expect(good);
            assert_eq!(settings.partition_layout().retention.is_some(), !good.is_empty());
        }
        for bad in ["90", "days", "0 days", "3 fortnights", "1 day; DROP TABLE tickets"] {
            let error = load_with(&[("TICKET_INGEST_PARTITION_RETENTION", bad)]).expect_err(bad);
            assert!(error.to_string().to_lowercase().contains("partition_retention"), "{error}");
        }
    }

    #[test]
    fn the_keys_are_the_fields_of_settings() {
        let from_keys: Settings =
            serde_json::from_value(serde_json::Value::Object(defaults_by_key())).expect("every field");
        assert_eq!(from_keys, Settings::default());
        assert!(keys().contains(&"signing_secrets".to_string()) && keys().contains(&"database_url".to_string()));
    }

    #[test]
    fn every_key_in_the_shipped_config_file_is_a_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_FILE);
        let text = std::fs::read_to_string(path).expect("shipped config readable");
        let known_keys = keys();
        for line in text.lines() {
            let assignment = line.strip_prefix("# ").unwrap_or(line);
            let Some((name, _)) = assignment.split_once(" = ") else { continue };
            if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                assert!(known_keys.contains(&name.to_string()), "{name} is documented but is no field of Settings");
            }
        }
    }

    #[test]
    fn a_variable_sets_its_key() {
        let settings = load_with(&[("TICKET_INGEST_WRITERS", "4"), ("TICKET_INGEST_ACK", "commit")]).expect("loads");
        assert_eq!((settings.writers, settings.ack), (4, AckMode::Commit));
    }

    #[test]
    fn a_misspelled_variable_is_refused_naming_it_and_the_key_meant() {
        let error = load_with(&[("TICKET_INGEST_BATCH_MAX_TICKTS", "5")]).unwrap_err();

        let message = error.to_string();
        assert!(matches!(error, ConfigError::UnknownVariables { .. }), "{message}");
        assert!(
            message.contains("TICKET_INGEST_BATCH_MAX_TICKTS (did you mean TICKET_INGEST_BATCH_MAX_TICKETS?)"),
            "{message}"
        );
        assert!(message.contains("batch_max_tickets, batch_max_wait_ms"), "the keys are listed: {message}");
    }

    #[test]
    fn every_unknown_variable_is_named_with_a_suggestion_only_for_a_near_miss() {
        let error = load_with(&[("TICKET_INGEST_WIRTERS", "4"), ("TICKET_INGEST_COLOUR", "blue")]).unwrap_err();

        let message = error.to_string();
        assert!(message.contains("TICKET_INGEST_COLOUR, TICKET_INGEST_WIRTERS (did you mean TICKET_INGEST_WRITERS?)"));
    }

    #[test]
    fn the_scripts_variables_are_accepted_and_other_variables_ignored() {
        let settings = load_with(&[("TICKET_INGEST_PG_PORT", "5500"), ("PGPORT", "5432"), ("TICKET_INGEST", "x")]);
        assert_eq!(settings.expect("loads"), Settings::default());
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_variable() {
        let error = load_with(&[("TICKET_INGEST_WRITERS", "many")]).unwrap_err();
        assert!(error.to_string().contains("TICKET_INGEST_WRITERS"), "{error}");
    }

    fn texts(secrets: &[Secret]) -> Vec<String> {
        secrets.iter().cloned().map(String::from).collect()
    }

    #[test]
    fn a_list_key_takes_a_single_value() {
        let settings = load_with(&[("TICKET_INGEST_SIGNING_SECRETS", SECRET)]).expect("loads");
        assert_eq!(texts(&settings.signing_secrets), [SECRET]);
    }

    #[test]
    fn a_list_key_takes_values_separated_by_commas() {
        let settings = load_with(&[("TICKET_INGEST_SIGNING_SECRETS", &format!("{SECRET}, {OLD_SECRET},"))]);
        assert_eq!(texts(&settings.expect("loads").signing_secrets), [SECRET, OLD_SECRET]);
    }

    #[test]
    fn a_list_key_takes_the_file_syntax_quoted_or_not() {
        let bare = load_with(&[("TICKET_INGEST_SIGNING_SECRETS", &format!("[{SECRET}, {OLD_SECRET}]"))]);
        let quoted = load_with(&[("TICKET_INGEST_SIGNING_SECRETS", &format!(r#"["{SECRET}","{OLD_SECRET}"]"#))]);
        let empty = load_with(&[("TICKET_INGEST_SIGNING_SECRETS", "[]")]);

        assert_eq!(texts(&bare.expect("bare list loads").signing_secrets), [SECRET, OLD_SECRET]);
        assert_eq!(texts(&quoted.expect("quoted list loads").signing_secrets), [SECRET, OLD_SECRET]);
        assert!(empty.expect("empty list loads").signing_secrets.is_empty());
    }

    #[test]
    fn an_empty_value_for_a_list_key_is_refused() {
        let error = load_with(&[("TICKET_INGEST_SIGNING_SECRETS", " ")]).unwrap_err();
        assert!(matches!(error, ConfigError::NotAList { .. }), "{error}");
    }

    #[test]
    fn a_broken_list_is_refused_without_showing_the_secret() {
        let error = load_with(&[("TICKET_INGEST_SIGNING_SECRETS", &format!("[{SECRET}"))]).unwrap_err();

        let message = error.to_string();
        assert!(message.contains("TICKET_INGEST_SIGNING_SECRETS"), "{message}");
        assert!(!message.contains(SECRET), "{message}");
    }

    #[test]
    fn database_url_is_the_fallback_of_its_prefixed_variable() {
        let fallback = load_with(&[("DATABASE_URL", "postgres://fallback/db")]).expect("loads");
        let both = load_with(&[
            ("DATABASE_URL", "postgres://fallback/db"),
            ("TICKET_INGEST_DATABASE_URL", "postgres://own/db"),
        ]);

        assert_eq!(fallback.database_url.as_ref().map(DatabaseUrl::as_str), Some("postgres://fallback/db"));
        assert_eq!(both.expect("loads").database_url.as_ref().map(DatabaseUrl::as_str), Some("postgres://own/db"));
    }

    /// The project's scripts, tests and docs set only keys and
    /// `SCRIPT_VARIABLES`: the service started by them is not refused.
    #[test]
    fn every_variable_the_project_uses_is_a_key_or_a_script_variable() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![root.join("Makefile"), root.join("README.md")];
        for directory in ["scripts", "loadtest", "docker", "tests", "docs", "config", ".ci"] {
            collect_files(&root.join(directory), &mut files);
        }
        let defaults = defaults_by_key();
        // Except the tests of refusals, which misspell on purpose.
        files.retain(|file| !file.ends_with("tests/api/config.rs"));
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file) else { continue };
            for (offset, _) in text.match_indices(ENV_PREFIX) {
                let rest = &text[offset + ENV_PREFIX.len()..];
                let suffix: String =
                    rest.chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
                if suffix.is_empty() || suffix.ends_with('_') {
                    continue; // `TICKET_INGEST_<KEY>`, `TICKET_INGEST_*`
                }
                let name = format!("{ENV_PREFIX}{suffix}");
                let known =
                    defaults.contains_key(&suffix.to_ascii_lowercase()) || SCRIPT_VARIABLES.contains(&name.as_str());
                assert!(known, "{} uses {name}, neither a key nor in SCRIPT_VARIABLES", file.display());
            }
        }
    }

    fn collect_files(directory: &Path, files: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(directory) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                collect_files(&path, files);
            } else {
                files.push(path);
            }
        }
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let error = Settings::load(Some(Path::new("/nonexistent/ticket-ingest.toml")), no_overrides()).unwrap_err();
        assert!(matches!(error, ConfigError::MissingFile(_)));
    }
}
