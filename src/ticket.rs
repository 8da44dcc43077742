//! Ticket parsing: raw webhook body → [`ParsedTicket`]. Pure, no I/O.
//! (stub — being written)

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

impl ParsedTicket {
    pub fn parse(_raw: &[u8]) -> ParsedTicket {
        ParsedTicket {
            status: Status::Invalid,
            order_id: None,
            vat: None,
            total: None,
            lines: Vec::new(),
            problems: Vec::new(),
        }
    }
}
