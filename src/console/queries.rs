//! What the review desk reads, as typed results: the JSON API
//! ([`super::api`]) serializes them as they are, and server-rendered pages
//! can render the same values.
//!
//! Every function takes a connection, so that the caller chooses the
//! transaction: [`read_only`] for reads (a `READ ONLY` transaction on the
//! console's own pool, whose connections carry `statement_timeout`).
//!
//! # Ticket listings and their order
//! Newest first, in pages of `limit` (at most [`MAX_LIMIT`]), continued
//! with the opaque cursor `next` (keyset pagination: a page never skips or
//! repeats a ticket because others arrived meanwhile). The cursor holds
//! `(received_at, id)` of the last ticket shown. Which order, precisely,
//! depends on the index that serves it, so that no index is added to
//! `tickets` for the console (each one costs every insert):
//! - without a `status` filter, or with `status=ok`: by `id`, the UUIDv7
//!   primary key. An id is minted on arrival from the same clock as
//!   `received_at` (`NewTicket::arrived`; replayed tickets keep both), so
//!   id order is arrival order to the millisecond, and the primary key
//!   serves it. `since` / `until` become id bounds too ([`id_floor`],
//!   [`id_ceiling`], with [`ID_CLOCK_SLACK`] of margin), besides the exact
//!   test on `received_at`.
//! - with `status=partial` or `status=invalid`: by `(received_at, id)`,
//!   which the partial index `tickets_with_problems (status, received_at,
//!   id) WHERE status <> 'ok'` serves.
//!
//! Either order is total and the same for every page of one listing, so a
//! listing is stable. `problem=<code>` tests the `problems` array by
//! containment, served by the partial GIN index `tickets_problem_codes`
//! (only tickets with problems are in it); `order=<id>` by
//! `tickets_order_id`. The figures are in `docs/console.md`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Row, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

/// Page size when none is asked for.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page.
pub const MAX_LIMIT: i64 = 500;
/// How far apart an id's timestamp and its ticket's `received_at` may be,
/// at most, as far as time bounds on ids go (they are a millisecond apart
/// at most; the margin costs a few index entries read).
pub const ID_CLOCK_SLACK: Duration = Duration::from_secs(60);

/// A ticket's status, as a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TicketStatus {
    Ok,
    Partial,
    Invalid,
}

impl TicketStatus {
    pub fn parse(text: &str) -> Option<TicketStatus> {
        match text {
            "ok" => Some(TicketStatus::Ok),
            "partial" => Some(TicketStatus::Partial),
            "invalid" => Some(TicketStatus::Invalid),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TicketStatus::Ok => "ok",
            TicketStatus::Partial => "partial",
            TicketStatus::Invalid => "invalid",
        }
    }
}

/// Where a listing goes on: after this ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketCursor {
    pub received_at: OffsetDateTime,
    pub id: Uuid,
}

impl TicketCursor {
    /// The opaque text form: `<received_at in unix µs>.<id in hex>`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.received_at.unix_timestamp_nanos() / 1000, self.id.simple())
    }

    pub fn parse(text: &str) -> Option<TicketCursor> {
        let (micros, id) = text.split_once('.')?;
        let micros: i128 = micros.parse().ok()?;
        let received_at = OffsetDateTime::from_unix_timestamp_nanos(micros.checked_mul(1000)?).ok()?;
        if !(EARLIEST..LATEST).contains(&received_at) {
            return None;
        }
        Some(TicketCursor { received_at, id: Uuid::try_parse(id).ok()? })
    }
}

/// The times a filter or a cursor may name: every ticket is received
/// between them, PostgreSQL takes them, and a UUIDv7 bound can be made
/// from them ([`id_floor`], [`id_ceiling`]) without leaving its range.
pub const EARLIEST: OffsetDateTime = OffsetDateTime::UNIX_EPOCH;
/// 9999-01-01T00:00:00Z.
pub const LATEST: OffsetDateTime = match OffsetDateTime::from_unix_timestamp(253_370_764_800) {
    Ok(at) => at,
    Err(_) => panic!("9999-01-01 is a time"),
};

/// An RFC 3339 time from [`EARLIEST`] to [`LATEST`].
pub fn bounded_time(text: &str) -> Option<OffsetDateTime> {
    let at = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    (EARLIEST..LATEST).contains(&at).then_some(at)
}

/// What a time parameter `name` must be.
pub fn time_error(name: &str) -> String {
    format!("{name}: an RFC 3339 time from 1970-01-01T00:00:00Z to 9999-01-01T00:00:00Z, e.g. 2026-12-01T00:00:00Z")
}

impl TicketCursor {}

/// What `GET /api/v1/tickets` asks for.
#[derive(Debug, Clone, Default)]
pub struct TicketFilter {
    pub status: Option<TicketStatus>,
    /// A problem code, e.g. `bad_price`.
    pub problem: Option<String>,
    /// An order id, exactly.
    pub order_id: Option<String>,
    /// Received at or after.
    pub since: Option<OffsetDateTime>,
    /// Received before.
    pub until: Option<OffsetDateTime>,
    pub after: Option<TicketCursor>,
    /// 1 to [`MAX_LIMIT`].
    pub limit: i64,
}

/// The latest review of a ticket, or one of its trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Review {
    pub id: Uuid,
    pub ticket_id: Uuid,
    /// `accepted` or `rejected`.
    pub decision: String,
    pub note: String,
    /// The name of the token it was made with.
    pub reviewer: String,
    #[serde(with = "time::serde::rfc3339")]
    pub reviewed_at: OffsetDateTime,
}

/// A ticket in a listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TicketSummary {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub status: String,
    pub order_id: Option<String>,
    pub total: Option<Decimal>,
    /// `[{line, code, message}]`, empty for an ok ticket. From the sender:
    /// escape before showing.
    pub problems: serde_json::Value,
    /// The latest review, if any.
    pub review: Option<Review>,
}

/// One page of tickets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TicketPage {
    pub tickets: Vec<TicketSummary>,
    /// The cursor of the next page (`after=`), `None` on the last one.
    pub next: Option<String>,
}

/// A product line of a ticket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TicketLine {
    pub line_no: i32,
    pub product_id: String,
    pub name: String,
    pub price: Decimal,
}

/// Everything stored about a ticket but its raw bytes ([`raw_ticket`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TicketDetail {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub status: String,
    pub order_id: Option<String>,
    pub vat: Option<Decimal>,
    pub total: Option<Decimal>,
    pub idempotency_key: Option<String>,
    /// Length of the raw body.
    pub raw_bytes: i64,
    pub problems: serde_json::Value,
    pub lines: Vec<TicketLine>,
    /// Every review, oldest first: the audit trail.
    pub reviews: Vec<Review>,
    /// The ticket this one corrects.
    pub corrects: Option<Uuid>,
    /// The ticket that corrects this one.
    pub superseded_by: Option<Uuid>,
}

/// What `GET /api/v1/products` asks for.
#[derive(Debug, Clone, Default)]
pub struct ProductFilter {
    /// Part of the product id or of the name, any case.
    pub q: Option<String>,
    /// The last product id of the previous page.
    pub after: Option<String>,
    pub limit: i64,
}

/// A product of the catalogue: its latest name and price.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProductSummary {
    pub product_id: String,
    pub name: String,
    pub price: Decimal,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
    pub times_seen: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProductPage {
    pub products: Vec<ProductSummary>,
    /// `after=` for the next page, `None` on the last one.
    pub next: Option<String>,
}

/// A (name, price) a product was seen with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProductVersion {
    pub name: String,
    pub price: Decimal,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
    pub times_seen: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProductDetail {
    #[serde(flatten)]
    pub product: ProductSummary,
    /// Latest seen first.
    pub history: Vec<ProductVersion>,
}

/// The period `GET /api/v1/stats` counts over, ending now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsWindow {
    Hour,
    Day,
    Week,
}

impl StatsWindow {
    pub fn parse(text: &str) -> Option<StatsWindow> {
        match text {
            "1h" => Some(StatsWindow::Hour),
            "24h" => Some(StatsWindow::Day),
            "7d" => Some(StatsWindow::Week),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatsWindow::Hour => "1h",
            StatsWindow::Day => "24h",
            StatsWindow::Week => "7d",
        }
    }

    pub fn duration(self) -> Duration {
        match self {
            StatsWindow::Hour => Duration::from_secs(3600),
            StatsWindow::Day => Duration::from_secs(24 * 3600),
            StatsWindow::Week => Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub window: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    pub total: i64,
    /// Tickets by status, every status present.
    pub by_status: BTreeMap<String, i64>,
    /// Tickets by problem code (a ticket with a code twice counts once).
    pub by_problem: BTreeMap<String, i64>,
}

/// How long computed [`Stats`] are answered again. The 24 h and 7 d
/// windows count every ticket of the window, so that people keeping the
/// overview open, or a dashboard polling `/api/v1/stats`, cost the database
/// one count per window this often, however many they are, instead of one
/// per page view competing with the writers.
pub const STATS_FRESH_FOR: Duration = Duration::from_secs(10);

/// The last [`Stats`] of each window, computed once for every caller: a
/// caller finding them older than [`STATS_FRESH_FOR`] computes them while
/// the others of that window wait for its answer.
#[derive(Default)]
pub struct StatsCache {
    windows: [tokio::sync::Mutex<Option<(Instant, Stats)>>; 3],
}

impl StatsCache {
    /// The stats of `window`, at most [`STATS_FRESH_FOR`] old, read from
    /// `pool` when they are older.
    pub async fn get(&self, pool: &PgPool, window: StatsWindow) -> Result<Stats, sqlx::Error> {
        let mut last = self.windows[window as usize].lock().await;
        if let Some((computed, stats)) = last.as_ref() {
            if computed.elapsed() < STATS_FRESH_FOR {
                return Ok(stats.clone());
            }
        }
        let mut transaction = read_only(pool).await?;
        let fresh = stats(&mut transaction, window).await?;
        *last = Some((Instant::now(), fresh.clone()));
        Ok(fresh)
    }
}

/// A read-only transaction on `pool`; dropping it rolls back.
pub async fn read_only(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut transaction = pool.begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY").execute(&mut *transaction).await?;
    Ok(transaction)
}

/// The smallest id a ticket received at or after `at` can have (`at`
/// from [`EARLIEST`] to [`LATEST`], as every parameter is).
pub fn id_floor(at: OffsetDateTime) -> Uuid {
    id_bound(at - ID_CLOCK_SLACK, 0x00)
}

/// An id above every ticket received before `at`.
pub fn id_ceiling(at: OffsetDateTime) -> Uuid {
    id_bound(at + ID_CLOCK_SLACK, 0xff)
}

/// The UUIDv7 timestamp of `at` (48 bits of unix milliseconds), the other
/// bits all `fill`.
fn id_bound(at: OffsetDateTime, fill: u8) -> Uuid {
    let millis = (at.unix_timestamp_nanos() / 1_000_000).clamp(0, (1i128 << 48) - 1) as u64;
    let mut bytes = [fill; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
}

const TICKET_SUMMARY_COLUMNS: &str = "
    SELECT t.id, t.received_at, t.status, t.order_id, t.total, t.problems,
           r.id AS review_id, r.decision, r.note, r.reviewer, r.reviewed_at
    FROM tickets t
    LEFT JOIN LATERAL (
        SELECT id, decision, note, reviewer, reviewed_at FROM ticket_reviews
        WHERE ticket_id = t.id ORDER BY reviewed_at DESC, id DESC LIMIT 1
    ) r ON true
    WHERE true";

/// A page of tickets, newest first (module docs, Ticket listings).
pub async fn list_tickets(connection: &mut PgConnection, filter: &TicketFilter) -> Result<TicketPage, sqlx::Error> {
    let limit = filter.limit.clamp(1, MAX_LIMIT);
    // Tickets with problems are ordered as their partial index is.
    let by_arrival = matches!(filter.status, Some(TicketStatus::Partial | TicketStatus::Invalid));
    let mut query = QueryBuilder::<Postgres>::new(TICKET_SUMMARY_COLUMNS);
    if let Some(status) = filter.status {
        query.push(" AND t.status = ").push_bind(status.as_str());
        if by_arrival {
            // Repeated as a literal so that the partial index also serves
            // the generic plan.
            query.push(" AND t.status <> 'ok'");
        }
    }
    if let Some(code) = &filter.problem {
        let contained = serde_json::json!([{ "code": code }]);
        query.push(" AND t.status <> 'ok' AND t.problems @> ").push_bind(Json(contained)).push("::jsonb");
    }
    if let Some(order_id) = &filter.order_id {
        query.push(" AND t.order_id = ").push_bind(order_id.clone());
    }
    if let Some(since) = filter.since {
        query.push(" AND t.received_at >= ").push_bind(since);
        if !by_arrival {
            query.push(" AND t.id >= ").push_bind(id_floor(since));
        }
    }
    if let Some(until) = filter.until {
        query.push(" AND t.received_at < ").push_bind(until);
        if !by_arrival {
            query.push(" AND t.id < ").push_bind(id_ceiling(until));
        }
    }
    if let Some(after) = filter.after {
        if by_arrival {
            query.push(" AND (t.received_at, t.id) < (").push_bind(after.received_at);
            query.push(", ").push_bind(after.id).push(")");
        } else {
            query.push(" AND t.id < ").push_bind(after.id);
        }
    }
    if by_arrival {
        query.push(" ORDER BY t.received_at DESC, t.id DESC");
    } else {
        query.push(" ORDER BY t.id DESC");
    }
    // One more than the page: whether there is a next page.
    query.push(" LIMIT ").push_bind(limit + 1);
    let rows = query.build().fetch_all(&mut *connection).await?;
    let mut tickets = Vec::with_capacity(rows.len());
    for row in &rows {
        let review = match row.try_get::<Option<Uuid>, _>("review_id")? {
            None => None,
            Some(review_id) => Some(Review {
                id: review_id,
                ticket_id: row.try_get("id")?,
                decision: row.try_get("decision")?,
                note: row.try_get("note")?,
                reviewer: row.try_get("reviewer")?,
                reviewed_at: row.try_get("reviewed_at")?,
            }),
        };
        tickets.push(TicketSummary {
            id: row.try_get("id")?,
            received_at: row.try_get("received_at")?,
            status: row.try_get("status")?,
            order_id: row.try_get("order_id")?,
            total: row.try_get("total")?,
            problems: problems_or_empty(row.try_get("problems")?),
            review,
        });
    }
    let mut next = None;
    if tickets.len() as i64 > limit {
        tickets.truncate(limit as usize);
        next = tickets.last().map(|last| TicketCursor { received_at: last.received_at, id: last.id }.encode());
    }
    Ok(TicketPage { tickets, next })
}

fn problems_or_empty(problems: Option<serde_json::Value>) -> serde_json::Value {
    problems.unwrap_or_else(|| serde_json::Value::Array(Vec::new()))
}

/// A ticket with its lines, problems and review trail; `None` if unknown.
pub async fn ticket(connection: &mut PgConnection, id: Uuid) -> Result<Option<TicketDetail>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, received_at, status, order_id, vat, total, idempotency_key, octet_length(raw)::int8 AS raw_bytes,
                problems, corrects, superseded_by
         FROM tickets WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *connection)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let lines =
        sqlx::query("SELECT line_no, product_id, name, price FROM ticket_lines WHERE ticket_id = $1 ORDER BY line_no")
            .bind(id)
            .fetch_all(&mut *connection)
            .await?;
    let mut ticket_lines = Vec::with_capacity(lines.len());
    for line in &lines {
        ticket_lines.push(TicketLine {
            line_no: line.try_get("line_no")?,
            product_id: line.try_get("product_id")?,
            name: line.try_get("name")?,
            price: line.try_get("price")?,
        });
    }
    Ok(Some(TicketDetail {
        id: row.try_get("id")?,
        received_at: row.try_get("received_at")?,
        status: row.try_get("status")?,
        order_id: row.try_get("order_id")?,
        vat: row.try_get("vat")?,
        total: row.try_get("total")?,
        idempotency_key: row.try_get("idempotency_key")?,
        raw_bytes: row.try_get("raw_bytes")?,
        problems: problems_or_empty(row.try_get("problems")?),
        lines: ticket_lines,
        reviews: reviews(connection, id).await?,
        corrects: row.try_get("corrects")?,
        superseded_by: row.try_get("superseded_by")?,
    }))
}

/// Every review of a ticket, oldest first.
pub async fn reviews(connection: &mut PgConnection, ticket_id: Uuid) -> Result<Vec<Review>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, ticket_id, decision, note, reviewer, reviewed_at FROM ticket_reviews
         WHERE ticket_id = $1 ORDER BY reviewed_at, id",
    )
    .bind(ticket_id)
    .fetch_all(connection)
    .await?;
    rows.iter().map(review_of_row).collect()
}

pub(crate) fn review_of_row(row: &sqlx::postgres::PgRow) -> Result<Review, sqlx::Error> {
    Ok(Review {
        id: row.try_get("id")?,
        ticket_id: row.try_get("ticket_id")?,
        decision: row.try_get("decision")?,
        note: row.try_get("note")?,
        reviewer: row.try_get("reviewer")?,
        reviewed_at: row.try_get("reviewed_at")?,
    })
}

/// The body of a ticket exactly as received; `None` if unknown.
pub async fn raw_ticket(connection: &mut PgConnection, id: Uuid) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT raw FROM tickets WHERE id = $1").bind(id).fetch_optional(connection).await
}

/// A page of the catalogue, by product id.
pub async fn list_products(connection: &mut PgConnection, filter: &ProductFilter) -> Result<ProductPage, sqlx::Error> {
    let limit = filter.limit.clamp(1, MAX_LIMIT);
    let mut query = QueryBuilder::<Postgres>::new(
        "SELECT product_id, name, price, first_seen_at, last_seen_at, times_seen FROM products WHERE true",
    );
    if let Some(q) = filter.q.as_deref().filter(|q| !q.is_empty()) {
        let pattern = format!("%{}%", like_escaped(q));
        query.push(" AND (product_id ILIKE ").push_bind(pattern.clone());
        query.push(" OR name ILIKE ").push_bind(pattern).push(")");
    }
    if let Some(after) = &filter.after {
        query.push(" AND product_id > ").push_bind(after.clone());
    }
    query.push(" ORDER BY product_id LIMIT ").push_bind(limit + 1);
    let rows = query.build().fetch_all(connection).await?;
    let mut products = rows.iter().map(product_of_row).collect::<Result<Vec<_>, _>>()?;
    let mut next = None;
    if products.len() as i64 > limit {
        products.truncate(limit as usize);
        next = products.last().map(|last| last.product_id.clone());
    }
    Ok(ProductPage { products, next })
}

fn product_of_row(row: &sqlx::postgres::PgRow) -> Result<ProductSummary, sqlx::Error> {
    Ok(ProductSummary {
        product_id: row.try_get("product_id")?,
        name: row.try_get("name")?,
        price: row.try_get("price")?,
        first_seen_at: row.try_get("first_seen_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        times_seen: row.try_get("times_seen")?,
    })
}

/// `%`, `_` and `\` of `text` taken literally in a `LIKE` pattern.
fn like_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// A product with every (name, price) it was seen with; `None` if unknown.
pub async fn product(connection: &mut PgConnection, product_id: &str) -> Result<Option<ProductDetail>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT product_id, name, price, first_seen_at, last_seen_at, times_seen FROM products WHERE product_id = $1",
    )
    .bind(product_id)
    .fetch_optional(&mut *connection)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let versions = sqlx::query(
        "SELECT name, price, first_seen_at, last_seen_at, times_seen FROM product_history
         WHERE product_id = $1 ORDER BY last_seen_at DESC, name, price",
    )
    .bind(product_id)
    .fetch_all(&mut *connection)
    .await?;
    let mut history = Vec::with_capacity(versions.len());
    for version in &versions {
        history.push(ProductVersion {
            name: version.try_get("name")?,
            price: version.try_get("price")?,
            first_seen_at: version.try_get("first_seen_at")?,
            last_seen_at: version.try_get("last_seen_at")?,
            times_seen: version.try_get("times_seen")?,
        });
    }
    Ok(Some(ProductDetail { product: product_of_row(&row)?, history }))
}

/// Tickets received in the last `window`, by status and by problem code.
pub async fn stats(connection: &mut PgConnection, window: StatsWindow) -> Result<Stats, sqlx::Error> {
    let since = OffsetDateTime::now_utc() - window.duration();
    let statuses = sqlx::query(
        "SELECT status, count(*) AS tickets FROM tickets WHERE received_at >= $1 AND id >= $2 GROUP BY status",
    )
    .bind(since)
    .bind(id_floor(since))
    .fetch_all(&mut *connection)
    .await?;
    let mut by_status: BTreeMap<String, i64> =
        ["ok", "partial", "invalid"].into_iter().map(|status| (status.to_string(), 0)).collect();
    let mut total = 0;
    for row in &statuses {
        let tickets: i64 = row.try_get("tickets")?;
        total += tickets;
        by_status.insert(row.try_get("status")?, tickets);
    }
    // Only tickets with problems have codes: the partial index of those
    // serves the time range of each status.
    let codes = sqlx::query(
        "SELECT code, count(*) AS tickets FROM (
             SELECT DISTINCT t.id, problem->>'code' AS code
             FROM tickets t, jsonb_array_elements(t.problems) AS problem
             WHERE t.status IN ('partial', 'invalid') AND t.status <> 'ok' AND t.received_at >= $1
         ) AS coded GROUP BY code",
    )
    .bind(since)
    .fetch_all(&mut *connection)
    .await?;
    let mut by_problem = BTreeMap::new();
    for row in &codes {
        by_problem.insert(row.try_get::<Option<String>, _>("code")?.unwrap_or_default(), row.try_get("tickets")?);
    }
    Ok(Stats { window: window.as_str(), since, total, by_status, by_problem })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_written() {
        let cursor = TicketCursor { received_at: OffsetDateTime::now_utc(), id: Uuid::now_v7() };
        let read = TicketCursor::parse(&cursor.encode()).expect("parses");
        assert_eq!(read.id, cursor.id);
        assert_eq!(read.received_at.unix_timestamp_nanos() / 1000, cursor.received_at.unix_timestamp_nanos() / 1000);
        assert!(TicketCursor::parse("garbage").is_none());
    }

    #[test]
    fn id_bounds_enclose_the_ids_minted_at_that_time() {
        let id = Uuid::now_v7();
        let now = OffsetDateTime::now_utc();
        assert!(id_floor(now) <= id && id < id_ceiling(now));
        assert!(id_ceiling(now - ID_CLOCK_SLACK * 3) < id);
        assert!(id_floor(now + ID_CLOCK_SLACK * 3) > id);
    }

    #[test]
    fn like_wildcards_are_taken_literally() {
        assert_eq!(like_escaped(r"50%_a\b"), r"50\%\_a\\b");
    }
}
