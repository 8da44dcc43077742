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
// Decoding
// ---------------------------------------------------------------------------

/// Magic numbers of formats sent by mistake (a gzip body without its
/// `Content-Encoding`, an image or PDF of the receipt …).
const MAGIC_NUMBERS: [(&[u8], &str); 8] = [
    (b"\x1f\x8b", "gzip"),
    (b"PK\x03\x04", "zip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x89PNG", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"%PDF-", "PDF"),
    (b"\x7fELF", "ELF"),
];

/// Decodes the body to text, or says why there is no text (`None`, with the
/// problem recorded). Borrows when the body is UTF-8, as almost all are.
fn decode<'a>(raw: &'a [u8], problems: &mut Problems) -> Option<Cow<'a, str>> {
    if raw.is_empty() {
        problems.whole("empty", "the body is empty (0 bytes)".to_owned());
        return None;
    }
    if let Some((_, format)) = MAGIC_NUMBERS.iter().find(|(magic, _)| raw.starts_with(magic)) {
        problems.whole("binary", format!("the body starts with the {format} magic number: not a text ticket"));
        return None;
    }
    let mut text = decode_text(raw, problems);
    let padding = strip_nul_padding(&mut text);
    let reason = problems.list.len();
    if text.trim().is_empty() {
        if padding > 0 {
            problems.whole("binary", format!("the body is only NUL bytes and whitespace ({} bytes)", raw.len()));
        } else {
            problems.whole("empty", format!("the body is only whitespace ({} bytes)", raw.len()));
        }
        problems.list.drain(..reason);
        return None;
    }
    if let Some(message) = binary_text(&text) {
        // Only the reason: "decoded as Windows-1252" is noise about junk.
        problems.list.clear();
        problems.whole("binary", message);
        return None;
    }
    if padding > 0 {
        problems.whole("nul_padding", format!("the body ends with {padding} NUL bytes of padding; they were ignored"));
    }
    Some(text)
}

/// BOM sniffing, then UTF-8, then the Windows-1252 fallback.
fn decode_text<'a>(raw: &'a [u8], problems: &mut Problems) -> Cow<'a, str> {
    if let Some(body) = raw.strip_prefix(b"\xef\xbb\xbf") {
        return utf8_or_legacy(body, problems);
    }
    for (bom, encoding, name) in [(b"\xff\xfe", UTF_16LE, "UTF-16LE"), (b"\xfe\xff", UTF_16BE, "UTF-16BE")] {
        if let Some(body) = raw.strip_prefix(bom) {
            let (text, had_errors) = encoding.decode_without_bom_handling(body);
            let lossy = if had_errors { "; invalid sequences were replaced by U+FFFD" } else { "" };
            problems.whole("utf16_encoding", format!("the body is {name} (with a byte-order mark), not UTF-8{lossy}"));
            return text;
        }
    }
    utf8_or_legacy(raw, problems)
}

fn utf8_or_legacy<'a>(raw: &'a [u8], problems: &mut Problems) -> Cow<'a, str> {
    match std::str::from_utf8(raw) {
        Ok(text) => Cow::Borrowed(text),
        Err(error) => {
            problems.whole(
                "legacy_encoding",
                format!(
                    "the body is not valid UTF-8 (first invalid byte at offset {}); decoded as Windows-1252",
                    error.valid_up_to()
                ),
            );
            WINDOWS_1252.decode_without_bom_handling(raw).0
        }
    }
}

/// Drops trailing NULs (and the whitespace around them); returns how many
/// NULs there were.
fn strip_nul_padding(text: &mut Cow<'_, str>) -> usize {
    let kept = text.trim_end_matches(|c: char| c == '\0' || c.is_whitespace()).len();
    let nuls = text.get(kept..).map_or(0, |tail| tail.bytes().filter(|&b| b == 0).count());
    if nuls > 0 {
        match text {
            Cow::Borrowed(s) => *s = s.get(..kept).unwrap_or(s),
            Cow::Owned(s) => s.truncate(kept),
        }
    }
    nuls
}

/// `Some(message)` when the text is mostly not text. Counts bytes: control
/// characters are ASCII, and chars are the bytes that start a character.
fn binary_text(text: &str) -> Option<String> {
    let (mut controls, mut chars) = (0usize, 0usize);
    for b in text.bytes() {
        chars += usize::from(b & 0xC0 != 0x80);
        controls += usize::from((b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0C)) || b == 0x7F);
    }
    // 5 %: a NUL in one product name of a short ticket is ~1 %, random bytes ~11 %.
    (controls.saturating_mul(20) > chars).then(|| {
        format!(
            "the body looks binary: {controls} of {chars} characters are control characters \
             (UTF-16 is only read with a byte-order mark)"
        )
    })
}

// ---------------------------------------------------------------------------
// Lines
// ---------------------------------------------------------------------------

/// Physical lines with their 1-based numbers; CRLF, LF and CR end a line.
struct PhysicalLines<'a> {
    rest: &'a str,
    number: u32,
}

impl<'a> PhysicalLines<'a> {
    fn new(text: &'a str) -> Self {
        PhysicalLines { rest: text, number: 0 }
    }
}

impl<'a> Iterator for PhysicalLines<'a> {
    type Item = (u32, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        self.number = self.number.saturating_add(1);
        let end = self.rest.bytes().position(|b| b == b'\n' || b == b'\r');
        let (line, rest) = match end {
            None => (self.rest, ""),
            Some(end) => {
                let (line, ending) = self.rest.split_at_checked(end)?;
                let skip = if ending.starts_with("\r\n") { 2 } else { 1 };
                (line, ending.get(skip..).unwrap_or(""))
            }
        };
        self.rest = rest;
        Some((self.number, line))
    }
}

// ---------------------------------------------------------------------------
// CSV fields
// ---------------------------------------------------------------------------
//
// Index arithmetic below (`+ 1`, `+ 2`) is on byte positions inside one
// line, all at most `line.len()` ≤ `isize::MAX`: it cannot overflow. Every
// slice goes through `get`, so no index can panic.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuoteError {
    /// `"Menu, midi,aZde,14.90`: no closing quote on the line.
    Unterminated,
    /// `"Menu" midi,aZde,14.90`: text between a closing quote and the delimiter.
    TextAfterQuote,
}

/// Splits one line into fields, calling `each(index, field)` for each, and
/// returns how many there were. Fields are borrowed unless a `""` escape
/// must be undone. Unquoted fields keep their surrounding whitespace (the
/// caller trims); whitespace before an opening quote is skipped.
fn split_fields<'a>(
    line: &'a str,
    delimiter: u8,
    mut each: impl FnMut(usize, Cow<'a, str>),
) -> Result<usize, QuoteError> {
    let bytes = line.as_bytes();
    let is_blank = |b: u8| (b == b' ' || b == b'\t') && b != delimiter;
    let mut count = 0usize;
    let mut start = 0usize;
    loop {
        let mut quote = start;
        while bytes.get(quote).is_some_and(|&b| is_blank(b)) {
            quote += 1;
        }
        let (field, next) = if bytes.get(quote) == Some(&b'"') {
            let (field, mut after) = read_quoted(line, quote + 1)?;
            while bytes.get(after).is_some_and(|&b| is_blank(b)) {
                after += 1;
            }
            match bytes.get(after) {
                None => (field, None),
                Some(&b) if b == delimiter => (field, Some(after + 1)),
                Some(_) => return Err(QuoteError::TextAfterQuote),
            }
        } else {
            let tail = line.get(start..).unwrap_or("");
            match tail.bytes().position(|b| b == delimiter) {
                Some(end) => (Cow::Borrowed(tail.get(..end).unwrap_or("")), Some(start + end + 1)),
                None => (Cow::Borrowed(tail), None),
            }
        };
        each(count, field);
        count += 1;
        match next {
            Some(next) => start = next,
            None => return Ok(count),
        }
    }
}

/// Reads a quoted field whose content starts at `from`; returns it and the
/// index just after the closing quote.
fn read_quoted(line: &str, from: usize) -> Result<(Cow<'_, str>, usize), QuoteError> {
    let bytes = line.as_bytes();
    let mut unescaped: Option<String> = None;
    let (mut segment, mut search) = (from, from);
    loop {
        let offset = bytes.get(search..).and_then(|rest| rest.iter().position(|&b| b == b'"'));
        let quote = search + offset.ok_or(QuoteError::Unterminated)?;
        let piece = line.get(segment..quote).unwrap_or("");
        if bytes.get(quote + 1) == Some(&b'"') {
            // `""`: keep one quote, continue after the pair.
            let buffer = unescaped.get_or_insert_with(String::new);
            buffer.push_str(piece);
            buffer.push('"');
            segment = quote + 2;
            search = quote + 2;
        } else {
            let field = match unescaped {
                None => Cow::Borrowed(piece),
                Some(mut buffer) => {
                    buffer.push_str(piece);
                    Cow::Owned(buffer)
                }
            };
            return Ok((field, quote + 1));
        }
    }
}

// ---------------------------------------------------------------------------
// Money
// ---------------------------------------------------------------------------

/// Why a money value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MoneyError {
    Empty,
    /// Not digits with an optional sign, separator and `€`.
    Malformed,
    /// More than one `.`/`,`: grouping separators, or junk.
    Grouping,
    /// More than 2 decimals (the count).
    Precision(usize),
    /// Absolute value ≥ 10^10: does not fit `NUMERIC(12,2)`.
    OutOfRange,
}

/// Largest number of integer digits (after leading zeros) that fits
/// `NUMERIC(12,2)`.
const MAX_INTEGER_DIGITS: usize = 10;

/// Parses money exactly; the result always has scale 2. See the module
/// documentation for what is accepted.
fn parse_money(input: &str) -> Result<Decimal, MoneyError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(MoneyError::Empty);
    }
    let (s, euro) = strip_euro(s);
    let (negative, s) = match (s.strip_prefix('-'), s.strip_prefix('+')) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => (false, s),
    };
    // `-€2.00`: the sign may come before the euro sign (only one `€`).
    let s = if euro { s } else { s.strip_prefix('€').map_or(s, str::trim_start) };
    let (integer, fraction) = split_decimal(s)?;
    let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(integer) || !all_digits(fraction.unwrap_or("")) {
        return Err(MoneyError::Malformed);
    }
    // `.50` is fine, `5.` is not (a body cut in the middle of `5.00`).
    match fraction {
        None if integer.is_empty() => return Err(MoneyError::Malformed),
        Some("") => return Err(MoneyError::Malformed),
        Some(fraction) if fraction.len() > 2 => return Err(MoneyError::Precision(fraction.len())),
        _ => {}
    }
    if integer.trim_start_matches('0').len() > MAX_INTEGER_DIGITS {
        return Err(MoneyError::OutOfRange);
    }
    let fraction = fraction.unwrap_or("");
    let padding = std::iter::repeat(b'0').take(2usize.saturating_sub(fraction.len()));
    let mut cents: i64 = 0;
    for digit in integer.bytes().chain(fraction.bytes()).chain(padding) {
        cents = cents
            .checked_mul(10)
            .and_then(|c| c.checked_add(i64::from(digit.wrapping_sub(b'0'))))
            .ok_or(MoneyError::OutOfRange)?;
    }
    let cents = if negative { -cents } else { cents };
    Decimal::try_new(cents, 2).map_err(|_| MoneyError::OutOfRange)
}

/// Removes one `€` at either end, with the spaces next to it.
fn strip_euro(s: &str) -> (&str, bool) {
    if let Some(rest) = s.strip_prefix('€') {
        (rest.trim_start(), true)
    } else if let Some(rest) = s.strip_suffix('€') {
        (rest.trim_end(), true)
    } else {
        (s, false)
    }
}

/// Splits at the one decimal separator, if any.
fn split_decimal(s: &str) -> Result<(&str, Option<&str>), MoneyError> {
    let mut separators = s.match_indices(['.', ',']);
    match (separators.next(), separators.next()) {
        (None, _) => Ok((s, None)),
        (Some((at, _)), None) => Ok((s.get(..at).unwrap_or(""), Some(s.get(at + 1..).unwrap_or("")))),
        (Some(_), Some(_)) => Err(MoneyError::Grouping),
    }
}

/// A message for a refused money value; `what` names it (`price`, `Total`).
fn money_message(what: &str, raw: &str, error: MoneyError) -> String {
    let raw = Excerpt(raw);
    match error {
        MoneyError::Empty => format!("{what} is empty"),
        MoneyError::Malformed => format!("{what} {raw} is not a decimal number"),
        MoneyError::Grouping => {
            format!("{what} {raw} has more than one '.' or ','; thousands separators are not accepted")
        }
        MoneyError::Precision(decimals) => {
            format!("{what} {raw} has {decimals} decimal places; at most 2 are allowed, and it is not rounded")
        }
        MoneyError::OutOfRange => {
            format!("{what} {raw} is too large: the absolute value must be below 10^10 (NUMERIC(12,2))")
        }
    }
}

// ---------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------

/// One header value: never seen, understood, or unusable (bad, empty or
/// conflicting — the problem is already recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Slot<T> {
    #[default]
    Absent,
    Value(T),
    Unusable,
}

impl<T: PartialEq> Slot<T> {
    /// Records a value; returns `false` when it conflicts with an earlier
    /// different one (the slot then becomes unusable).
    fn offer(&mut self, value: T) -> bool {
        match self {
            Slot::Absent => *self = Slot::Value(value),
            Slot::Value(current) if *current == value => {}
            Slot::Value(_) => {
                *self = Slot::Unusable;
                return false;
            }
            Slot::Unusable => {}
        }
        true
    }

    fn value(self) -> Option<T> {
        match self {
            Slot::Value(value) => Some(value),
            Slot::Absent | Slot::Unusable => None,
        }
    }
}

/// The header values, borrowed from the text.
#[derive(Default)]
struct Header<'a> {
    order: Slot<&'a str>,
    vat: Slot<Decimal>,
    total: Slot<Decimal>,
}

/// The names of the money keys in codes and messages.
struct MoneyKey {
    name: &'static str,
    missing: &'static str,
    bad: &'static str,
    conflicting: &'static str,
}

const VAT: MoneyKey = MoneyKey { name: "VAT", missing: "missing_vat", bad: "bad_vat", conflicting: "conflicting_vat" };
const TOTAL: MoneyKey =
    MoneyKey { name: "Total", missing: "missing_total", bad: "bad_total", conflicting: "conflicting_total" };

impl<'a> Header<'a> {
    /// Reads one `key: value` line (both trimmed). Unknown keys are ignored:
    /// registers add `Cashier:`, `Date:` and the like.
    fn read(&mut self, line: u32, key: &str, value: &'a str, problems: &mut Problems) {
        if key.eq_ignore_ascii_case("order") {
            self.read_order(line, value, problems);
        } else if key.eq_ignore_ascii_case("vat") {
            read_money(&mut self.vat, &VAT, line, value, problems);
        } else if key.eq_ignore_ascii_case("total") {
            read_money(&mut self.total, &TOTAL, line, value, problems);
        }
    }

    fn read_order(&mut self, line: u32, value: &'a str, problems: &mut Problems) {
        let refused = if value.is_empty() {
            Some(("missing_order", "the Order line has no value".to_owned()))
        } else if value.contains('\0') {
            Some(("nul_byte", format!("Order {} contains a NUL byte", Excerpt(value))))
        } else if value.len() > MAX_ID_BYTES {
            Some(("order_too_long", format!("Order {} is longer than {MAX_ID_BYTES} bytes", Excerpt(value))))
        } else if !self.order.offer(value) {
            Some(("conflicting_order", format!("a second Order {} differs from the first one", Excerpt(value))))
        } else {
            None
        };
        if let Some((code, message)) = refused {
            self.order = Slot::Unusable;
            problems.at_line(line, code, || message);
        }
    }

    /// Whole-ticket problems for absent keys.
    fn report_absent(&self, problems: &mut Problems) {
        if self.order == Slot::Absent {
            problems.whole("missing_order", "the header has no Order line".to_owned());
        }
        for (slot, key) in [(self.vat, &VAT), (self.total, &TOTAL)] {
            if slot == Slot::Absent {
                problems.whole(key.missing, format!("the header has no {} line", key.name));
            }
        }
    }

    /// An invalid ticket: no lines, whatever header values were understood.
    fn into_invalid(self, problems: Problems) -> ParsedTicket {
        self.into_ticket(Status::Invalid, Vec::new(), problems)
    }

    fn into_ticket(self, status: Status, lines: Vec<Line>, problems: Problems) -> ParsedTicket {
        ParsedTicket {
            status,
            order_id: self.order.value().map(str::to_owned),
            vat: self.vat.value(),
            total: self.total.value(),
            lines,
            problems: problems.list,
        }
    }
}

fn read_money(slot: &mut Slot<Decimal>, key: &MoneyKey, line: u32, value: &str, problems: &mut Problems) {
    let refused = match parse_money(value) {
        Err(MoneyError::Empty) => Some((key.missing, format!("the {} line has no value", key.name))),
        Err(error) => Some((key.bad, money_message(key.name, value, error))),
        Ok(amount) if !slot.offer(amount) => {
            Some((key.conflicting, format!("a second {} {} differs from the first one", key.name, Excerpt(value))))
        }
        Ok(_) => None,
    };
    if let Some((code, message)) = refused {
        *slot = Slot::Unusable;
        problems.at_line(line, code, || message);
    }
}

// ---------------------------------------------------------------------------
// Product table
// ---------------------------------------------------------------------------

/// Where the columns are, from the header row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Table {
    /// Physical line of the header row.
    line: u32,
    delimiter: u8,
    /// Number of fields of the header row, hence of every record.
    width: usize,
    product_id: usize,
    price: usize,
    name: Option<usize>,
}

/// Where one named column was seen, and how often.
#[derive(Default, Clone, Copy)]
struct Seen {
    first: Option<usize>,
    count: usize,
}

impl Seen {
    fn see(&mut self, index: usize) {
        self.first.get_or_insert(index);
        self.count += 1;
    }
}

/// Whether `line` is a header row: `Some(Ok)` it is, `Some(Err(name))` it is
/// but names the column `name` twice, `None` it is not.
fn header_row(number: u32, line: &str) -> Option<Result<Table, &'static str>> {
    DELIMITERS.iter().find_map(|&delimiter| {
        if !line.as_bytes().contains(&delimiter) {
            return None;
        }
        let (mut product_id, mut price, mut name) = (Seen::default(), Seen::default(), Seen::default());
        let width = split_fields(line, delimiter, |index, field| {
            let field = field.trim();
            if field.eq_ignore_ascii_case("product_id") {
                product_id.see(index);
            } else if field.eq_ignore_ascii_case("price") {
                price.see(index);
            } else if field.eq_ignore_ascii_case("product") {
                name.see(index);
            }
        })
        .ok()?;
        let duplicate = [(product_id, "product_id"), (price, "price"), (name, "product")]
            .into_iter()
            .find(|(seen, _)| seen.count > 1);
        Some(match (product_id.first, price.first, duplicate) {
            (Some(_), Some(_), Some((_, column))) => Err(column),
            (Some(product_id), Some(price), None) => {
                Ok(Table { line: number, delimiter, width, product_id, price, name: name.first })
            }
            _ => return None,
        })
    })
}

/// The `no_product_table` message: what the body looked like instead.
fn no_table_message(text: &str, first_stray: Option<(u32, &str)>) -> String {
    const MISSING: &str = "no CSV header row with product_id and price columns";
    let start = text.trim_start();
    if start.starts_with('<') {
        format!("{MISSING}: the body looks like HTML or XML, starting {}", Excerpt(start))
    } else if start.starts_with('{') || start.starts_with('[') {
        format!("{MISSING}: the body looks like JSON, starting {}", Excerpt(start))
    } else if let Some((line, stray)) = first_stray {
        format!("{MISSING}; the first line that is not `Key: value` is line {line}: {}", Excerpt(stray))
    } else {
        format!("{MISSING}: the body has only `Key: value` lines")
    }
}

/// Reads one record; `Some` when it gives a line. Problems are recorded.
fn read_record<'t>(
    number: u32,
    record: &'t str,
    table: &Table,
    fields: &mut Vec<Cow<'t, str>>,
    problems: &mut Problems,
) -> Option<Line> {
    fields.clear();
    let split = split_fields(record, table.delimiter, |index, field| {
        // Fields past the header row's width only count: the record is refused.
        if index < table.width {
            fields.push(field);
        }
    });
    let count = match split {
        Ok(count) => count,
        Err(QuoteError::Unterminated) => {
            problems.at_line(number, "unterminated_quote", || {
                format!("a quoted field is not closed on its line: {}", Excerpt(record))
            });
            return None;
        }
        Err(QuoteError::TextAfterQuote) => {
            problems.at_line(number, "bad_quote", || {
                format!("text follows a closing quote before the delimiter: {}", Excerpt(record))
            });
            return None;
        }
    };
    if count != table.width {
        problems.at_line(number, "field_count", || {
            format!(
                "{} where the header row (line {}) has {}: {}",
                counted(count, "field"),
                table.line,
                table.width,
                Excerpt(record)
            )
        });
        return None;
    }
    let field = |index: usize| fields.get(index).map_or("", |f| f.trim());
    let product_id = field(table.product_id);
    let name = table.name.map_or("", field);
    let raw_price = field(table.price);

    let refused: Option<(&'static str, String)> = if product_id.is_empty() {
        Some(("missing_product_id", format!("product_id is empty: {}", Excerpt(record))))
    } else if product_id.contains('\0') {
        Some(("nul_byte", format!("product_id {} contains a NUL byte", Excerpt(product_id))))
    } else if product_id.len() > MAX_ID_BYTES {
        Some(("product_id_too_long", format!("product_id {} is longer than {MAX_ID_BYTES} bytes", Excerpt(product_id))))
    } else if name.contains('\0') {
        Some(("nul_byte", format!("name {} contains a NUL byte", Excerpt(name))))
    } else {
        None
    };
    if let Some((code, message)) = refused {
        problems.at_line(number, code, || message);
        return None;
    }
    let price = match parse_money(raw_price) {
        Ok(price) => price,
        Err(error) => {
            let code = match error {
                MoneyError::Precision(_) => "price_precision",
                MoneyError::OutOfRange => "price_out_of_range",
                MoneyError::Empty | MoneyError::Malformed | MoneyError::Grouping => "bad_price",
            };
            problems.at_line(number, code, || money_message("price", raw_price, error));
            return None;
        }
    };
    if name.is_empty() && table.name.is_some() {
        problems.at_line(number, "empty_name", || format!("product {} has an empty name", Excerpt(product_id)));
    }
    Some(Line { line_no: line_no(number), product_id: product_id.to_owned(), name: name.to_owned(), price })
}

/// A record with no data at all: only delimiters, quotes-free, and spaces.
fn is_empty_record(record: &str, delimiter: u8) -> bool {
    record.bytes().all(|b| b == delimiter || b.is_ascii_whitespace())
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
