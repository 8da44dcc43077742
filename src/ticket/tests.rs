//! Tests of the parser as a whole: the problem list, excerpts, the example
//! ticket, and property tests (never panics, bounded output, exact sums).

use super::*;
use proptest::prelude::*;
use std::str::FromStr;

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

#[test]
fn excerpts_are_short_quoted_and_free_of_nul() {
    assert_eq!(Excerpt("Caf\0é").to_string(), r#""Caf\0é""#);
    let long = "x".repeat(100);
    assert_eq!(Excerpt(&long).to_string(), format!("\"{}…\"", "x".repeat(40)));
}

#[test]
fn heap_bytes_counts_what_the_allocator_hands_out() {
    assert_eq!((allocated(0), allocated(1), allocated(24), allocated(25), allocated(100)), (0, 32, 32, 48, 112));
    let mut body = String::from("Order: 1\n\nproduct,product_id,price\n");
    for line in 0..1500 {
        body.push_str(&format!("Article {line},P{line:05},1.25\n"));
    }
    let ticket = ParsedTicket::parse(body.as_bytes());
    assert_eq!(ticket.lines.len(), 1500);
    // The lines' vector, then two strings of at least 32 bytes per line.
    let at_least = ticket.lines.capacity() * std::mem::size_of::<Line>() + 1500 * 2 * 32;
    assert!(ticket.heap_bytes() >= at_least, "{} < {at_least}", ticket.heap_bytes());
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
