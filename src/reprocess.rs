//! `ticket-ingest reprocess --status invalid|partial`: re-parse stored raw
//! tickets with today's parser, so that tickets stored under an older parser
//! get today's understanding.
//!
//! Tickets are read in keyset order `(received_at, id)`, `batch_size` at a
//! time. For each ticket whose status, fields or problems come out different,
//! one transaction per batch:
//! 1. subtracts its old lines from `products.times_seen`,
//! 2. updates the `tickets` row, deletes its old lines and inserts the new
//!    ones (the same statements as the writers, [`store`]),
//! 3. upserts the products of the new lines with the writers' rule: the
//!    latest ticket sets name and price, `times_seen` counts every line.
//!
//! So running it twice changes nothing the second time, and counts stay
//! exact. The raw bytes are never touched. Progress is logged after every
//! batch with the last key; `--after-id` resumes after that ticket. A batch
//! that hits a transient database error (deadlock with the live writers,
//! connection lost) is retried; `--dry-run` only reports.

use std::io::IsTerminal;

use anyhow::Context;
use bytes::Bytes;
use rust_decimal::Decimal;
use sqlx::{Connection, PgConnection};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::store::{self, Failure};
use crate::ticket::NewTicket;

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

/// Runs the whole reprocessing; returns what it did.
pub async fn run(database_url: &str, options: &Options) -> anyhow::Result<Summary> {
    let mut connection = PgConnection::connect(database_url).await.context("connecting to PostgreSQL")?;
    let since = options.since.unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut cursor = start_cursor(&mut connection, options.after_id, since).await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tickets
         WHERE status = $1 AND status <> 'ok' AND received_at >= $2 AND (received_at, id) > ($3, $4)",
    )
    .bind(&options.status)
    .bind(since)
    .bind(cursor.0)
    .bind(cursor.1)
    .fetch_one(&mut connection)
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
            .fetch_all(&mut connection)
            .await?;
        let Some(last) = batch.last() else { break };
        cursor = (last.received_at, last.id);
        let changed = changed_tickets(&batch, &mut summary);
        if !options.dry_run && !changed.is_empty() {
            summary.lines_written += write_with_retry(&mut connection, database_url, &changed).await?;
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
        let ticket = NewTicket::known(stored.id, stored.received_at, None, Bytes::from(stored.raw.clone()));
        let parsed = &ticket.parsed;
        let problems = (!parsed.problems.is_empty()).then(|| serde_json::to_value(&parsed.problems).ok()).flatten();
        let same = stored.status == parsed.status.as_str()
            && stored.order_id == parsed.order_id
            && stored.vat == parsed.vat
            && stored.total == parsed.total
            && stored.problems == problems;
        if same {
            continue;
        }
        summary.changed += 1;
        summary.count_transition(&stored.status, parsed.status.as_str());
        changed.push(ticket);
    }
    changed
}

async fn write_with_retry(
    connection: &mut PgConnection,
    database_url: &str,
    changed: &[NewTicket],
) -> anyhow::Result<u64> {
    let mut attempt = 0;
    loop {
        match write_changes(connection, changed).await {
            Ok(lines) => return Ok(lines),
            Err(error) if attempt < MAX_RETRIES && store::classify(&error) == Failure::Transient => {
                attempt += 1;
                let delay = store::backoff(attempt);
                tracing::warn!(message = "reprocess batch failed, retrying", attempt, delay_ms = delay.as_millis() as u64, %error);
                tokio::time::sleep(delay).await;
                if let Ok(fresh) = store::connect(database_url).await {
                    *connection = fresh;
                }
            }
            Err(error) => return Err(error).context("writing a reprocessed batch"),
        }
    }
}

/// One transaction: old lines out of the counts, rows updated, new lines in.
pub(crate) async fn write_changes(connection: &mut PgConnection, changed: &[NewTicket]) -> Result<u64, sqlx::Error> {
    let ids: Vec<Uuid> = changed.iter().map(|ticket| ticket.id).collect();
    let mut transaction = connection.begin().await?;
    sqlx::query(SUBTRACT_OLD_LINES).bind(&ids).execute(&mut *transaction).await?;
    sqlx::query("DELETE FROM ticket_lines WHERE ticket_id = ANY($1)").bind(&ids).execute(&mut *transaction).await?;
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
        .execute(&mut *transaction)
        .await?;
    let tickets: Vec<&NewTicket> = changed.iter().collect();
    let lines = store::insert_lines(&mut transaction, &tickets).await?;
    store::upsert_products(&mut transaction, &tickets).await?;
    transaction.commit().await?;
    Ok(lines)
}
