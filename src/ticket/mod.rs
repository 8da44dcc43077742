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
//! - this file: the public types, [`ParsedTicket::parse`], the problem list
//! - `decode`: bytes → text (BOM, UTF-8, UTF-16, Windows-1252, binary junk)
//! - `lines`:  physical lines and the fields of one CSV line
//! - `header`: the `Key: value` lines
//! - `table`:  the product table's header row and records
//! - `money`:  exact money parsing

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use encoding_rs::{UTF_16BE, UTF_16LE, WINDOWS_1252};
use rust_decimal::Decimal;
use serde::Serialize;

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

/// Line problems listed before the rest is summed up in `too_many_problems`.
pub const MAX_LINE_PROBLEMS: usize = 100;

/// Longest product id or order id kept, in bytes. Both are indexed in
/// PostgreSQL, whose B-tree entries cannot exceed ~2.7 kB; real ids are short.
pub const MAX_ID_BYTES: usize = 128;

/// Characters of input quoted in a message.
const EXCERPT_CHARS: usize = 40;

/// Delimiters a header row may use, in order of preference.
const DELIMITERS: [u8; 3] = [b',', b';', b'\t'];

impl ParsedTicket {
    /// Parses a raw body. Never panics; see the module documentation.
    pub fn parse(raw: &[u8]) -> ParsedTicket {
        let mut problems = Problems::default();
        match decode(raw, &mut problems) {
            Some(text) => parse_text(&text, problems),
            None => Header::default().into_invalid(problems),
        }
    }
}

mod decode;
mod header;
mod lines;
mod money;
mod table;

use decode::*;
use header::*;
use lines::*;
use money::*;
use table::*;

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

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn money_accepts_plain_signed_comma_and_euro_forms() {
        for (input, expected) in [
            ("2", "2.00"),
            ("2.5", "2.50"),
            ("14.90", "14.90"),
            ("14,90", "14.90"),
            (" 2.00 ", "2.00"),
            ("\u{a0}2,00\u{202f}€", "2.00"),
            ("-2.00", "-2.00"),
            ("+2.00", "2.00"),
            ("-0.00", "0.00"),
            (".50", "0.50"),
            ("€2", "2.00"),
            ("2 €", "2.00"),
            ("€ -2", "-2.00"),
            ("-€2.00", "-2.00"),
            ("-2.00 €", "-2.00"),
            ("0009999999999.99", "9999999999.99"),
            ("-9999999999.99", "-9999999999.99"),
        ] {
            assert_eq!(parse_money(input), Ok(dec(expected)), "input {input:?}");
            assert_eq!(parse_money(input).map(|d| d.scale()), Ok(2), "input {input:?}");
        }
    }

    #[test]
    fn money_refuses_what_it_would_have_to_guess() {
        use MoneyError::*;
        for (input, expected) in [
            ("", Empty),
            ("   ", Empty),
            ("abc", Malformed),
            ("5.", Malformed),
            (".", Malformed),
            ("-", Malformed),
            ("€", Malformed),
            ("1e5", Malformed),
            ("- 2", Malformed),
            ("--2", Malformed),
            ("(2.00)", Malformed),
            ("$2.00", Malformed),
            ("2.00 EUR", Malformed),
            ("€2€", Malformed),
            ("1 234,50", Malformed),
            ("١٢", Malformed),
            ("1,234.50", Grouping),
            ("1.234,50", Grouping),
            ("1.2.3", Grouping),
            ("1.234", Precision(3)),
            ("1,234", Precision(3)),
            ("14.900", Precision(3)),
            ("10000000000", OutOfRange),
            ("-10000000000.00", OutOfRange),
            ("99999999999999999999999999999999", OutOfRange),
        ] {
            assert_eq!(parse_money(input), Err(expected), "input {input:?}");
        }
    }

    #[test]
    fn physical_lines_end_at_crlf_lf_and_cr() {
        let lines: Vec<_> = PhysicalLines::new("a\r\nb\nc\rd\r\n\r\ne").collect();
        assert_eq!(lines, [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, ""), (6, "e")]);
        assert_eq!(PhysicalLines::new("a\n").count(), 1);
        assert_eq!(PhysicalLines::new("").count(), 0);
        assert_eq!(PhysicalLines::new("\r").collect::<Vec<_>>(), [(1, "")]);
    }

    fn fields(line: &str, delimiter: u8) -> Result<Vec<String>, QuoteError> {
        let mut out = Vec::new();
        split_fields(line, delimiter, |_, f| out.push(f.into_owned()))?;
        Ok(out)
    }

    #[test]
    fn fields_understand_quotes_and_escapes() {
        assert_eq!(fields("a,b,c", b','), Ok(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(
            fields(r#" "Menu, midi" ,x,"14,90""#, b','),
            Ok(vec!["Menu, midi".into(), "x".into(), "14,90".into()])
        );
        assert_eq!(fields(r#""Le ""grand"" café",x"#, b','), Ok(vec![r#"Le "grand" café"#.into(), "x".into()]));
        assert_eq!(fields(r#"Pizza 12",x"#, b','), Ok(vec![r#"Pizza 12""#.into(), "x".into()]));
        assert_eq!(fields("a,,", b','), Ok(vec!["a".into(), "".into(), "".into()]));
        assert_eq!(fields("\ta\t\tb", b'\t'), Ok(vec!["".into(), "a".into(), "".into(), "b".into()]));
        assert_eq!(fields(r#""Menu, midi,x"#, b','), Err(QuoteError::Unterminated));
        assert_eq!(fields(r#""Menu" midi,x"#, b','), Err(QuoteError::TextAfterQuote));
    }

    #[test]
    fn excerpts_are_short_quoted_and_free_of_nul() {
        assert_eq!(Excerpt("Caf\0é").to_string(), r#""Caf\0é""#);
        let long = "x".repeat(100);
        assert_eq!(Excerpt(&long).to_string(), format!("\"{}…\"", "x".repeat(40)));
    }

    #[test]
    fn header_rows_are_found_by_name_in_any_order_and_delimiter() {
        let table = header_row(5, " PRICE ,\"Product\",product_id,qty").unwrap().unwrap();
        assert_eq!((table.delimiter, table.width, table.product_id, table.price, table.name), (b',', 4, 2, 0, Some(1)));
        assert_eq!(header_row(1, "product;product_id;price").unwrap().unwrap().delimiter, b';');
        assert_eq!(header_row(1, "product,product_id,price,price"), Some(Err("price")));
        assert_eq!(header_row(1, "item,id,amount"), None);
        assert_eq!(header_row(1, "Order: 1"), None);
    }

    #[test]
    fn problems_are_capped_and_their_messages_built_lazily() {
        let mut problems = Problems::default();
        for line in 1..=250 {
            problems.at_line(line, "bad_price", || {
                assert!(line <= 100, "message built past the cap");
                String::from("x")
            });
        }
        problems.close_lines();
        assert_eq!(problems.list.len(), MAX_LINE_PROBLEMS + 1);
        assert_eq!(problems.list.last().map(|p| p.code), Some("too_many_problems"));
    }

    #[test]
    fn the_example_ticket_is_ok() {
        let ticket = ParsedTicket::parse(
            "Order: 123456\nVAT: 3.10\nTotal: 16.90\n\nproduct,product_id,price\nFormule(s) midi,aZde,14.90\nCafé,IZ8z,2\n"
                .as_bytes(),
        );
        assert_eq!(ticket.problems, []);
        assert_eq!(ticket.status, Status::Ok);
        assert_eq!(ticket.order_id.as_deref(), Some("123456"));
        assert_eq!((ticket.vat, ticket.total), (Some(dec("3.10")), Some(dec("16.90"))));
        assert_eq!(ticket.lines.len(), 2);
        assert_eq!(
            ticket.lines[1],
            Line { line_no: 7, product_id: "IZ8z".into(), name: "Café".into(), price: dec("2.00") }
        );
    }

    /// What the database and the callers rely on, whatever the input.
    fn check_invariants(ticket: &ParsedTicket) -> Result<(), TestCaseError> {
        let limit = Decimal::from(10_000_000_000i64);
        match ticket.status {
            Status::Ok => prop_assert!(ticket.problems.is_empty(), "ok with problems"),
            Status::Partial => {
                prop_assert!(!ticket.problems.is_empty(), "partial without problems");
                prop_assert!(!ticket.lines.is_empty(), "partial without lines");
            }
            Status::Invalid => {
                prop_assert!(ticket.lines.is_empty(), "invalid with lines");
                prop_assert!(!ticket.problems.is_empty(), "invalid without problems");
            }
        }
        let mut previous = 0;
        for line in &ticket.lines {
            prop_assert!(!line.product_id.trim().is_empty());
            prop_assert!(line.product_id.len() <= MAX_ID_BYTES);
            prop_assert!(!line.product_id.contains('\0') && !line.name.contains('\0'));
            prop_assert!(line.price.abs() < limit && line.price.scale() <= 2);
            prop_assert!(line.line_no > previous, "line numbers not increasing");
            previous = line.line_no;
        }
        if let Some(order) = &ticket.order_id {
            prop_assert!(!order.is_empty() && !order.contains('\0') && order.len() <= MAX_ID_BYTES);
        }
        for amount in [ticket.vat, ticket.total].into_iter().flatten() {
            prop_assert!(amount.abs() < limit && amount.scale() <= 2);
        }
        prop_assert!(ticket.problems.len() <= MAX_LINE_PROBLEMS + 8);
        for problem in &ticket.problems {
            prop_assert!(!problem.message.is_empty() && !problem.message.contains('\0'));
        }
        Ok(())
    }

    const VALID: &str = "Order: 123456\r\nVAT: 3.10\r\nTotal: 16.90\r\n\r\nproduct,product_id,price\r\n\
                         \"Menu, midi\",aZde,\"14,90\"\r\nCafé,IZ8z,2\r\n";

    /// Lines that exercise every branch when shuffled together.
    const FRAGMENTS: &[&str] = &[
        "Order: 1",
        "VAT: 3.10",
        "Total: 16.90",
        "TOTAL : -0",
        "Order:",
        "product,product_id,price",
        "price;product;product_id",
        "product_id\tprice",
        "product,product_id,price,price",
        "Café,IZ8z,2",
        "\"Menu, midi\",aZde,\"14,90\"",
        "\"unterminated,x,1",
        "\"a\" b,x,1",
        "a,,1",
        "a,b,99999999999",
        "a,b,1.234",
        "a,b,-€2.00",
        "a;b;2,50",
        "Caf\0é,IZ8z,2",
        ",,",
        "",
        "   ",
        "<html>",
        "\u{feff}",
        "\"\"\"\"",
    ];

    fn mutate(base: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
        let mut bytes = base.to_vec();
        for &(at, kind, byte) in edits {
            let at = if bytes.is_empty() { 0 } else { at % bytes.len() };
            match kind % 4 {
                0 => bytes.insert(at, byte),
                1 if !bytes.is_empty() => {
                    bytes.remove(at);
                }
                2 if !bytes.is_empty() => bytes[at] = byte,
                _ => bytes.truncate(at),
            }
        }
        bytes
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
            check_invariants(&ParsedTicket::parse(&raw))?;
        }

        #[test]
        fn parse_never_panics_on_mutated_valid_tickets(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..8),
        ) {
            check_invariants(&ParsedTicket::parse(&mutate(VALID.as_bytes(), &edits)))?;
        }

        #[test]
        fn parse_never_panics_on_shuffled_fragments(
            picks in proptest::collection::vec((0..FRAGMENTS.len(), 0..3usize), 0..40),
        ) {
            let mut body = String::new();
            for (fragment, ending) in picks {
                body.push_str(FRAGMENTS[fragment]);
                body.push_str(["\n", "\r\n", "\r"][ending]);
            }
            check_invariants(&ParsedTicket::parse(body.as_bytes()))?;
        }

        #[test]
        fn well_formed_tickets_parse_ok_and_exact(
            rows in proptest::collection::vec(("[A-Za-z0-9]{1,12}", "[A-Za-z(é][A-Za-z ()éè]{0,19}", -99_999_999i64..99_999_999), 1..30),
        ) {
            let total: i64 = rows.iter().map(|(_, _, cents)| cents).sum();
            let mut body = format!("Order: 42\nVAT: 1.00\nTotal: {}\n\nproduct,product_id,price\n", Decimal::new(total, 2));
            for (id, name, cents) in &rows {
                body.push_str(&format!("\"{name}\",{id},{}\n", Decimal::new(*cents, 2)));
            }
            let ticket = ParsedTicket::parse(body.as_bytes());
            check_invariants(&ticket)?;
            prop_assert_eq!(ticket.status, Status::Ok, "{:?}", ticket.problems);
            prop_assert_eq!(ticket.lines.len(), rows.len());
            for (line, (id, name, cents)) in ticket.lines.iter().zip(&rows) {
                prop_assert_eq!(&line.product_id, id);
                prop_assert_eq!(&line.name, name.trim());
                prop_assert_eq!(line.price, Decimal::new(*cents, 2));
            }
        }
    }
}
