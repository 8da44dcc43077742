//! `cargo bench --bench ingest`: the two costs on a ticket's way to a row.
//!
//! - `parse/*`: `ParsedTicket::parse` on the sample ticket, a 30-line
//!   ticket and a malformed one.
//! - `flush/*`: one batch of sample tickets written to PostgreSQL, three
//!   ways: the writers' one-statement fast path, the careful path (one
//!   statement per table in a transaction), and binary `COPY` of the same
//!   tickets and lines followed by the same products upsert — the
//!   comparison that decides which one the writers use.
//!
//! The flush benchmarks need a server: `BENCH_DATABASE_URL` (else
//! `TEST_DATABASE_URL`) pointing at its `postgres` database. A fresh
//! database is created for the run and dropped after it. Without either
//! variable they are skipped, with a message.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use rust_decimal::Decimal;
use sqlx::{Connection, Executor, PgConnection};
use ticket_ingest::store;
use ticket_ingest::ticket::NewTicket;
use ticket_ingest::ticket::ParsedTicket;
use time::OffsetDateTime;
use uuid::Uuid;

const SAMPLE: &[u8] = include_bytes!("../loadtest/ticket.txt");
const BATCH_SIZES: [usize; 3] = [1, 32, 500];

fn thirty_line_ticket() -> Vec<u8> {
    let mut text = String::from("Order: 987654\nVAT: 12.40\nTotal: 124.00\n\nproduct,product_id,price\n");
    for line in 0..30 {
        text.push_str(&format!("Produit numéro {line},P{line:04},{}.{:02}\n", 1 + line % 9, line * 7 % 100));
    }
    text.into_bytes()
}

fn bench_parse(criterion: &mut Criterion) {
    let thirty = thirty_line_ticket();
    let malformed = b"Order: 12\nVAT: abc\n\nproduct;price\nCaf\xe9,,1,2,3\n\"open,X1,2\n".to_vec();
    let mut group = criterion.benchmark_group("parse");
    for (name, body) in [("sample_2_lines", SAMPLE), ("30_lines", &thirty[..]), ("malformed", &malformed[..])] {
        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |bencher| bencher.iter(|| ParsedTicket::parse(black_box(body))));
    }
    group.finish();
}

fn sample_batch(size: usize) -> Vec<NewTicket> {
    let raw = Bytes::from_static(SAMPLE);
    let parsed = ParsedTicket::parse(&raw);
    (0..size)
        .map(|_| NewTicket {
            id: Uuid::now_v7(),
            received_at: OffsetDateTime::now_utc(),
            idempotency_key: None,
            raw: raw.clone(),
            parsed: parsed.clone(),
        })
        .collect()
}

/// The database the flush benchmarks write to, dropped with it.
struct BenchDatabase {
    server_url: String,
    name: String,
    runtime: tokio::runtime::Runtime,
    connection: PgConnection,
}

impl BenchDatabase {
    fn create() -> Option<BenchDatabase> {
        let url = std::env::var("BENCH_DATABASE_URL").or_else(|_| std::env::var("TEST_DATABASE_URL")).ok()?;
        let server_url = url.rsplit_once('/').map_or(url.as_str(), |(server, _)| server).to_string();
        let name = format!("bench_flush_{}", std::process::id());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let connection = runtime.block_on(async {
            let mut admin = PgConnection::connect(&url).await.expect("connect to the bench server");
            admin.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create the bench database");
            let database_url = format!("{server_url}/{name}");
            let pool = sqlx::PgPool::connect(&database_url).await.expect("connect to the bench database");
            store::migrate(&pool).await.expect("migrations");
            PgConnection::connect(&database_url).await.expect("connect to the bench database")
        });
        Some(BenchDatabase { server_url, name, runtime, connection })
    }

    /// Every path must have stored the sample ticket's exact values.
    fn check_rows(&mut self) {
        let wrong: i64 = self
            .runtime
            .block_on(
                sqlx::query_scalar(
                    "SELECT (SELECT count(*) FROM tickets WHERE vat <> 3.10 OR total <> 16.90 OR order_id <> '123456')
                          + (SELECT count(*) FROM ticket_lines WHERE price NOT IN (14.90, 2))",
                )
                .fetch_one(&mut self.connection),
            )
            .expect("check the written rows");
        assert_eq!(wrong, 0, "rows written by the flush benchmarks differ from the sample ticket");
    }

    fn drop_database(self) {
        let BenchDatabase { server_url, name, runtime, connection } = self;
        runtime.block_on(async {
            let _ = connection.close().await;
            if let Ok(mut admin) = PgConnection::connect(&format!("{server_url}/postgres")).await {
                let _ = admin.execute(format!("DROP DATABASE IF EXISTS {name}").as_str()).await;
            }
        });
    }
}

fn bench_flush(criterion: &mut Criterion, database: &mut BenchDatabase) {
    let mut group = criterion.benchmark_group("flush");
    group.sample_size(20).measurement_time(Duration::from_secs(5));
    for size in BATCH_SIZES {
        group.throughput(Throughput::Elements(size as u64));
        let BenchDatabase { runtime, connection, .. } = &mut *database;
        group.bench_function(BenchmarkId::new("one_statement", size), |bencher| {
            bencher.iter_batched(
                || sample_batch(size),
                |batch| runtime.block_on(store::write_fresh_batch(connection, &refs(&batch))).expect("flush"),
                BatchSize::PerIteration,
            )
        });
        group.bench_function(BenchmarkId::new("statement_per_table", size), |bencher| {
            bencher.iter_batched(
                || sample_batch(size),
                |batch| runtime.block_on(store::write_batch_skipping_stored(connection, &refs(&batch))).expect("flush"),
                BatchSize::PerIteration,
            )
        });
        group.bench_function(BenchmarkId::new("binary_copy", size), |bencher| {
            bencher.iter_batched(
                || sample_batch(size),
                |batch| runtime.block_on(copy_batch(connection, &refs(&batch))).expect("flush"),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn refs(batch: &[NewTicket]) -> Vec<&NewTicket> {
    batch.iter().collect()
}

/// Tickets and lines by binary `COPY` (encoded here, as a writer would),
/// then the same products upsert, in one transaction.
async fn copy_batch(connection: &mut PgConnection, batch: &[&NewTicket]) -> Result<(), sqlx::Error> {
    let mut transaction = connection.begin().await?;
    let mut copy = transaction
        .copy_in_raw(
            "COPY tickets (id, received_at, idempotency_key, status, order_id, vat, total, problems, raw) \
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    copy.send(encode_tickets(batch)).await?;
    copy.finish().await?;
    let mut copy = transaction
        .copy_in_raw(
            "COPY ticket_lines (ticket_id, received_at, line_no, product_id, name, price) FROM STDIN (FORMAT binary)",
        )
        .await?;
    copy.send(encode_lines(batch)).await?;
    copy.finish().await?;
    store::upsert_products(&mut transaction, batch).await?;
    transaction.commit().await
}

fn encode_tickets(batch: &[&NewTicket]) -> Vec<u8> {
    let mut out = copy_header();
    for ticket in batch {
        out.extend_from_slice(&9i16.to_be_bytes());
        field(&mut out, Some(ticket.id.as_bytes()));
        field(&mut out, Some(&timestamptz(ticket.received_at)));
        field(&mut out, ticket.idempotency_key.as_deref().map(str::as_bytes));
        field(&mut out, Some(ticket.parsed.status.as_str().as_bytes()));
        field(&mut out, ticket.parsed.order_id.as_deref().map(str::as_bytes));
        field(&mut out, ticket.parsed.vat.map(numeric).as_deref());
        field(&mut out, ticket.parsed.total.map(numeric).as_deref());
        let problems = (!ticket.parsed.problems.is_empty())
            .then(|| [&[1u8][..], &serde_json::to_vec(&ticket.parsed.problems).unwrap_or_default()].concat());
        field(&mut out, problems.as_deref());
        field(&mut out, Some(&ticket.raw));
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

fn encode_lines(batch: &[&NewTicket]) -> Vec<u8> {
    let mut out = copy_header();
    for ticket in batch {
        for line in &ticket.parsed.lines {
            out.extend_from_slice(&6i16.to_be_bytes());
            field(&mut out, Some(ticket.id.as_bytes()));
            field(&mut out, Some(&timestamptz(ticket.received_at)));
            field(&mut out, Some(&line.line_no.to_be_bytes()));
            field(&mut out, Some(line.product_id.as_bytes()));
            field(&mut out, Some(line.name.as_bytes()));
            field(&mut out, Some(&numeric(line.price)));
        }
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

fn copy_header() -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * 1024);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    out
}

fn field(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(bytes) => {
            out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
}

/// Microseconds since 2000-01-01 UTC, big-endian.
fn timestamptz(at: OffsetDateTime) -> [u8; 8] {
    const POSTGRES_EPOCH_UNIX_MICROS: i128 = 946_684_800_000_000;
    let micros = at.unix_timestamp_nanos() / 1000 - POSTGRES_EPOCH_UNIX_MICROS;
    (micros as i64).to_be_bytes()
}

/// PostgreSQL's binary `numeric`: base-10 000 digits around the point.
fn numeric(value: Decimal) -> Vec<u8> {
    let text = value.abs().to_string();
    let (integer, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let integer = integer.trim_start_matches('0');
    let integer_pad = (4 - integer.len() % 4) % 4;
    let fraction_pad = (4 - fraction.len() % 4) % 4;
    let digits_text = format!("{}{integer}{fraction}{}", "0".repeat(integer_pad), "0".repeat(fraction_pad));
    let mut digits: Vec<i16> = digits_text
        .as_bytes()
        .chunks(4)
        .map(|chunk| chunk.iter().fold(0, |n, d| n * 10 + i16::from(d - b'0')))
        .collect();
    let mut weight = ((integer.len() + integer_pad) / 4) as i16 - 1;
    while digits.first() == Some(&0) {
        digits.remove(0);
        weight -= 1;
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    let sign: u16 = if value.is_sign_negative() && !value.is_zero() { 0x4000 } else { 0 };
    let mut out = Vec::with_capacity(8 + 2 * digits.len());
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(value.scale() as u16).to_be_bytes());
    for digit in digits {
        out.extend_from_slice(&digit.to_be_bytes());
    }
    out
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_parse(&mut criterion);
    match BenchDatabase::create() {
        Some(mut database) => {
            bench_flush(&mut criterion, &mut database);
            database.check_rows();
            database.drop_database();
        }
        None => eprintln!("flush benchmarks skipped: set BENCH_DATABASE_URL (or TEST_DATABASE_URL) to a server"),
    }
    criterion.final_summary();
}
