//! Ticket parsing: raw webhook body → [`ParsedTicket`]. Pure, no I/O.
//!
//! This comment is the design document of the parser. The parser runs on the
//! HTTP path for every request, so it makes one pass over the lines, never
//! uses a regex, and borrows from the decoded text until it builds the output
//! strings. It never panics, whatever the bytes, and its output is bounded.
//!
//! # Format
//!
//! ```text
//! Order: 123456
//! VAT: 3.10
//! Total: 16.90
//!
//! product,product_id,price
//! Formule(s) midi,aZde,14.90
//! Café,IZ8z,2
//! ```
//!
//! A header of `Key: value` lines, a blank line, then a CSV product table
//! whose first row (the *header row*) names the columns.
//!
//! # Decoding the body
//!
//! - Empty or whitespace-only body → `invalid` (`empty`).
//! - A known binary magic number (gzip, zip, zstd, PNG, JPEG, GIF, PDF, ELF)
//!   → `invalid` (`binary`).
//! - A UTF-8 byte-order mark is dropped silently. A UTF-16 LE/BE body with a
//!   byte-order mark is decoded, with a `utf16_encoding` warning.
//! - Valid UTF-8 is used as is (borrowed). Anything else is decoded as
//!   Windows-1252 with a `legacy_encoding` warning: that decoding is a guess
//!   (a likely one for French registers), so the ticket is at best `partial`.
//! - Trailing NUL bytes (a register padding a fixed-size buffer) are dropped
//!   with a `nul_padding` warning; a body of only NULs is binary.
//! - More than 5 % control characters (other than tab, CR, LF, form feed)
//!   → `invalid` (`binary`). This also catches UTF-16 sent without a BOM.
//!   A stray NUL inside a ticket is handled per line instead (see below).
//!
//! # Lines
//!
//! CRLF, LF and lone CR all end a physical line; lines are numbered from 1
//! in the decoded body (the BOM does not count). A CSV record is exactly one
//! physical line: registers print receipts, a product name cannot contain a
//! line break, and a quote left open must not swallow the rest of the ticket
//! (it is an `unterminated_quote` error on its line; the next line is read
//! afresh). Hence `Line::line_no` is the record's physical line, unique.
//!
//! # Header
//!
//! Every line before the header row is a header line. Blank lines are
//! skipped anywhere (so extra blank lines, or the blank line missing before
//! an obvious header row, are tolerated silently). A header line is split at
//! its first `:`; key and value are trimmed, keys compared ASCII
//! case-insensitively, so `Total : 16.90` and `TOTAL:16.90` are fine.
//!
//! - `Order`: kept as trimmed text. Empty → `missing_order` on that line;
//!   NUL byte → `nul_byte`; more than [`MAX_ID_BYTES`] bytes →
//!   `order_too_long` (`products`/`tickets` index these columns and a B-tree
//!   entry cannot exceed ~2.7 kB). In every such case `order_id` is `None`.
//! - `VAT`, `Total`: money (below). Unparsable → `bad_vat` / `bad_total` on
//!   that line, value `None`; empty → `missing_vat` / `missing_total` there.
//! - A key given twice with the same value is fine; with different values
//!   it is `conflicting_order` / `conflicting_vat` / `conflicting_total` and
//!   the value becomes `None` (never pick one).
//! - Unknown keys (`Cashier:`, `Date: 2024-05-01 12:30` …) are ignored
//!   silently. A header line without a `:` → `bad_header_line` (warning).
//! - A key absent from the whole header → `missing_order` / `missing_vat` /
//!   `missing_total` on line 0.
//!
//! # Product table
//!
//! The header row is the first line that, split as CSV, has a `product_id`
//! and a `price` column (names trimmed, ASCII case-insensitive). Its
//! delimiter is `,`, or else `;` or tab when the row clearly uses that
//! (so a French `;` export with `14,90` prices is read, not rejected).
//! `product` (the name) is optional: without it every name is empty and one
//! `missing_name_column` warning is given. Other columns are ignored. A
//! header row naming `product`, `product_id` or `price` twice →
//! `invalid` (`duplicate_column`): which one holds the price is a guess.
//! No header row at all → `invalid` (`no_product_table`), with a hint of what
//! the body looked like (HTML, JSON, first stray line).
//!
//! Each following non-blank line is a record. Fields are trimmed; CSV
//! quoting is understood (`"Menu, midi"`, `""` for a quote; a quote inside
//! an unquoted field is literal, e.g. `Pizza 12"`). A line made only of
//! delimiters and spaces is an empty record, skipped silently. A record is
//! skipped with one problem (the first found, in this order) when:
//! its quoting is broken (`unterminated_quote`, `bad_quote`); it has more or
//! fewer fields than the header row (`field_count` — an unquoted decimal
//! comma `2,50` lands here: never guess which field is which); its
//! product_id is empty (`missing_product_id`), too long
//! (`product_id_too_long`) or its product_id or name holds a NUL
//! (`nul_byte`, PostgreSQL text cannot store it); its price is not money
//! (`bad_price`, `price_precision`, `price_out_of_range`). An empty name is
//! a warning (`empty_name`): the line is kept, as the price and product id
//! are what count. Anything after the table (a footer, a second ticket) is
//! read as records and reported the same way.
//!
//! # Money (`price`, `VAT`, `Total`)
//!
//! Exact decimals (`rust_decimal`), normalised to 2 decimal places, that fit
//! PostgreSQL `NUMERIC(12,2)`. Accepted: surrounding whitespace (including
//! no-break spaces), one `€` before or after the number (or after the sign),
//! a leading `-` (discounts and refunds are legitimate) or `+`, ASCII digits
//! with at most one decimal separator, `.` or `,`, followed by 1 or 2 digits
//! (`2`, `2.5`, `.50`, `14,90`, `-2.00 €`). Rejected, never rounded or
//! guessed: more than 2 decimals (`price_precision`; `14.900` too), absolute
//! value ≥ 10^10 (`price_out_of_range`), grouping separators (`1,234.50`,
//! `1 234,50`: `1,234` alone would be ambiguous, so none are accepted),
//! exponents, other currencies, `5.` (likely a truncated body).
//!
//! # Status
//!
//! - `ok`: header and every line understood, totals agree, no problem at all.
//! - `partial`: at least one usable line, and at least one problem (skipped
//!   lines, warnings, missing or bad header values, `total_mismatch` when the
//!   good lines do not add up to `Total`, legacy encoding …).
//! - `invalid`: nothing usable, `lines` empty: `empty`, `binary`,
//!   `no_product_table`, `duplicate_column`, or `no_lines` (a table whose
//!   every record was skipped). The first four report only the encoding
//!   warning, if any, and the reason (`empty` and `binary` only the
//!   reason): line-by-line noise about an HTML page helps nobody. `no_lines` keeps every line's problem, as they are why.
//!   Header values that were understood are kept even on invalid tickets.
//!
//! # Problems
//!
//! `Problem::line` is the 1-based physical line, 0 for the whole ticket.
//! Problems come in the order found: encoding, then line by line, then the
//! whole-ticket checks (`missing_*`, `total_mismatch`, `no_lines`). At most
//! [`MAX_LINE_PROBLEMS`] line problems are listed, then one
//! `too_many_problems`. Messages quote at most 40 characters of input,
//! escaped (a NUL is written `\0`: `problems` is stored as `jsonb`, which
//! rejects `\u0000`).
//!
//! Codes: `empty`, `binary`, `utf16_encoding`, `legacy_encoding`,
//! `nul_padding`, `bad_header_line`, `missing_order`, `order_too_long`,
//! `conflicting_order`, `missing_vat`, `bad_vat`, `conflicting_vat`,
//! `missing_total`, `bad_total`, `conflicting_total`, `no_product_table`,
//! `duplicate_column`, `missing_name_column`, `unterminated_quote`,
//! `bad_quote`, `field_count`, `missing_product_id`, `product_id_too_long`,
//! `nul_byte`, `bad_price`, `price_precision`, `price_out_of_range`,
//! `empty_name`, `too_many_problems`, `total_mismatch`, `no_lines`.
//!
//! # Layout
//! - this file: the public types, [`ParsedTicket::parse`] and the one pass
//!   over the lines, the problem list, message helpers
//! - `decode`: bytes → text (BOM, UTF-8, UTF-16, Windows-1252, binary junk)
//! - `lines`:  physical lines and the fields of one CSV line
//! - `header`: the `Key: value` lines
//! - `table`:  the product table's header row and records
//! - `money`:  exact money parsing
//! - `tests`:  whole-parser tests and the property tests

use std::fmt::{self, Write as _};

use bytes::Bytes;
use rust_decimal::Decimal;
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

/// What the parser made of a ticket as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Header and every line understood, totals agree.
    Ok,
    /// Usable, with problems; the good lines count.
    Partial,
    /// Nothing usable.
    Invalid,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Partial => "partial",
            Status::Invalid => "invalid",
        }
    }

    /// The status named by [`Status::as_str`].
    pub fn from_name(name: &str) -> Option<Status> {
        [Status::Ok, Status::Partial, Status::Invalid].into_iter().find(|status| status.as_str() == name)
    }
}

/// One thing the parser could not understand, or had to tolerate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// 1-based physical line of the body; 0 for the ticket as a whole.
    pub line: u32,
    /// Stable machine-readable code, e.g. `bad_price`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

/// One understood product line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based physical line of the body where the CSV record starts.
    pub line_no: i32,
    pub product_id: String,
    pub name: String,
    pub price: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedTicket {
    pub status: Status,
    pub order_id: Option<String>,
    pub vat: Option<Decimal>,
    pub total: Option<Decimal>,
    pub lines: Vec<Line>,
    pub problems: Vec<Problem>,
}

/// A ticket on its way to the database: the body exactly as received, what
/// the parser made of it, and the identity it keeps for good.
#[derive(Debug, Clone)]
pub struct NewTicket {
    /// UUIDv7, assigned on arrival.
    pub id: Uuid,
    pub received_at: OffsetDateTime,
    /// `Idempotency-Key` (or `webhook-id`) of the request, if any.
    pub idempotency_key: Option<String>,
    /// The body exactly as received (after gzip decoding).
    pub raw: Bytes,
    pub parsed: ParsedTicket,
}

impl NewTicket {
    /// A ticket that has just arrived: parsed now, a fresh UUIDv7, received
    /// now.
    pub fn arrived(raw: Bytes, idempotency_key: Option<String>) -> NewTicket {
        NewTicket::known(Uuid::now_v7(), OffsetDateTime::now_utc(), idempotency_key, raw)
    }

    /// A ticket seen before (a log record, a stored row), parsed again with
    /// today's parser; it keeps its id and arrival time.
    pub fn known(id: Uuid, received_at: OffsetDateTime, idempotency_key: Option<String>, raw: Bytes) -> NewTicket {
        let parsed = ParsedTicket::parse(&raw);
        NewTicket { id, received_at, idempotency_key, raw, parsed }
    }
}

/// Line problems listed before the rest is summed up in `too_many_problems`.
pub const MAX_LINE_PROBLEMS: usize = 100;

/// Longest product id or order id kept, in bytes. Both are indexed in
/// PostgreSQL, whose B-tree entries cannot exceed ~2.7 kB; real ids are short.
pub const MAX_ID_BYTES: usize = 128;

/// Characters of input quoted in a message.
const EXCERPT_CHARS: usize = 40;

impl ParsedTicket {
    /// Parses a raw body. Never panics; see the module documentation.
    pub fn parse(raw: &[u8]) -> ParsedTicket {
        let mut problems = Problems::default();
        match decode(raw, &mut problems) {
            Some(text) => parse_text(&text, problems),
            None => Header::default().into_invalid(problems),
        }
    }

    /// Bytes this ticket holds on the heap, for the admission budget: what
    /// the allocator hands out, not just what the values use — for short
    /// strings the difference is most of it.
    pub fn heap_bytes(&self) -> usize {
        let strings: usize = self
            .lines
            .iter()
            .map(|line| allocated(line.product_id.capacity()) + allocated(line.name.capacity()))
            .chain(self.problems.iter().map(|problem| allocated(problem.message.capacity())))
            .sum();
        allocated(self.lines.capacity() * std::mem::size_of::<Line>())
            + allocated(self.problems.capacity() * std::mem::size_of::<Problem>())
            + allocated(self.order_id.as_ref().map_or(0, String::capacity))
            + strings
    }
}

/// Heap bytes one allocation of `requested` bytes takes with glibc's malloc:
/// an 8-byte header, rounded up to 16, at least 32.
fn allocated(requested: usize) -> usize {
    match requested {
        0 => 0,
        _ => (requested + 8).next_multiple_of(16).max(32),
    }
}

mod decode;
mod header;
mod lines;
mod money;
mod table;
#[cfg(test)]
mod tests;

use decode::decode;
use header::{Header, Slot};
use lines::PhysicalLines;
use table::{header_row, is_empty_record, no_table_message, read_record};

// ---------------------------------------------------------------------------
// Problems
// ---------------------------------------------------------------------------

/// The problem list, with line problems capped so that a ticket of 60 000
/// bad lines costs neither 60 000 messages nor a huge `jsonb` value.
#[derive(Default)]
struct Problems {
    list: Vec<Problem>,
    /// Line problems listed so far.
    listed: usize,
    /// Line problems past the cap, only counted.
    dropped: usize,
}

impl Problems {
    /// A problem on one line; the message is only built if it is listed.
    fn at_line(&mut self, line: u32, code: &'static str, message: impl FnOnce() -> String) {
        if self.listed >= MAX_LINE_PROBLEMS {
            self.dropped = self.dropped.saturating_add(1);
            return;
        }
        self.listed += 1;
        self.list.push(Problem { line, code, message: message() });
    }

    /// A problem of the ticket as a whole (line 0), never capped: there are
    /// only a handful of kinds.
    fn whole(&mut self, code: &'static str, message: String) {
        self.list.push(Problem { line: 0, code, message });
    }

    /// Forgets the line problems (for tickets invalid as a whole), keeping
    /// the decoding warnings, which are all that precedes them.
    fn forget_lines(&mut self, decoding_warnings: usize) {
        self.list.truncate(decoding_warnings);
        self.listed = 0;
        self.dropped = 0;
    }

    /// Ends the line problems: says how many were not listed.
    fn close_lines(&mut self) {
        if self.dropped > 0 {
            let message = format!(
                "{} more line problems were not listed (the list stops after {MAX_LINE_PROBLEMS})",
                self.dropped
            );
            self.whole("too_many_problems", message);
        }
    }
}

/// At most [`EXCERPT_CHARS`] characters of untrusted input, quoted and
/// escaped for a message (no control character, no NUL, ever).
struct Excerpt<'a>(&'a str);

impl fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(EXCERPT_CHARS) {
            for escaped in c.escape_debug() {
                f.write_char(escaped)?;
            }
        }
        if chars.next().is_some() {
            f.write_char('…')?;
        }
        f.write_char('"')
    }
}

/// `1 field`, `3 fields`.
fn counted(count: usize, noun: &str) -> String {
    format!("{count} {noun}{}", if count == 1 { "" } else { "s" })
}

/// A physical line number as `Line::line_no` stores it. Bodies are capped at
/// 64 KiB upstream, so this never saturates in practice.
fn line_no(line: u32) -> i32 {
    i32::try_from(line).unwrap_or(i32::MAX)
}

// ---------------------------------------------------------------------------
// The ticket
// ---------------------------------------------------------------------------

fn parse_text(text: &str, mut problems: Problems) -> ParsedTicket {
    let decoding_warnings = problems.list.len();
    let mut lines = PhysicalLines::new(text);
    let mut header = Header::default();
    let mut first_stray: Option<(u32, &str)> = None;

    let table = loop {
        let Some((number, line)) = lines.next() else {
            problems.forget_lines(decoding_warnings);
            problems.whole("no_product_table", no_table_message(text, first_stray));
            return header.into_invalid(problems);
        };
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        match header_row(number, line) {
            Some(Ok(table)) => break table,
            Some(Err(column)) => {
                problems.forget_lines(decoding_warnings);
                problems.at_line(number, "duplicate_column", || {
                    format!("the header row names the column {column:?} more than once; which one to read is a guess")
                });
                return header.into_invalid(problems);
            }
            None => {}
        }
        match trimmed.split_once(':') {
            Some((key, value)) if !key.trim().is_empty() => {
                header.read(number, key.trim(), value.trim(), &mut problems)
            }
            _ => {
                first_stray.get_or_insert((number, trimmed));
                problems.at_line(number, "bad_header_line", || {
                    format!("a header line is not `Key: value`: {}", Excerpt(trimmed))
                });
            }
        }
    };

    if table.name.is_none() {
        problems.at_line(table.line, "missing_name_column", || {
            "the header row has no `product` column: every name is empty".to_owned()
        });
    }
    let mut fields = Vec::with_capacity(table.width);
    let mut good = Vec::new();
    let mut sum = Some(Decimal::ZERO);
    for (number, record) in lines {
        if is_empty_record(record, table.delimiter) {
            continue;
        }
        if let Some(line) = read_record(number, record, &table, &mut fields, &mut problems) {
            sum = sum.and_then(|sum| sum.checked_add(line.price));
            good.push(line);
        }
    }
    problems.close_lines();
    header.report_absent(&mut problems);

    if good.is_empty() {
        problems.whole("no_lines", format!("the product table (header row at line {}) has no usable line", table.line));
        return header.into_invalid(problems);
    }
    if let Slot::Value(total) = header.total {
        if sum != Some(total) {
            let sum = sum.map_or_else(|| "an amount too large to add".to_owned(), |sum| sum.to_string());
            problems.whole(
                "total_mismatch",
                format!("the {} add up to {sum}, but Total is {total}", counted(good.len(), "usable line")),
            );
        }
    }
    let status = if problems.list.is_empty() { Status::Ok } else { Status::Partial };
    header.into_ticket(status, good, problems)
}
