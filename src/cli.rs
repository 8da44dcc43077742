//! The command line: which command, which config file, and the flags that
//! override every other source of configuration; then the command runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use figment::providers::Serialized;
use serde::Serialize;
use ticket_ingest::config::{ConfigError, Settings};
use ticket_ingest::console::Console;
use ticket_ingest::reload::{self, Reloader};
use ticket_ingest::startup::Application;
use ticket_ingest::{partition, reprocess, signal, store, telemetry};

#[derive(Parser)]
#[command(version, about = "Cash-register tickets from a webhook into PostgreSQL")]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file [default: config/ticket-ingest.toml when it exists].
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(Subcommand, Clone)]
enum Command {
    /// Run the webhook service (the default).
    Serve,
    /// Apply pending database migrations, then exit.
    Migrate(MigrateArgs),
    /// Convert tickets and ticket_lines to tables partitioned by
    /// received_at (pg_partman), while the service runs; a re-run continues
    /// where a stopped one left off.
    Partition(PartitionArgs),
    /// Print the effective configuration, or name the key that is wrong.
    CheckConfig,
    /// Re-parse stored tickets of a status with today's parser and update them.
    Reprocess(ReprocessArgs),
    /// Run the review desk alone (`admin_listen`, `admin_tokens`), without
    /// the webhook: it reads and reviews, and may run on another host.
    Console,
}

#[derive(Args, Clone)]
struct MigrateArgs {
    /// Then partition tickets and ticket_lines (as `partition` does; on a
    /// fresh database the tables are empty and it is instant).
    #[arg(long)]
    partitioned: bool,
}

#[derive(Args, Clone)]
struct PartitionArgs {
    /// Tickets moved per transaction.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    batch_size: i64,
    /// Stop after this many batches; run again to continue.
    #[arg(long)]
    max_batches: Option<u64>,
}

#[derive(Args, Clone)]
struct ReprocessArgs {
    /// Which tickets: invalid or partial.
    #[arg(long, value_parser = ["invalid", "partial"])]
    status: String,
    /// Only tickets received at or after this time (RFC 3339).
    #[arg(long, value_parser = parse_rfc3339)]
    since: Option<time::OffsetDateTime>,
    /// Resume after this ticket id (printed in the progress log).
    #[arg(long)]
    after_id: Option<uuid::Uuid>,
    /// Tickets per transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    batch_size: i64,
    /// Report what would change, change nothing.
    #[arg(long)]
    dry_run: bool,
}

fn parse_rfc3339(text: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(|error| error.to_string())
}

/// Flags override every other source; each is named after its config key.
#[derive(Args, Serialize)]
struct Overrides {
    /// Address to bind, e.g. 0.0.0.0:9098
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// PostgreSQL URL
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<String>,
    /// wal | commit | memory: when POST /ticket is answered 202
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    ack: Option<String>,
    /// Tickets accepted but not yet committed, at most
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_capacity: Option<usize>,
    /// Batch writer threads (one PostgreSQL connection each)
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    writers: Option<usize>,
    /// A batch is flushed at this many tickets
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_max_tickets: Option<usize>,
    /// ... or this long after its first ticket (0: at once)
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_max_wait_ms: Option<u64>,
    /// ... or at this many bytes of tickets
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_max_bytes: Option<usize>,
    /// Largest accepted body, after gzip decoding
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_body_bytes: Option<usize>,
    /// pretty | json
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<String>,
    /// error | warn | info | debug | trace, or a tracing filter
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_level: Option<String>,
}

/// Why a command did not succeed: the configuration (exit code 2), or the
/// command itself (1).
pub enum Failure {
    Config(ConfigError),
    Run(anyhow::Error),
}

impl Cli {
    /// Loads the configuration (defaults, file, environment, flags), then
    /// runs the command.
    pub fn run(self) -> Result<(), Failure> {
        let settings =
            Settings::load(self.config.as_deref(), Serialized::defaults(&self.overrides)).map_err(Failure::Config)?;
        let config = self.config.clone();
        let overrides = serde_json::to_value(&self.overrides).unwrap_or_default();
        let loader: reload::Loader =
            Box::new(move || Settings::load(config.as_deref(), Serialized::defaults(&overrides)));
        self.command.unwrap_or(Command::Serve).run(settings, loader).map_err(Failure::Run)
    }
}

impl Command {
    fn run(self, settings: Settings, loader: reload::Loader) -> anyhow::Result<()> {
        if let Command::CheckConfig = &self {
            print!("{}", settings.to_toml_hiding_secrets()?);
            return Ok(());
        }
        let set_log_level = telemetry::init(settings.log_format, &settings.log_level);
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if settings.http_threads > 0 {
            builder.worker_threads(settings.http_threads);
        }
        let runtime = builder.enable_all().build()?;
        runtime.block_on(async move {
            match self {
                Command::Migrate(args) => {
                    store::migrate_database(settings.database()?).await?;
                    if args.partitioned {
                        partition(&settings, partition::Pace { batch_size: 1000, max_batches: None }).await?;
                    }
                    Ok(())
                }
                Command::Partition(args) => {
                    let pace = partition::Pace { batch_size: args.batch_size, max_batches: args.max_batches };
                    partition(&settings, pace).await
                }
                Command::Reprocess(args) => reprocess(&settings, args).await,
                Command::Console => Console::build_alone(&settings).await?.run_until_stopped(signal::shutdown()).await,
                Command::Serve | Command::CheckConfig => {
                    let application = Application::build(settings.clone()).await?;
                    let reloader = Reloader::new(loader, settings, application.batch_tuning(), set_log_level);
                    tokio::spawn(reloader.run_on_sighup());
                    application.run_until_stopped(signal::shutdown()).await
                }
            }
        })
    }
}

async fn partition(settings: &Settings, pace: partition::Pace) -> anyhow::Result<()> {
    let layout = settings.partition_layout();
    let progress = partition::run(settings.database()?, &layout, pace).await?;
    if progress.finished {
        println!(
            "tickets and ticket_lines are partitioned ({}); {} tickets and {} lines moved",
            layout.interval.as_str(),
            progress.tickets_moved,
            progress.lines_moved
        );
    } else {
        println!(
            "stopped after {} batches ({} tickets, {} lines moved): run `ticket-ingest partition` again to continue",
            progress.batches, progress.tickets_moved, progress.lines_moved
        );
    }
    Ok(())
}

async fn reprocess(settings: &Settings, args: ReprocessArgs) -> anyhow::Result<()> {
    let options = reprocess::Options {
        status: args.status,
        since: args.since,
        after_id: args.after_id,
        batch_size: args.batch_size,
        dry_run: args.dry_run,
    };
    let summary = reprocess::run(settings.database()?, settings.read_database()?, &options).await?;
    if options.dry_run {
        println!("dry run, nothing written");
    }
    println!("{summary}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use ticket_ingest::database_url::DatabaseUrl;

    use super::*;

    const DATABASE_URL: &str = "postgres://localhost/tickets";

    /// Each flag of [`Overrides`] is a key of the configuration, spelled
    /// as the key with dashes, and sets it: every flag given its key's
    /// default value loads the defaults.
    #[test]
    fn every_flag_is_a_key_and_sets_it() {
        let defaults = ticket_ingest::config::defaults_by_key();
        let command = Cli::command();
        let flags: Vec<String> = command
            .get_arguments()
            .filter(|argument| argument.get_id() != "config")
            .map(|argument| argument.get_id().to_string())
            .collect();
        assert!(flags.len() >= 10, "{flags:?}");
        let mut arguments = vec!["ticket-ingest".to_string()];
        for flag in &flags {
            let default = defaults.get(flag).unwrap_or_else(|| panic!("--{flag} names no key"));
            let value = match default {
                serde_json::Value::String(text) => text.clone(),
                // `database_url`, unset by default.
                serde_json::Value::Null => DATABASE_URL.to_string(),
                other => other.to_string(),
            };
            arguments.push(format!("--{}={value}", flag.replace('_', "-")));
        }

        let cli = Cli::try_parse_from(&arguments).expect("every flag parses");
        let environment: Vec<(String, String)> = Vec::new();
        let settings = Settings::load_with_environment(
            Some(std::path::Path::new("/dev/null")),
            &environment,
            Serialized::defaults(&cli.overrides),
        );

        let expected = Settings { database_url: DatabaseUrl::parse(DATABASE_URL).ok(), ..Settings::default() };
        assert_eq!(settings.expect("loads"), expected);
    }
}
