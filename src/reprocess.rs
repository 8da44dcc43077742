//! `ticket-ingest reprocess --status invalid|partial`: re-parse stored raw
//! tickets with today's parser, so that tickets stored under an older parser
//! get today's understanding.
//!
//! Tickets are read in keyset order `(received_at, id)`, `batch_size` at a
//! time. For each ticket whose status, fields or problems come out different,
//! one transaction per batch ([`apply_changes`]):
//! 1. locks the tickets' rows (`FOR UPDATE`, by id), so that two runs, or a
//!    run and [`reprocess_tickets`], never both take the same old lines away;
//! 2. moves `product_history` from the old lines to the new ones: one
//!    upsert of the differences per `(product_id, name, price)`, sorted by
//!    key like the writers' (old lines count −1, new ones +1), then deletes
//!    the rows of those keys whose count reached 0. First and last seen can
//!    only widen, and the new lines cannot widen a row the old ones were in
//!    (same ticket, same `received_at`); after a subtraction they still
//!    bound the row's sightings, not recomputed (that would scan
//!    `ticket_lines`);
//! 3. subtracts its old lines from `products.times_seen`,
//! 4. updates the `tickets` row, deletes its old lines and inserts the new
//!    ones (the same statements as the writers, [`store`]),
//! 5. upserts the products of the new lines with the writers' rule: the
//!    latest ticket sets name and price, `times_seen` counts every line.
//!
//! History before products, each in key order, as the writers take them
//! (see [`store`]). So running it twice changes nothing the second time,
//! and counts stay exact. The raw bytes are never touched. Progress is
//! logged after every batch with the last key; `--after-id` resumes after
//! that ticket. A batch that hits a transient database error (deadlock with
//! the live writers, connection lost) is retried; `--dry-run` only reports.
//!
//! The tickets to re-parse are read from `read_database_url` when it is
//! set (a replica): their raw bytes never change, and step 1 onwards runs
//! on `database_url`, on the rows as they are there, so a lagging replica
//! can only make a run miss the newest tickets.
//!
//! [`reprocess_tickets`] does the same for tickets chosen by id, whatever
//! their status, in the caller's transaction (the review console).

use std::io::IsTerminal;

use anyhow::Context;
use bytes::Bytes;
use rust_decimal::Decimal;
use sqlx::{Connection, PgConnection};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::database_url::DatabaseUrl;
use crate::store::{self, Backoff, Failure, HistoryKey, HistoryMerge, Retries};
use crate::ticket::{NewTicket, ParsedTicket};

/// Attempts after a transient failure before the run stops with the error.
const MAX_RETRIES: u32 = 5;

/// What to reprocess.
#[derive(Debug, Clone)]
pub struct Options {
    /// `invalid` or `partial`.
    pub status: String,
    pub since: Option<OffsetDateTime>,
    pub after_id: Option<Uuid>,
    pub batch_size: i64,
    pub dry_run: bool,
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub examined: u64,
    pub changed: u64,
    /// `(from, to, count)`.
    pub transitions: Vec<(String, String, u64)>,
    pub lines_written: u64,
}

impl Summary {
    fn count_transition(&mut self, from: &str, to: &str) {
        match self.transitions.iter_mut().find(|(old, new, _)| old == from && new == to) {
            Some((_, _, count)) => *count += 1,
            None => self.transitions.push((from.to_string(), to.to_string(), 1)),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(formatter, "examined: {}", self.examined)?;
        writeln!(formatter, "changed: {}", self.changed)?;
        for (from, to, count) in &self.transitions {
            writeln!(formatter, "  {from} → {to}: {count}")?;
        }
        writeln!(formatter, "unchanged: {}", self.examined - self.changed)?;
        write!(formatter, "lines written: {}", self.lines_written)
    }
}

#[derive(sqlx::FromRow)]
struct StoredTicket {
    id: Uuid,
    received_at: OffsetDateTime,
    status: String,
    order_id: Option<String>,
    vat: Option<Decimal>,
    total: Option<Decimal>,
    problems: Option<serde_json::Value>,
    raw: Vec<u8>,
}

/// `status <> 'ok'` repeats what `--status` guarantees, so that the partial
/// index `tickets_with_problems` also serves the generic plan of `$1`.
const SELECT_BATCH: &str = "
    SELECT id, received_at, status, order_id, vat, total, problems, raw
    FROM tickets
    WHERE status = $1 AND status <> 'ok' AND received_at >= $2 AND (received_at, id) > ($3, $4)
    ORDER BY received_at, id
    LIMIT $5";

const SUBTRACT_OLD_LINES: &str = "
    UPDATE products p SET times_seen = p.times_seen - old.seen
    FROM (SELECT product_id, count(*) AS seen FROM ticket_lines
          WHERE ticket_id = ANY($1) GROUP BY product_id ORDER BY product_id) AS old
    WHERE p.product_id = old.product_id";

const UPDATE_TICKETS: &str = "
    UPDATE tickets t SET status = u.status, order_id = u.order_id, vat = u.vat, total = u.total,
                         problems = u.problems::jsonb
    FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::numeric[], $5::numeric[], $6::text[])
         AS u(id, status, order_id, vat, total, problems)
    WHERE t.id = u.id";

/// Locks the tickets about to change, in id order.
const LOCK_TICKETS: &str = "SELECT id FROM tickets WHERE id = ANY($1) ORDER BY id FOR UPDATE";

/// The old lines as `product_history` counts them.
const OLD_HISTORY: &str = "
    SELECT product_id, left(name, $2) AS name, price, min(received_at), max(received_at), count(*)
    FROM ticket_lines WHERE ticket_id = ANY($1)
    GROUP BY 1, 2, 3";

/// After [`OLD_HISTORY`]'s lines were taken away: rows nothing counts any
/// more (only among the keys just touched, already locked).
const DELETE_EMPTY_HISTORY: &str = "
    DELETE FROM product_history h
    USING UNNEST($1::text[], $2::text[], $3::numeric[]) AS k(product_id, name, price)
    WHERE (h.product_id, h.name, h.price) = (k.product_id, k.name, k.price) AND h.times_seen <= 0";

/// Tickets read again by id, whatever their status, for [`reprocess_tickets`].
const SELECT_BY_ID: &str = "
    SELECT id, received_at, status, order_id, vat, total, problems, raw
    FROM tickets WHERE id = ANY($1) ORDER BY id FOR UPDATE";

/// One ticket of [`reprocess_tickets`]: what it was, what it is now.
#[derive(Debug, Clone)]
pub struct Reprocessed {
    pub id: Uuid,
    /// The stored status before: `ok`, `partial` or `invalid`.
    pub status_before: String,
    /// Today's parse of its raw bytes, as now stored.
    pub after: ParsedTicket,
    /// Whether status, fields or problems came out different (only then
    /// were the row, its lines, the history and the products written).
    pub changed: bool,
}

/// Re-parses the tickets `ids` (any status) with today's parser and stores
/// the ones that come out different, with their lines, product history and
/// products, exactly as `ticket-ingest reprocess` does — all in one
/// transaction on `connection`: its own, or nested in the caller's (a
/// savepoint) when `connection` is a transaction. The rows are locked
/// `FOR UPDATE` first. Ids not found are left out of the answer; the
/// answer is in id order.
///
/// Errors are the database's: [`store::classify`] tells a transient one
/// (a deadlock with the live writers, the connection lost: worth trying
/// again, nothing was written) from a data one.
pub async fn reprocess_tickets(connection: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<Reprocessed>, sqlx::Error> {
    let mut transaction = connection.begin().await?;
    let stored: Vec<StoredTicket> = sqlx::query_as(SELECT_BY_ID).bind(ids).fetch_all(&mut *transaction).await?;
    let mut answers = Vec::with_capacity(stored.len());
    let mut changed = Vec::new();
    for ticket in &stored {
        let reparsed = reparse(ticket);
        let is_changed = differs(ticket, &reparsed.parsed);
        answers.push(Reprocessed {
            id: ticket.id,
            status_before: ticket.status.clone(),
            after: reparsed.parsed.clone(),
            changed: is_changed,
        });
        if is_changed {
            changed.push(reparsed);
        }
    }
    if !changed.is_empty() {
        apply_changes(&mut transaction, &changed).await?;
    }
    transaction.commit().await?;
    Ok(answers)
}

/// Runs the whole reprocessing; returns what it did.
pub async fn run(database: &DatabaseUrl, read_database: &DatabaseUrl, options: &Options) -> anyhow::Result<Summary> {
    let mut reads = store::connect(read_database).await.context("connecting to PostgreSQL (read_database_url)")?;
    let mut connection = store::connect(database).await.context("connecting to PostgreSQL")?;
    let since = options.since.unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut cursor = start_cursor(&mut reads, options.after_id, since).await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tickets
         WHERE status = $1 AND status <> 'ok' AND received_at >= $2 AND (received_at, id) > ($3, $4)",
    )
    .bind(&options.status)
    .bind(since)
    .bind(cursor.0)
    .bind(cursor.1)
    .fetch_one(&mut reads)
    .await?;
    let progress = progress_bar(total as u64);
    let mut summary = Summary::default();
    loop {
        let batch: Vec<StoredTicket> = sqlx::query_as(SELECT_BATCH)
            .bind(&options.status)
            .bind(since)
            .bind(cursor.0)
            .bind(cursor.1)
            .bind(options.batch_size)
            .fetch_all(&mut reads)
            .await?;
        let Some(last) = batch.last() else { break };
        cursor = (last.received_at, last.id);
        let changed = changed_tickets(&batch, &mut summary);
        if !options.dry_run && !changed.is_empty() {
            summary.lines_written += write_with_retry(&mut connection, database, &changed).await?;
        }
        match &progress {
            Some(bar) => bar.inc(batch.len() as u64),
            None => {
                tracing::info!(message = "batch reprocessed", examined = summary.examined, changed = summary.changed, last_id = %cursor.1)
            }
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    Ok(summary)
}

/// `(received_at, id)` to continue after: the given ticket, or the start.
async fn start_cursor(
    connection: &mut PgConnection,
    after_id: Option<Uuid>,
    since: OffsetDateTime,
) -> anyhow::Result<(OffsetDateTime, Uuid)> {
    let Some(id) = after_id else { return Ok((since, Uuid::nil())) };
    let received_at: Option<OffsetDateTime> =
        sqlx::query_scalar("SELECT received_at FROM tickets WHERE id = $1").bind(id).fetch_optional(connection).await?;
    let received_at = received_at.with_context(|| format!("--after-id {id}: no such ticket"))?;
    Ok((received_at, id))
}

fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} tickets {per_sec} eta {eta}") {
        bar.set_style(style);
    }
    Some(bar)
}

/// Re-parses the batch; returns the tickets that come out different.
fn changed_tickets(batch: &[StoredTicket], summary: &mut Summary) -> Vec<NewTicket> {
    let mut changed = Vec::new();
    for stored in batch {
        summary.examined += 1;
        let ticket = reparse(stored);
        if !differs(stored, &ticket.parsed) {
            continue;
        }
        summary.changed += 1;
        summary.count_transition(&stored.status, ticket.parsed.status.as_str());
        changed.push(ticket);
    }
    changed
}

/// A stored ticket parsed again with today's parser; same id and time.
fn reparse(stored: &StoredTicket) -> NewTicket {
    NewTicket::known(stored.id, stored.received_at, None, Bytes::from(stored.raw.clone()))
}

/// Whether today's parse differs from what is stored: status, fields or
/// problems.
fn differs(stored: &StoredTicket, parsed: &ParsedTicket) -> bool {
    let problems = (!parsed.problems.is_empty()).then(|| serde_json::to_value(&parsed.problems).ok()).flatten();
    let same = stored.status == parsed.status.as_str()
        && stored.order_id == parsed.order_id
        && stored.vat == parsed.vat
        && stored.total == parsed.total
        && stored.problems == problems;
    !same
}

/// Writes `changed` ([`write_changes`]), retrying a transient failure up
/// to [`MAX_RETRIES`] times, each retry on a new connection when one opens.
async fn write_with_retry(
    connection: &mut PgConnection,
    database: &DatabaseUrl,
    changed: &[NewTicket],
) -> anyhow::Result<u64> {
    let is_transient = |error: &sqlx::Error| store::classify(error) == Failure::Transient;
    let retries = Retries::AtMost(MAX_RETRIES);
    let written =
        store::retry("reprocess batch failed, retrying", retries, is_transient, Backoff::new(), async |failed| {
            if failed > 0 {
                if let Ok(fresh) = store::connect(database).await {
                    *connection = fresh;
                }
            }
            write_changes(connection, changed).await
        })
        .await;
    written.context("writing a reprocessed batch")
}

/// One transaction: [`apply_changes`], committed.
pub(crate) async fn write_changes(connection: &mut PgConnection, changed: &[NewTicket]) -> Result<u64, sqlx::Error> {
    let mut transaction = connection.begin().await?;
    let lines = apply_changes(&mut transaction, changed).await?;
    transaction.commit().await?;
    Ok(lines)
}

/// Steps 1 to 5 of the module docs for the re-parsed tickets `changed`,
/// on `connection` (a transaction); returns the lines written.
async fn apply_changes(connection: &mut PgConnection, changed: &[NewTicket]) -> Result<u64, sqlx::Error> {
    let ids: Vec<Uuid> = changed.iter().map(|ticket| ticket.id).collect();
    sqlx::query(LOCK_TICKETS).bind(&ids).execute(&mut *connection).await?;
    move_history(connection, &ids, changed).await?;
    sqlx::query(SUBTRACT_OLD_LINES).bind(&ids).execute(&mut *connection).await?;
    sqlx::query("DELETE FROM ticket_lines WHERE ticket_id = ANY($1)").bind(&ids).execute(&mut *connection).await?;
    let mut statuses = Vec::with_capacity(changed.len());
    let mut order_ids = Vec::with_capacity(changed.len());
    let mut vats = Vec::with_capacity(changed.len());
    let mut totals = Vec::with_capacity(changed.len());
    let mut problems = Vec::with_capacity(changed.len());
    for ticket in changed {
        statuses.push(ticket.parsed.status.as_str());
        order_ids.push(ticket.parsed.order_id.as_deref());
        vats.push(ticket.parsed.vat);
        totals.push(ticket.parsed.total);
        problems.push(store::problems_json(&ticket.parsed));
    }
    sqlx::query(UPDATE_TICKETS)
        .bind(&ids)
        .bind(statuses)
        .bind(order_ids)
        .bind(vats)
        .bind(totals)
        .bind(problems)
        .execute(&mut *connection)
        .await?;
    let tickets: Vec<&NewTicket> = changed.iter().collect();
    let lines = store::insert_lines(connection, &tickets).await?;
    store::upsert_products(connection, &tickets).await?;
    Ok(lines)
}

/// Step 2: the history of the tickets `ids` goes from their stored lines to
/// the lines of `changed`, one sorted upsert of the differences; rows left
/// at 0 are deleted.
async fn move_history(connection: &mut PgConnection, ids: &[Uuid], changed: &[NewTicket]) -> Result<(), sqlx::Error> {
    let old: Vec<(String, String, Decimal, OffsetDateTime, OffsetDateTime, i64)> = sqlx::query_as(OLD_HISTORY)
        .bind(ids)
        .bind(store::HISTORY_NAME_MAX_CHARS as i32)
        .fetch_all(&mut *connection)
        .await?;
    let tickets: Vec<&NewTicket> = changed.iter().collect();
    let mut differences: HistoryMerge<'_> = store::merge_history(&tickets);
    for (product_id, name, price, first_seen_at, last_seen_at, times_seen) in &old {
        // The old lines are the same tickets' (same `received_at`): their
        // times are within the row's already, and widen nothing.
        differences
            .entry((product_id.as_str(), name.as_str(), *price))
            .and_modify(|seen| seen.add(-times_seen, *first_seen_at, *last_seen_at))
            .or_insert(store::HistorySeen {
                first_seen_at: *first_seen_at,
                last_seen_at: *last_seen_at,
                times_seen: -times_seen,
            });
    }
    differences.retain(|_, seen| seen.times_seen != 0);
    let decreased: Vec<HistoryKey<'_>> =
        differences.iter().filter(|(_, seen)| seen.times_seen < 0).map(|(key, _)| *key).collect();
    store::upsert_history(connection, differences).await?;
    if !decreased.is_empty() {
        let product_ids: Vec<&str> = decreased.iter().map(|key| key.0).collect();
        let names: Vec<&str> = decreased.iter().map(|key| key.1).collect();
        let prices: Vec<Decimal> = decreased.iter().map(|key| key.2).collect();
        sqlx::query(DELETE_EMPTY_HISTORY).bind(product_ids).bind(names).bind(prices).execute(&mut *connection).await?;
    }
    Ok(())
}
