//! A batch's tickets as the columns its statements bind, one array per
//! column, and the rows they add up to.
//!
//! Products are deduplicated inside the batch (the latest ticket wins, the
//! counts are summed) and sorted by `product_id`, so that concurrent writers
//! lock rows in the same order and cannot deadlock. A row is only
//! overwritten by a ticket at least as recent as the one that wrote it, so a
//! batch that commits late never puts an older price back.
//!
//! The product history (`product_history`: one row per product id, name and
//! price, with first and last sighting and a count) is deduplicated the same
//! way, per `(product_id, name, price)`, counts summed, and sorted by that
//! key. It is written before the products in both paths: its rows are as
//! hot as a product's for a product sold at one price, never hotter (each
//! of its rows is touched by a subset of the tickets touching the product's
//! row), so the products, the hottest rows, stay locked the shortest. Every
//! writer, and `reprocess`, takes history rows first and products second,
//! each set in key order, so the two sets cannot deadlock each other. A
//! history name is the line's name cut to [`HISTORY_NAME_MAX_CHARS`]
//! characters: names are not bounded by the parser, and a B-tree entry
//! over ~2.7 kB would fail every batch holding it (SQLSTATE 54000, which is
//! not a data error, so the batch would be retried for ever).

use std::collections::HashMap;

use rust_decimal::Decimal;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::Postgres;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ticket::{NewTicket, ParsedTicket, Status};

/// Characters of a line's name kept in `product_history` (the migration's
/// backfill cuts with the same `left(name, 200)`). At 4 bytes a character
/// at most, the key stays far below PostgreSQL's B-tree entry limit.
pub const HISTORY_NAME_MAX_CHARS: usize = 200;

/// The name under which a line counts in `product_history`: its first
/// [`HISTORY_NAME_MAX_CHARS`] characters, like SQL's `left(name, 200)`.
pub fn history_name(name: &str) -> &str {
    match name.char_indices().nth(HISTORY_NAME_MAX_CHARS) {
        Some((end, _)) => &name[..end],
        None => name,
    }
}

pub(super) type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// `problems` is NULL for ok tickets, a JSON array otherwise.
pub(crate) fn problems_json(parsed: &ParsedTicket) -> Option<String> {
    if parsed.problems.is_empty() {
        return None;
    }
    serde_json::to_string(&parsed.problems).ok()
}

/// The `tickets` columns of a batch, one array per column.
pub(super) struct TicketColumns<'a> {
    pub(super) ids: Vec<Uuid>,
    pub(super) received_at: Vec<OffsetDateTime>,
    pub(super) keys: Vec<Option<&'a str>>,
    pub(super) statuses: Vec<&'static str>,
    pub(super) order_ids: Vec<Option<&'a str>>,
    pub(super) vats: Vec<Option<Decimal>>,
    pub(super) totals: Vec<Option<Decimal>>,
    pub(super) problems: Vec<Option<String>>,
    pub(super) raws: Vec<&'a [u8]>,
}

impl<'a> TicketColumns<'a> {
    pub(super) fn new(batch: &[&'a NewTicket]) -> Self {
        let count = batch.len();
        let mut columns = TicketColumns {
            ids: Vec::with_capacity(count),
            received_at: Vec::with_capacity(count),
            keys: Vec::with_capacity(count),
            statuses: Vec::with_capacity(count),
            order_ids: Vec::with_capacity(count),
            vats: Vec::with_capacity(count),
            totals: Vec::with_capacity(count),
            problems: Vec::with_capacity(count),
            raws: Vec::with_capacity(count),
        };
        for ticket in batch {
            columns.ids.push(ticket.id);
            columns.received_at.push(ticket.received_at);
            columns.keys.push(ticket.idempotency_key.as_deref());
            columns.statuses.push(ticket.parsed.status.as_str());
            columns.order_ids.push(ticket.parsed.order_id.as_deref());
            columns.vats.push(ticket.parsed.vat);
            columns.totals.push(ticket.parsed.total);
            columns.problems.push(problems_json(&ticket.parsed));
            columns.raws.push(ticket.raw.as_ref());
        }
        columns
    }

    pub(super) fn bind<'q>(self, query: PgQuery<'q>) -> PgQuery<'q>
    where
        'a: 'q,
    {
        query
            .bind(self.ids)
            .bind(self.received_at)
            .bind(self.keys)
            .bind(self.statuses)
            .bind(self.order_ids)
            .bind(self.vats)
            .bind(self.totals)
            .bind(self.problems)
            .bind(self.raws)
    }
}

/// The `ticket_lines` columns of a batch's tickets.
pub(super) struct LineColumns<'a> {
    pub(super) ticket_ids: Vec<Uuid>,
    pub(super) received_at: Vec<OffsetDateTime>,
    pub(super) line_nos: Vec<i32>,
    pub(super) product_ids: Vec<&'a str>,
    pub(super) names: Vec<&'a str>,
    pub(super) prices: Vec<Decimal>,
}

impl<'a> LineColumns<'a> {
    pub(super) fn new(tickets: &[&'a NewTicket]) -> Self {
        let count: usize = tickets.iter().map(|ticket| ticket.parsed.lines.len()).sum();
        let mut columns = LineColumns {
            ticket_ids: Vec::with_capacity(count),
            received_at: Vec::with_capacity(count),
            line_nos: Vec::with_capacity(count),
            product_ids: Vec::with_capacity(count),
            names: Vec::with_capacity(count),
            prices: Vec::with_capacity(count),
        };
        for ticket in tickets {
            for line in &ticket.parsed.lines {
                columns.ticket_ids.push(ticket.id);
                columns.received_at.push(ticket.received_at);
                columns.line_nos.push(line.line_no);
                columns.product_ids.push(line.product_id.as_str());
                columns.names.push(line.name.as_str());
                columns.prices.push(line.price);
            }
        }
        columns
    }

    pub(super) fn bind<'q>(self, query: PgQuery<'q>) -> PgQuery<'q>
    where
        'a: 'q,
    {
        query
            .bind(self.ticket_ids)
            .bind(self.received_at)
            .bind(self.line_nos)
            .bind(self.product_ids)
            .bind(self.names)
            .bind(self.prices)
    }
}

/// The `products` rows a batch's tickets add up to, sorted by product id.
pub(super) struct ProductColumns<'a> {
    pub(super) product_ids: Vec<&'a str>,
    pub(super) names: Vec<&'a str>,
    pub(super) prices: Vec<Decimal>,
    pub(super) first_seen: Vec<OffsetDateTime>,
    pub(super) last_seen: Vec<OffsetDateTime>,
    pub(super) last_ticket_ids: Vec<Uuid>,
    pub(super) times_seen: Vec<i64>,
}

impl<'a> ProductColumns<'a> {
    pub(super) fn new(tickets: &[&'a NewTicket]) -> Self {
        let mut products = merge_products(tickets);
        products.sort_unstable_by(|left, right| left.0.cmp(right.0));
        let count = products.len();
        let mut columns = ProductColumns {
            product_ids: Vec::with_capacity(count),
            names: Vec::with_capacity(count),
            prices: Vec::with_capacity(count),
            first_seen: Vec::with_capacity(count),
            last_seen: Vec::with_capacity(count),
            last_ticket_ids: Vec::with_capacity(count),
            times_seen: Vec::with_capacity(count),
        };
        for (product_id, seen) in products {
            columns.product_ids.push(product_id);
            columns.names.push(seen.name);
            columns.prices.push(seen.price);
            columns.first_seen.push(seen.first_seen_at);
            columns.last_seen.push(seen.last_seen_at);
            columns.last_ticket_ids.push(seen.last_ticket_id);
            columns.times_seen.push(seen.times_seen);
        }
        columns
    }

    pub(super) fn bind<'q>(self, query: PgQuery<'q>) -> PgQuery<'q>
    where
        'a: 'q,
    {
        query
            .bind(self.product_ids)
            .bind(self.names)
            .bind(self.prices)
            .bind(self.first_seen)
            .bind(self.last_seen)
            .bind(self.last_ticket_ids)
            .bind(self.times_seen)
    }
}

/// One product's row as the batch sees it, before the upsert.
struct ProductSeen<'a> {
    name: &'a str,
    price: Decimal,
    first_seen_at: OffsetDateTime,
    last_seen_at: OffsetDateTime,
    last_ticket_id: Uuid,
    times_seen: i64,
}

/// One entry per product id: the name and price of the latest ticket
/// (by `received_at`, then by time-ordered id), and how often it was seen.
fn merge_products<'a>(tickets: &[&'a NewTicket]) -> Vec<(&'a str, ProductSeen<'a>)> {
    let mut merged: HashMap<&'a str, ProductSeen<'a>> = HashMap::new();
    for ticket in tickets {
        if ticket.parsed.status == Status::Invalid {
            continue;
        }
        for line in &ticket.parsed.lines {
            let seen = merged.entry(line.product_id.as_str()).or_insert_with(|| ProductSeen {
                name: &line.name,
                price: line.price,
                first_seen_at: ticket.received_at,
                last_seen_at: ticket.received_at,
                last_ticket_id: ticket.id,
                times_seen: 0,
            });
            seen.times_seen += 1;
            seen.first_seen_at = seen.first_seen_at.min(ticket.received_at);
            if (ticket.received_at, ticket.id) >= (seen.last_seen_at, seen.last_ticket_id) {
                seen.name = &line.name;
                seen.price = line.price;
                seen.last_seen_at = ticket.received_at;
                seen.last_ticket_id = ticket.id;
            }
        }
    }
    merged.into_iter().collect()
}

/// A `product_history` key: product id, name (cut, [`history_name`]),
/// price.
pub type HistoryKey<'a> = (&'a str, &'a str, Decimal);

/// What a set of lines adds to one `product_history` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistorySeen {
    pub first_seen_at: OffsetDateTime,
    pub last_seen_at: OffsetDateTime,
    /// Lines added; negative when `reprocess` takes old lines away.
    pub times_seen: i64,
}

impl HistorySeen {
    /// Counts `times` more lines (negative: fewer) seen between
    /// `first_seen_at` and `last_seen_at`.
    pub fn add(&mut self, times: i64, first_seen_at: OffsetDateTime, last_seen_at: OffsetDateTime) {
        self.times_seen += times;
        self.first_seen_at = self.first_seen_at.min(first_seen_at);
        self.last_seen_at = self.last_seen_at.max(last_seen_at);
    }
}

/// History rows merged in memory, one per key.
pub type HistoryMerge<'a> = HashMap<HistoryKey<'a>, HistorySeen>;

/// One entry per `(product_id, name, price)` of the lines of `tickets`
/// (invalid tickets have none, and count for nothing, as for products):
/// how many lines, first and last `received_at`.
pub fn merge_history<'a>(tickets: &[&'a NewTicket]) -> HistoryMerge<'a> {
    let mut merged: HistoryMerge<'a> = HashMap::new();
    for ticket in tickets {
        if ticket.parsed.status == Status::Invalid {
            continue;
        }
        for line in &ticket.parsed.lines {
            add_sighting(&mut merged, (&line.product_id, history_name(&line.name), line.price), 1, ticket.received_at);
        }
    }
    merged
}

/// Adds `times` lines seen at `seen_at` under `key`.
pub fn add_sighting<'a>(merged: &mut HistoryMerge<'a>, key: HistoryKey<'a>, times: i64, seen_at: OffsetDateTime) {
    merged.entry(key).and_modify(|seen| seen.add(times, seen_at, seen_at)).or_insert(HistorySeen {
        first_seen_at: seen_at,
        last_seen_at: seen_at,
        times_seen: times,
    });
}

/// The `product_history` rows of a merge, sorted by key, so that every
/// writer locks them in the same order.
pub(super) struct HistoryColumns<'a> {
    pub(super) product_ids: Vec<&'a str>,
    pub(super) names: Vec<&'a str>,
    pub(super) prices: Vec<Decimal>,
    pub(super) first_seen: Vec<OffsetDateTime>,
    pub(super) last_seen: Vec<OffsetDateTime>,
    pub(super) times_seen: Vec<i64>,
}

impl<'a> HistoryColumns<'a> {
    pub(super) fn new(merged: HistoryMerge<'a>) -> Self {
        let mut rows: Vec<(HistoryKey<'a>, HistorySeen)> = merged.into_iter().collect();
        rows.sort_unstable_by(|left, right| left.0.cmp(&right.0));
        let count = rows.len();
        let mut columns = HistoryColumns {
            product_ids: Vec::with_capacity(count),
            names: Vec::with_capacity(count),
            prices: Vec::with_capacity(count),
            first_seen: Vec::with_capacity(count),
            last_seen: Vec::with_capacity(count),
            times_seen: Vec::with_capacity(count),
        };
        for ((product_id, name, price), seen) in rows {
            columns.product_ids.push(product_id);
            columns.names.push(name);
            columns.prices.push(price);
            columns.first_seen.push(seen.first_seen_at);
            columns.last_seen.push(seen.last_seen_at);
            columns.times_seen.push(seen.times_seen);
        }
        columns
    }

    pub(super) fn bind<'q>(self, query: PgQuery<'q>) -> PgQuery<'q>
    where
        'a: 'q,
    {
        query
            .bind(self.product_ids)
            .bind(self.names)
            .bind(self.prices)
            .bind(self.first_seen)
            .bind(self.last_seen)
            .bind(self.times_seen)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_history_name_keeps_its_first_200_characters_not_bytes() {
        let short = "Café crème";
        let long = "é".repeat(HISTORY_NAME_MAX_CHARS + 50);

        assert_eq!(history_name(short), short);
        assert_eq!(history_name(&long).chars().count(), HISTORY_NAME_MAX_CHARS);
        assert_eq!(history_name(&long).len(), 2 * HISTORY_NAME_MAX_CHARS);
    }

    #[test]
    fn history_merges_lines_per_name_and_price_and_sorts_by_key() {
        let early = OffsetDateTime::UNIX_EPOCH;
        let late = early + Duration::from_secs(60);
        let body = |price: &str| format!("Order: 1\n\nproduct,product_id,price\nB,b,1\nA,a,{price}\nA,a,{price}\n");
        let ticket = |received_at, price: &str| {
            NewTicket::known(Uuid::now_v7(), received_at, None, bytes::Bytes::from(body(price)))
        };
        let (first, second, third) = (ticket(late, "1.00"), ticket(early, "1"), ticket(late, "2.00"));

        let columns = HistoryColumns::new(merge_history(&[&first, &second, &third]));

        let keys: Vec<(&str, &str, String)> = (0..columns.product_ids.len())
            .map(|row| (columns.product_ids[row], columns.names[row], columns.prices[row].to_string()))
            .collect();
        assert_eq!(
            keys,
            [("a", "A", "1.00".to_string()), ("a", "A", "2.00".to_string()), ("b", "B", "1.00".to_string())]
        );
        assert_eq!(columns.times_seen, [4, 2, 3]);
        assert_eq!(columns.first_seen, [early, late, early]);
        assert_eq!(columns.last_seen, [late, late, late]);
    }
}
