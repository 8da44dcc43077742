//! `tickets` and `ticket_lines` partitioned by `received_at`, managed by
//! pg_partman 4.7 (Debian's `postgresql-15-partman`), in schema `partman`.
//!
//! # One conversion
//! Whether the tables are created partitioned (`migrate --partitioned`, on
//! the empty tables the migrations just made) or an existing database is
//! converted (`partition`), the same steps run, each safe to repeat, so a
//! run that stopped anywhere is resumed by running it again:
//!
//! 1. [`install`]: `CREATE EXTENSION pg_partman` (schema `partman`).
//! 2. [`swap`], one short transaction, only while `tickets` is still a
//!    plain table: `LOCK` both tables (`ACCESS EXCLUSIVE`, waiting at most
//!    [`LOCK_TIMEOUT`] and retried, so that writers never queue behind it
//!    for long), rename them `tickets_unpartitioned` and
//!    `ticket_lines_unpartitioned` (their indexes get the same suffix),
//!    create the partitioned parents `LIKE` them (columns, defaults, checks:
//!    a column a later migration added comes along), primary keys with
//!    `received_at` — `(id, received_at)` and `(ticket_id, received_at,
//!    line_no)` — every other index of the old tables recreated from its
//!    definition (`pg_get_indexdef`), and `partman.create_parent` makes the
//!    partitions of this interval and the next, and a default partition.
//!    From its commit on, the writers' statements, which name `tickets`,
//!    write to the new tables: PostgreSQL re-plans a prepared statement
//!    whose table changed. Then [`make_partitions`] attaches the partitions
//!    from the oldest `received_at` of the old table to now, and those
//!    ahead, outside the swap's transaction.
//! 3. [`move_batch`], repeated: the newest `batch_size` tickets of the old
//!    table and their lines are deleted from it and inserted into the new
//!    tables in one statement, hence one transaction. A ticket is always in
//!    exactly one of the two tables, with its lines. Row locks only: the
//!    writers are not blocked.
//! 4. [`finish`]: drop the emptied old tables, move any row that landed in
//!    a default partition (a ticket older than the first partition, or
//!    beyond the premade ones) to its partition
//!    (`partman.partition_data_time`), apply the settings
//!    ([`configure`]) and run the maintenance once.
//!
//! # Unique indexes
//! A unique index on a partitioned table must contain the partition key.
//! Two on `tickets` do not, and are not recreated:
//! `tickets_idempotency_key`, replaced by the `idempotency_keys` table, and
//! `tickets_corrects` (one correction per ticket), which the review desk
//! keeps by locking the original row `FOR UPDATE` and refusing when its
//! `superseded_by` is set, in the correction's transaction
//! (`console::actions::correct_ticket`). Any other unique index without
//! `received_at` stops the swap with PostgreSQL's message.
//!
//! # Maintenance
//! [`maintain`] writes the retention and premake of [`Layout`] into
//! `partman.part_config` (the configuration file is the truth), then calls
//! `partman.run_maintenance` for both parents: it attaches the partitions
//! ahead and detaches and drops those past the retention. pg_partman takes
//! an advisory lock, so several instances running it at once are harmless.
//! Attaching a partition takes `SHARE UPDATE EXCLUSIVE` on the parent (the
//! writers go on), detaching one `ACCESS EXCLUSIVE` (the writers wait for
//! it): every statement here waits at most [`LOCK_TIMEOUT`] for a lock, and
//! a maintenance that could not get one is tried again at the next tick.
//!
//! # What is not partitioned
//! `products` and `product_history` are aggregates keyed by product, updated
//! in place by every batch; they have no time to be cut by. `ticket_reviews`
//! is small and kept for ever.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::{Connection, Executor, PgConnection, Row};

use crate::database_url::DatabaseUrl;

/// The longest any statement of this module waits for a table lock; the
/// writers queued behind it wait at most that long.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// How often [`swap`] tries to take its locks before giving up.
const SWAP_ATTEMPTS: u32 = 30;

/// The tables partitioned, parent first: a ticket's lines move with it.
pub const PARENTS: [&str; 2] = ["public.tickets", "public.ticket_lines"];

/// Indexes of the plain `tickets` that a partitioned table cannot have
/// (unique without `received_at`): see the module docs.
const NOT_RECREATED: [&str; 2] = [
    // Idempotency moved to the idempotency_keys table (migration
    // 20261202000001), which drops this index on plain tables too.
    "tickets_idempotency_key",
    // One correction per ticket: kept by console::actions::correct_ticket
    // with FOR UPDATE on the original in the correction's transaction.
    "tickets_corrects",
];

/// The suffix of the old tables (and their indexes) during a conversion.
const OLD_SUFFIX: &str = "_unpartitioned";

/// The advisory lock key held by a conversion, so two never run at once.
const CONVERSION_LOCK: i64 = 0x7469_636b_6574_7031; // "ticketp1"

/// One partition per day or per month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    Daily,
    Monthly,
}

impl Interval {
    /// As `partman.create_parent` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Daily => "daily",
            Interval::Monthly => "monthly",
        }
    }
}

/// How the partitions are cut, made ahead and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub interval: Interval,
    /// Partitions made ahead of now (and behind it on an empty table).
    pub premake: u32,
    /// A PostgreSQL interval (`90 days`, `13 months`): partitions wholly
    /// older than this are detached and dropped. `None`: kept for ever.
    pub retention: Option<String>,
}

/// What a conversion did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Whether this run swapped the tables (false: an earlier run had).
    pub swapped: bool,
    /// How long the swap waited for its locks (the writers queue behind
    /// it meanwhile) …
    pub swap_lock_wait: Duration,
    /// … and held them.
    pub swap_lock_held: Duration,
    pub batches: u64,
    pub tickets_moved: u64,
    pub lines_moved: u64,
    /// Whether the old tables are gone and the conversion complete.
    pub finished: bool,
}

/// Where a database stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Plain tables.
    Plain,
    /// Partitioned, rows still to move from the old tables.
    Moving,
    /// Partitioned, conversion complete.
    Partitioned,
}

/// Whether `tickets` is partitioned, and whether rows are still to move.
pub async fn state(connection: &mut PgConnection) -> Result<State, sqlx::Error> {
    let row = sqlx::query(
        "SELECT (SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass('public.tickets')),
                to_regclass('public.tickets_unpartitioned') IS NOT NULL",
    )
    .fetch_one(&mut *connection)
    .await?;
    let partitioned: Option<bool> = row.try_get(0)?;
    let old_left: bool = row.try_get(1)?;
    Ok(match (partitioned.unwrap_or(false), old_left) {
        (false, _) => State::Plain,
        (true, true) => State::Moving,
        (true, false) => State::Partitioned,
    })
}

/// Options of [`convert`].
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Tickets moved per transaction.
    pub batch_size: i64,
    /// Stop after this many batches (a later run continues); `None`: move
    /// everything and finish.
    pub max_batches: Option<u64>,
}

/// Converts the migrated plain tables to partitioned ones, or continues a
/// conversion that stopped: every step in the module docs, in order.
/// `on_batch` is called after each committed batch with the totals so far.
/// The `partition` command: connects to the primary of `database`, then
/// [`convert`]s, logging progress every 100 batches and the swap's locks.
pub async fn run(database: &DatabaseUrl, layout: &Layout, pace: Pace) -> anyhow::Result<Progress> {
    use anyhow::Context;
    let mut connection = crate::store::connect(database).await.context("connecting to PostgreSQL")?;
    let progress = convert(&mut connection, layout, pace, |progress| {
        if progress.batches % 100 == 0 {
            tracing::info!(message = "moving rows", tickets = progress.tickets_moved, lines = progress.lines_moved);
        }
    })
    .await
    .context("partitioning tickets and ticket_lines (pg_partman: Debian's postgresql-15-partman)")?;
    if progress.swapped {
        tracing::info!(
            message = "tables swapped",
            lock_wait_ms = progress.swap_lock_wait.as_millis() as u64,
            lock_held_ms = progress.swap_lock_held.as_millis() as u64
        );
    }
    Ok(progress)
}

pub async fn convert(
    connection: &mut PgConnection,
    layout: &Layout,
    pace: Pace,
    mut on_batch: impl FnMut(&Progress),
) -> Result<Progress, sqlx::Error> {
    // Session-level, released at the end or when the connection drops.
    sqlx::query("SELECT pg_advisory_lock($1)").bind(CONVERSION_LOCK).execute(&mut *connection).await?;
    let result = async {
        let mut progress = Progress::default();
        install(connection).await?;
        if state(connection).await? == State::Plain {
            (progress.swap_lock_wait, progress.swap_lock_held) = swap(connection, layout).await?;
            progress.swapped = true;
        }
        if state(connection).await? == State::Moving {
            make_partitions(connection, layout).await?;
        }
        while state(connection).await? == State::Moving {
            if pace.max_batches.is_some_and(|max| progress.batches >= max) {
                return Ok(progress);
            }
            let (tickets, lines) = move_batch(connection, pace.batch_size).await?;
            if tickets == 0 && lines == 0 {
                drop_old_tables(connection).await?;
                break;
            }
            progress.batches += 1;
            progress.tickets_moved += tickets;
            progress.lines_moved += lines;
            on_batch(&progress);
        }
        finish(connection, layout).await?;
        progress.finished = true;
        Ok(progress)
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(CONVERSION_LOCK).execute(&mut *connection).await;
    result
}

/// Step 1: the extension, in schema `partman`.
pub async fn install(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    connection
        .execute("CREATE SCHEMA IF NOT EXISTS partman; CREATE EXTENSION IF NOT EXISTS pg_partman SCHEMA partman")
        .await?;
    Ok(())
}

/// Step 2, one transaction (module docs); returns how long it waited for
/// the locks and how long it held them. A lock not granted within [`LOCK_TIMEOUT`] rolls it back and it
/// is tried again, up to [`SWAP_ATTEMPTS`] times.
pub async fn swap(connection: &mut PgConnection, layout: &Layout) -> Result<(Duration, Duration), sqlx::Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match swap_once(connection, layout).await {
            Ok(times) => return Ok(times),
            Err(error) if is_lock_timeout(&error) && attempt < SWAP_ATTEMPTS => {
                tracing::warn!(message = "tables busy, swap tried again", attempt, %error);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

async fn swap_once(connection: &mut PgConnection, layout: &Layout) -> Result<(Duration, Duration), sqlx::Error> {
    let mut transaction = connection.begin().await?;
    sqlx::query(&format!("SET LOCAL lock_timeout = '{}ms'", LOCK_TIMEOUT.as_millis()))
        .execute(&mut *transaction)
        .await?;
    let asked = Instant::now();
    transaction.execute("LOCK TABLE tickets, ticket_lines IN ACCESS EXCLUSIVE MODE").await?;
    let granted = Instant::now();
    for (table, primary_key) in [("tickets", "id, received_at"), ("ticket_lines", "ticket_id, received_at, line_no")] {
        let indexes: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT c.relname::text, pg_get_indexdef(i.indexrelid), i.indisprimary
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = $1::regclass ORDER BY c.relname",
        )
        .bind(format!("public.{table}"))
        .fetch_all(&mut *transaction)
        .await?;
        transaction.execute(format!("ALTER TABLE {table} RENAME TO {table}{OLD_SUFFIX}").as_str()).await?;
        for (name, _, _) in &indexes {
            let renamed = format!("{name}{OLD_SUFFIX}");
            transaction.execute(format!("ALTER INDEX \"{name}\" RENAME TO \"{renamed}\"").as_str()).await?;
        }
        transaction
            .execute(
                format!(
                    "CREATE TABLE {table} (LIKE {table}{OLD_SUFFIX} INCLUDING DEFAULTS INCLUDING CONSTRAINTS
                        INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMMENTS)
                     PARTITION BY RANGE (received_at)"
                )
                .as_str(),
            )
            .await?;
        let primary_key_name = indexes.iter().find(|(_, _, primary)| *primary).map(|(name, _, _)| name.as_str());
        let primary_key_name =
            primary_key_name.unwrap_or(if table == "tickets" { "tickets_pkey" } else { "ticket_lines_pkey" });
        transaction
            .execute(
                format!("ALTER TABLE {table} ADD CONSTRAINT \"{primary_key_name}\" PRIMARY KEY ({primary_key})")
                    .as_str(),
            )
            .await?;
        for (name, definition, primary) in &indexes {
            if *primary || NOT_RECREATED.contains(&name.as_str()) {
                continue;
            }
            // The definition names the table as `public.{table}`, now the
            // partitioned parent, and the index by its original name.
            transaction.execute(definition.as_str()).await?;
        }
    }
    // This interval's partition and the next only: pg_partman takes tens
    // of milliseconds per partition, and the writers wait for this
    // transaction. The others are attached after it ([`make_partitions`]).
    for parent in PARENTS {
        sqlx::query(
            "SELECT partman.create_parent(p_parent_table => $1, p_control => 'received_at', p_type => 'native',
                                          p_interval => $2, p_premake => 1, p_start_partition => now()::text,
                                          p_jobmon => false)",
        )
        .bind(parent)
        .bind(layout.interval.as_str())
        .execute(&mut *transaction)
        .await?;
    }
    configure(&mut transaction, layout).await?;
    transaction.commit().await?;
    Ok((granted - asked, granted.elapsed()))
}

/// Step 2, continued, after the swap's commit and before any row moves:
/// the partitions from the oldest ticket left in the old table to now,
/// then those ahead of now ([`maintain`]). Each is attached under `SHARE
/// UPDATE EXCLUSIVE` on the parent: the writers go on. Partitions that
/// exist are skipped, so a resumed conversion runs it again harmlessly.
pub async fn make_partitions(connection: &mut PgConnection, layout: &Layout) -> Result<(), sqlx::Error> {
    let (unit, step) = match layout.interval {
        Interval::Daily => ("day", "1 day"),
        Interval::Monthly => ("month", "1 month"),
    };
    // A scan of the old table, without a lock that would hold the writers.
    let oldest: Option<time::OffsetDateTime> =
        sqlx::query_scalar(&format!("SELECT min(received_at) FROM tickets{OLD_SUFFIX}"))
            .fetch_one(&mut *connection)
            .await?;
    if let Some(oldest) = oldest {
        for parent in PARENTS {
            sqlx::query(
                "SELECT partman.create_partition_time(
                     p_parent_table => $1,
                     p_partition_times => ARRAY(SELECT generate_series(date_trunc($2, $3::timestamptz), now(), $4::interval)),
                     p_analyze => false)",
            )
            .bind(parent)
            .bind(unit)
            .bind(oldest)
            .bind(step)
            .execute(&mut *connection)
            .await?;
        }
    }
    maintain(connection, layout).await.map(|_managed| ())
}

/// Step 3: moves the newest `batch_size` tickets left in the old table and
/// their lines, in one statement; returns the tickets and lines moved. When
/// no ticket is left, moves lines without a ticket (there should be none).
pub async fn move_batch(connection: &mut PgConnection, batch_size: i64) -> Result<(u64, u64), sqlx::Error> {
    let row = sqlx::query(MOVE_BATCH).bind(batch_size).fetch_one(&mut *connection).await?;
    let (tickets, lines): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    if tickets > 0 {
        return Ok((tickets as u64, lines as u64));
    }
    let lines: i64 = sqlx::query_scalar(MOVE_ORPHAN_LINES).bind(batch_size).fetch_one(&mut *connection).await?;
    Ok((0, lines as u64))
}

/// A ticket and its lines go in the same transaction: a reader sees it, and
/// them, in the old tables or in the new ones. `ON CONFLICT DO NOTHING`: a
/// ticket the service stored again meanwhile (a write-ahead log replayed
/// after a crash) is already in the new table, and stays there once.
const MOVE_BATCH: &str = "
    WITH batch AS (
        SELECT id FROM tickets_unpartitioned ORDER BY id DESC LIMIT $1
    ), moved_tickets AS (
        DELETE FROM tickets_unpartitioned t USING batch WHERE t.id = batch.id RETURNING t.*
    ), moved_lines AS (
        DELETE FROM ticket_lines_unpartitioned l USING batch WHERE l.ticket_id = batch.id RETURNING l.*
    ), inserted_tickets AS (
        INSERT INTO tickets SELECT * FROM moved_tickets ON CONFLICT DO NOTHING
    ), inserted_lines AS (
        INSERT INTO ticket_lines SELECT * FROM moved_lines ON CONFLICT DO NOTHING
    )
    SELECT (SELECT count(*) FROM moved_tickets), (SELECT count(*) FROM moved_lines)";

const MOVE_ORPHAN_LINES: &str = "
    WITH moved_lines AS (
        DELETE FROM ticket_lines_unpartitioned
        WHERE ctid IN (SELECT ctid FROM ticket_lines_unpartitioned LIMIT $1)
        RETURNING *
    ), inserted_lines AS (
        INSERT INTO ticket_lines SELECT * FROM moved_lines ON CONFLICT DO NOTHING
    )
    SELECT count(*) FROM moved_lines";

async fn drop_old_tables(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    let mut transaction = connection.begin().await?;
    sqlx::query(&format!("SET LOCAL lock_timeout = '{}ms'", LOCK_TIMEOUT.as_millis()))
        .execute(&mut *transaction)
        .await?;
    transaction.execute(format!("DROP TABLE IF EXISTS ticket_lines{OLD_SUFFIX}, tickets{OLD_SUFFIX}").as_str()).await?;
    transaction.commit().await
}

/// Step 4: rows of the default partitions to their partitions, settings
/// applied, maintenance run once.
pub async fn finish(connection: &mut PgConnection, layout: &Layout) -> Result<(), sqlx::Error> {
    for parent in PARENTS {
        loop {
            let moved: i64 = sqlx::query_scalar(
                "SELECT partman.partition_data_time(p_parent_table => $1, p_batch_count => 10,
                                                    p_lock_wait => $2::numeric, p_analyze => false)",
            )
            .bind(parent)
            .bind(LOCK_TIMEOUT.as_secs_f64())
            .fetch_one(&mut *connection)
            .await?;
            if moved == 0 {
                break;
            }
            tracing::info!(message = "rows moved out of the default partition", parent, rows = moved);
        }
    }
    maintain(connection, layout).await.map(|_managed| ())
}

/// Writes `layout`'s retention and premake into `partman.part_config`.
/// Partitions are made ahead even when no ticket arrives
/// (`infinite_time_partitions`), and the dropped ones are dropped, not kept
/// detached.
pub async fn configure(connection: &mut PgConnection, layout: &Layout) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE partman.part_config
         SET retention = $2, retention_keep_table = false, retention_keep_index = false,
             premake = $3, infinite_time_partitions = true
         WHERE parent_table = ANY($1)",
    )
    .bind(&PARENTS[..])
    .bind(layout.retention.as_deref())
    .bind(layout.premake as i32)
    .execute(connection)
    .await?;
    Ok(())
}

/// [`configure`], then `partman.run_maintenance` for each parent, in a
/// transaction of its own whose locks wait at most [`LOCK_TIMEOUT`]. Does
/// nothing (`Ok(false)`) when the tables are not managed by pg_partman.
pub async fn maintain(connection: &mut PgConnection, layout: &Layout) -> Result<bool, sqlx::Error> {
    // Two statements: one naming partman.part_config does not parse where
    // the extension is missing.
    let installed: bool = sqlx::query_scalar(
        "SELECT to_regclass('partman.part_config') IS NOT NULL
                AND EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_partman')",
    )
    .fetch_one(&mut *connection)
    .await?;
    if !installed {
        return Ok(false);
    }
    let parents: i64 = sqlx::query_scalar("SELECT count(*) FROM partman.part_config WHERE parent_table = ANY($1)")
        .bind(&PARENTS[..])
        .fetch_one(&mut *connection)
        .await?;
    if parents == 0 {
        return Ok(false);
    }
    configure(connection, layout).await?;
    // One transaction per parent: a partition detached from `tickets` keeps
    // its parent locked until the commit, not while `ticket_lines` is done.
    for parent in PARENTS {
        let mut transaction = connection.begin().await?;
        sqlx::query(&format!("SET LOCAL lock_timeout = '{}ms'", LOCK_TIMEOUT.as_millis()))
            .execute(&mut *transaction)
            .await?;
        sqlx::query("SELECT partman.run_maintenance(p_parent_table => $1, p_analyze => false, p_jobmon => false)")
            .bind(parent)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
    }
    Ok(true)
}

/// Runs [`maintain`] now and every `every` on a connection of `pool`, for
/// ever (abort the task to stop it). A failure (a lock not granted within
/// [`LOCK_TIMEOUT`], the database away) is logged and tried again at the
/// next tick; a database whose tables are not partitioned is checked again
/// at each tick too, so a conversion made while the service runs is
/// maintained without a restart.
pub async fn maintain_every(pool: sqlx::PgPool, layout: Layout, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let started = Instant::now();
        let outcome = match pool.acquire().await {
            Ok(mut connection) => maintain(&mut connection, &layout).await,
            Err(error) => Err(error),
        };
        match outcome {
            Ok(true) => {
                tracing::info!(message = "partition maintenance done", took_ms = started.elapsed().as_millis() as u64)
            }
            Ok(false) => tracing::debug!(message = "tables not partitioned, no partition maintenance"),
            Err(error) => {
                tracing::warn!(message = "partition maintenance failed, tried again at the next tick", %error)
            }
        }
    }
}

/// The partitions of `parent` (`public.tickets`), oldest first, without the
/// default one.
pub async fn partitions(connection: &mut PgConnection, parent: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT partition_tablename FROM partman.show_partitions($1)")
        .bind(parent)
        .fetch_all(connection)
        .await
}

fn is_lock_timeout(error: &sqlx::Error) -> bool {
    // lock_not_available
    matches!(error, sqlx::Error::Database(database) if database.code().as_deref() == Some("55P03"))
}
