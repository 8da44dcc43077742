//! The `Key: value` header: Order, VAT and Total, each seen at most once
//! (a repeat must agree), with their problems.

use rust_decimal::Decimal;

use super::money::{money_message, parse_money, MoneyError};
use super::{Excerpt, Line, ParsedTicket, Problems, Status, MAX_ID_BYTES};

/// One header value: never seen, understood, or unusable (bad, empty or
/// conflicting — the problem is already recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Slot<T> {
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
pub(super) struct Header<'a> {
    order: Slot<&'a str>,
    vat: Slot<Decimal>,
    pub(super) total: Slot<Decimal>,
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
    pub(super) fn read(&mut self, line: u32, key: &str, value: &'a str, problems: &mut Problems) {
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
    pub(super) fn report_absent(&self, problems: &mut Problems) {
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
    pub(super) fn into_invalid(self, problems: Problems) -> ParsedTicket {
        self.into_ticket(Status::Invalid, Vec::new(), problems)
    }

    pub(super) fn into_ticket(self, status: Status, lines: Vec<Line>, problems: Problems) -> ParsedTicket {
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
