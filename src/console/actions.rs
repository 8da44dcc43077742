//! What the review desk changes, each in one transaction on the console's
//! pool; the JSON API and the pages' forms call the same functions.
//!
//! - [`record_review`] appends to `ticket_reviews`, the audit trail: a
//!   review is never updated (a trigger refuses it), a second one is
//!   another row; the latest is the ticket's current review.
//! - [`reprocess_ticket`] parses the stored raw bytes again with today's
//!   parser and, when anything comes out different, rewrites the ticket and
//!   the catalogue the way `ticket-ingest reprocess` does
//!   ([`rewrite_with_todays_parser`], the one call into `reprocess`).
//! - [`correct_ticket`] stores a corrected body as a new ticket, written by
//!   the writers' own `store::write_batch` (its lines enter the catalogue),
//!   and links both: the new one `corrects` the original, the original is
//!   `superseded_by` the new one. A ticket is corrected once: the
//!   original's row is locked `FOR UPDATE` and a correction refused when
//!   its `superseded_by` is set, in the correction's transaction, so a
//!   second correction waits for the first and then sees it. That is the
//!   rule on partitioned tables, which cannot hold the unique index on
//!   `corrects` that plain ones also have. A later correction corrects
//!   the correction.
//!   The original keeps its lines and their counts in the catalogue: it is
//!   kept as it was received.

use bytes::Bytes;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::queries::{self, Review, TicketDetail};
use super::ConsoleError;
use crate::reprocess;
use crate::store;
use crate::ticket::NewTicket;

/// What a reviewer decided about a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Accepted,
    Rejected,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Accepted => "accepted",
            Decision::Rejected => "rejected",
        }
    }
}

/// Longest review note, in characters.
pub const MAX_NOTE_CHARS: usize = 2000;

/// A ticket before and after [`reprocess_ticket`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reprocessed {
    pub before: TicketDetail,
    pub after: TicketDetail,
    /// Whether today's parser understood anything differently.
    pub changed: bool,
}

/// Appends a review by `reviewer` (a token's name) to the ticket's trail.
pub async fn record_review(
    pool: &PgPool,
    ticket_id: Uuid,
    reviewer: &str,
    decision: Decision,
    note: &str,
) -> Result<Review, ConsoleError> {
    if note.chars().count() > MAX_NOTE_CHARS {
        return Err(ConsoleError::BadRequest(format!("note longer than {MAX_NOTE_CHARS} characters")));
    }
    super::storable_text("note", note)?;
    let row = sqlx::query(
        "INSERT INTO ticket_reviews (id, ticket_id, decision, note, reviewer, reviewed_at)
         SELECT $1, t.id, $3, $4, $5, clock_timestamp() FROM tickets t WHERE t.id = $2
         RETURNING id, ticket_id, decision, note, reviewer, reviewed_at",
    )
    .bind(Uuid::now_v7())
    .bind(ticket_id)
    .bind(decision.as_str())
    .bind(note)
    .bind(reviewer)
    .fetch_optional(pool)
    .await?;
    match row {
        Some(row) => Ok(queries::review_of_row(&row)?),
        None => Err(ConsoleError::NotFound("ticket")),
    }
}

/// Parses the ticket's raw bytes again; rewrites it, its lines and the
/// catalogue if the result differs.
pub async fn reprocess_ticket(pool: &PgPool, id: Uuid) -> Result<Reprocessed, ConsoleError> {
    let mut transaction = pool.begin().await?;
    let stored: Option<(time::OffsetDateTime, Vec<u8>)> =
        sqlx::query_as("SELECT received_at, raw FROM tickets WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *transaction)
            .await?;
    let Some((received_at, raw)) = stored else { return Err(ConsoleError::NotFound("ticket")) };
    let before = queries::ticket(&mut transaction, id).await?.ok_or(ConsoleError::NotFound("ticket"))?;
    let ticket = NewTicket::known(id, received_at, None, Bytes::from(raw));
    let changed = differs(&before, &ticket);
    if changed {
        rewrite_with_todays_parser(&mut transaction, &ticket).await?;
    }
    let after = queries::ticket(&mut transaction, id).await?.ok_or(ConsoleError::NotFound("ticket"))?;
    transaction.commit().await?;
    Ok(Reprocessed { before, after, changed })
}

/// The one call into the reprocessing write path: the row, its lines and
/// the catalogue, in the caller's transaction.
async fn rewrite_with_todays_parser(connection: &mut PgConnection, ticket: &NewTicket) -> Result<(), sqlx::Error> {
    reprocess::write_changes(connection, std::slice::from_ref(ticket)).await.map(|_lines| ())
}

/// Whether `ticket` as parsed today differs from what is stored.
fn differs(stored: &TicketDetail, ticket: &NewTicket) -> bool {
    let parsed = &ticket.parsed;
    let problems = serde_json::to_value(&parsed.problems).unwrap_or_default();
    let same_lines = stored.lines.len() == parsed.lines.len()
        && stored.lines.iter().zip(&parsed.lines).all(|(old, new)| {
            old.line_no == new.line_no
                && old.product_id == new.product_id
                && old.name == new.name
                && old.price == new.price
        });
    !(stored.status == parsed.status.as_str()
        && stored.order_id == parsed.order_id
        && stored.vat == parsed.vat
        && stored.total == parsed.total
        && stored.problems == problems
        && same_lines)
}

/// Stores `raw` as a new ticket correcting `original`; returns the new one.
pub async fn correct_ticket(pool: &PgPool, original: Uuid, raw: Bytes) -> Result<TicketDetail, ConsoleError> {
    if raw.is_empty() {
        return Err(ConsoleError::BadRequest("empty body: send the corrected ticket".to_string()));
    }
    let mut transaction = pool.begin().await?;
    let superseded: Option<Option<Uuid>> =
        sqlx::query_scalar("SELECT superseded_by FROM tickets WHERE id = $1 FOR UPDATE")
            .bind(original)
            .fetch_optional(&mut *transaction)
            .await?;
    match superseded {
        None => return Err(ConsoleError::NotFound("ticket")),
        Some(Some(correction)) => {
            return Err(ConsoleError::Conflict(format!(
                "ticket already corrected by {correction}: correct that one instead"
            )))
        }
        Some(None) => {}
    }
    // A fresh UUIDv7 without idempotency key cannot conflict, so the
    // batch takes its one-statement path inside this transaction.
    let ticket = NewTicket::arrived(raw, None);
    store::write_batch(&mut transaction, &[&ticket]).await?;
    sqlx::query("UPDATE tickets SET corrects = $1 WHERE id = $2")
        .bind(original)
        .bind(ticket.id)
        .execute(&mut *transaction)
        .await?;
    sqlx::query("UPDATE tickets SET superseded_by = $1 WHERE id = $2")
        .bind(ticket.id)
        .bind(original)
        .execute(&mut *transaction)
        .await?;
    let corrected = queries::ticket(&mut transaction, ticket.id).await?.ok_or(ConsoleError::NotFound("ticket"))?;
    transaction.commit().await?;
    Ok(corrected)
}
