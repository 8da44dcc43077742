//! The ticket parser against its fixtures: every `tests/fixtures/tickets/NN-name.txt`
//! (raw bytes as a register sends them) is parsed and compared with
//! `NN-name.expected.json`. All mismatches are reported, by file, before failing.
//! The fixtures are written by `tests/fixtures/tickets/generate.py`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde_json::{json, Map, Value};
use ticket_ingest::ticket::{ParsedTicket, Status};

const REQUIRED_KEYS: [&str; 6] = ["status", "order_id", "vat", "total", "line_count", "problem_codes"];
const OPTIONAL_KEYS: [&str; 1] = ["lines"];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tickets")
}

/// File names in the fixture directory ending with `suffix`, sorted.
fn files_ending_with(suffix: &str) -> Vec<String> {
    let entries = fs::read_dir(fixture_dir()).expect("the fixture directory is readable");
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(suffix))
        .collect();
    names.sort();
    names
}

fn fixtures() -> Vec<String> {
    files_ending_with(".txt")
}

fn parse_fixture(name: &str) -> ParsedTicket {
    let raw = fs::read(fixture_dir().join(name)).expect("a fixture is readable");
    ParsedTicket::parse(&raw)
}

fn expectation_name(fixture: &str) -> String {
    format!("{}.expected.json", fixture.trim_end_matches(".txt"))
}

fn decimal(value: Option<Decimal>) -> Value {
    value.map_or(Value::Null, |d| Value::String(d.to_string()))
}

/// The parsed ticket in the shape of an expectation file.
fn as_expectation(ticket: &ParsedTicket) -> Map<String, Value> {
    let lines = ticket
        .lines
        .iter()
        .map(|line| {
            json!({
                "line_no": line.line_no,
                "product_id": line.product_id,
                "name": line.name,
                "price": line.price.to_string(),
            })
        })
        .collect();
    let problems = ticket.problems.iter().map(|p| json!({ "line": p.line, "code": p.code })).collect();
    let mut map = Map::new();
    map.insert("status".into(), ticket.status.as_str().into());
    map.insert("order_id".into(), ticket.order_id.clone().map_or(Value::Null, Value::String));
    map.insert("vat".into(), decimal(ticket.vat));
    map.insert("total".into(), decimal(ticket.total));
    map.insert("line_count".into(), ticket.lines.len().into());
    map.insert("lines".into(), Value::Array(lines));
    map.insert("problem_codes".into(), Value::Array(problems));
    map
}

/// Every difference between an expectation file and the parse, one line each.
fn mismatches(expected: &Value, ticket: &ParsedTicket) -> Vec<String> {
    let Some(expected) = expected.as_object() else {
        return vec!["the expectation file is not a JSON object".into()];
    };
    let actual = as_expectation(ticket);
    let mut found = Vec::new();
    for key in expected.keys() {
        if !REQUIRED_KEYS.contains(&key.as_str()) && !OPTIONAL_KEYS.contains(&key.as_str()) {
            found.push(format!("unknown key {key:?} in the expectation file"));
        }
    }
    for key in REQUIRED_KEYS {
        match expected.get(key) {
            None => found.push(format!("{key}: missing from the expectation file")),
            Some(want) if Some(want) != actual.get(key) => {
                found.push(format!("{key}: expected {want}, got {}", actual[key]));
            }
            Some(_) => {}
        }
    }
    // `lines` lists the first few lines only.
    if let Some(want) = expected.get("lines") {
        let got = actual["lines"].as_array().map_or(&[][..], Vec::as_slice);
        for (index, want) in want.as_array().map_or(&[][..], Vec::as_slice).iter().enumerate() {
            match got.get(index) {
                Some(got) if got == want => {}
                Some(got) => found.push(format!("lines[{index}]: expected {want}, got {got}")),
                None => found.push(format!("lines[{index}]: expected {want}, got nothing")),
            }
        }
    }
    if !found.is_empty() {
        for problem in &ticket.problems {
            found.push(format!("  (actual problem {}@{}: {})", problem.code, problem.line, problem.message));
        }
    }
    found
}

#[test]
fn every_fixture_parses_as_its_expectation_file_says() {
    let mut report = Vec::new();
    for fixture in fixtures() {
        let path = fixture_dir().join(expectation_name(&fixture));
        let expected: Value = match fs::read_to_string(&path).map(|text| serde_json::from_str(&text)) {
            Ok(Ok(value)) => value,
            Ok(Err(error)) => {
                report.push(format!("{fixture}: the expectation file is not JSON: {error}"));
                continue;
            }
            Err(error) => {
                report.push(format!("{fixture}: no readable expectation file: {error}"));
                continue;
            }
        };
        for mismatch in mismatches(&expected, &parse_fixture(&fixture)) {
            report.push(format!("{fixture}: {mismatch}"));
        }
    }
    assert!(report.is_empty(), "fixture mismatches:\n{}", report.join("\n"));
}

#[test]
fn every_fixture_has_an_expectation_file_and_every_expectation_file_a_fixture() {
    let fixtures: BTreeSet<String> = fixtures().iter().map(|f| expectation_name(f)).collect();
    let expectations: BTreeSet<String> = files_ending_with(".expected.json").into_iter().collect();
    let orphans: Vec<_> = fixtures.symmetric_difference(&expectations).collect();
    assert!(orphans.is_empty(), "fixture without expectation, or the reverse: {orphans:?}");
}

#[test]
fn there_are_at_least_forty_fixtures_named_by_number_and_purpose() {
    let fixtures = fixtures();
    assert!(fixtures.len() >= 40, "only {} fixtures", fixtures.len());
    let badly_named: Vec<_> = fixtures
        .iter()
        .filter(|name| {
            let bytes = name.as_bytes();
            !(bytes.len() > 7 && bytes[..2].iter().all(u8::is_ascii_digit) && bytes[2] == b'-')
        })
        .collect();
    assert!(badly_named.is_empty(), "fixtures not named NN-short-name.txt: {badly_named:?}");
}

#[test]
fn every_fixture_gives_what_the_database_can_store() {
    let limit = Decimal::from(10_000_000_000i64);
    let mut report = Vec::new();
    for fixture in fixtures() {
        let ticket = parse_fixture(&fixture);
        let mut complain = |what: &str| report.push(format!("{fixture}: {what}"));
        match ticket.status {
            Status::Ok if !ticket.problems.is_empty() => complain("ok with problems"),
            Status::Partial if ticket.problems.is_empty() || ticket.lines.is_empty() => {
                complain("partial without problems or without lines")
            }
            Status::Invalid if ticket.problems.is_empty() || !ticket.lines.is_empty() => {
                complain("invalid with lines or without problems")
            }
            _ => {}
        }
        let mut line_numbers = BTreeSet::new();
        for line in &ticket.lines {
            if line.product_id.is_empty() || line.product_id.contains('\0') || line.name.contains('\0') {
                complain("a line with an empty product id or a NUL");
            }
            if line.price.abs() >= limit || line.price.scale() > 2 {
                complain("a price that does not fit NUMERIC(12,2)");
            }
            if !line_numbers.insert(line.line_no) {
                complain("two lines with the same line_no");
            }
        }
        if ticket.order_id.as_deref().is_some_and(|order| order.is_empty() || order.contains('\0')) {
            complain("an empty order id or one with a NUL");
        }
        for problem in &ticket.problems {
            // `problems` is stored as jsonb, which rejects \u0000.
            if problem.message.is_empty() || problem.message.contains('\0') || problem.message.chars().count() > 200 {
                complain("a problem message empty, too long or with a NUL");
            }
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
fn parsing_a_fixture_twice_gives_the_same_ticket() {
    for fixture in fixtures() {
        assert_eq!(parse_fixture(&fixture), parse_fixture(&fixture), "{fixture}");
    }
}
