//! SQL: one batch of tickets written atomically, one statement per table,
//! whatever the batch size.
//!
//! Each statement binds whole columns as arrays and expands them with
//! `UNNEST`, so the SQL text never depends on the batch size: the prepared
//! statement is reused by every batch and PostgreSQL's 65 535-parameter
//! limit never applies, even for a batch of 500 tickets of 2 000 lines.
//!
//! Two ways to write a batch:
//! - **Fast path**, [`WRITE_FRESH_BATCH`]: tickets, their idempotency
//!   keys, lines, product history and products in *one* statement
//!   (data-modifying CTEs), hence one round trip and one implicit
//!   transaction. Live tickets have fresh UUIDv7 ids, so their insert
//!   cannot conflict; if it does (a replayed ticket already stored, a key
//!   already taken), the statement fails as a whole with a unique violation
//!   and the batch goes the careful way.
//! - **Careful path**, in one transaction:
//!   1. `tickets`, `ON CONFLICT DO NOTHING RETURNING id`: a replayed ticket
//!      is skipped, and only the tickets actually inserted go on, so nothing
//!      is stored twice.
//!   2. `idempotency_keys` of those tickets, `ON CONFLICT DO NOTHING`: a key
//!      already taken by another ticket keeps pointing at that one. The
//!      ticket is stored all the same — it was answered `202` with its own
//!      id (its request could not look the key up, see `src/http.rs`) — and
//!      reported in [`Written::keys_taken`].
//!   3. `ticket_lines` of those tickets.
//!   4. `product_history` of those tickets.
//!   5. `products` of those tickets.
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

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions};
use sqlx::query::Query;
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::database_url::{DatabaseUrl, SessionAttrs};
use crate::ticket::{NewTicket, ParsedTicket, Status};

/// How long a connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a failed statement says about what to do next. One
/// classification for every writer of tickets (the batch writers and
/// `reprocess`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Worth retrying as is: the data is not at fault (I/O, connection,
    /// serialization, deadlock, shutdown, resources, a missing table that a
    /// migration will create, a standby refusing writes after a failover —
    /// SQLSTATE 25006: the writer drops its connection and reconnects
    /// through the host list).
    Transient,
    /// The database refused the data (SQLSTATE classes 22 and 23, or a
    /// value that cannot be encoded): retrying the same rows fails again.
    Data,
}

/// Classifies a failed statement; see [`Failure`].
pub fn classify(error: &sqlx::Error) -> Failure {
    let is_data = match error {
        sqlx::Error::Database(database) => {
            database.code().is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
        }
        sqlx::Error::Encode(_) => true,
        _ => false,
    };
    if is_data {
        Failure::Data
    } else {
        Failure::Transient
    }
}

/// The database refuses this service for good, however often it asks: a
/// wrong password (SQLSTATE 28P01), a role that does not exist or may not
/// log in (28000), a database that does not exist (3D000). Only an operator
/// can fix that, in `database_url` or in the database.
pub fn is_refusal(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(database) = error else { return false };
    database.code().is_some_and(|code| matches!(code.as_ref(), "28P01" | "28000" | "3D000"))
}

/// The database's latest refusal ([`is_refusal`]), for `/healthz` to
/// report: until a new connection opens, or for [`REFUSAL_STANDS_FOR`]
/// after it was last met (whoever meets it again renews it: the writers
/// retry at most 5 s apart while they hold tickets, `/readyz` at every
/// call). A connection opened before the refusal (the password changed
/// under it) does not clear it: the next one would fail.
#[derive(Debug, Default)]
pub struct DatabaseRefusal(std::sync::Mutex<Option<(Instant, String)>>);

/// How long a refusal is reported after it was last met.
pub const REFUSAL_STANDS_FOR: Duration = Duration::from_secs(15);

impl DatabaseRefusal {
    /// Notes what an attempt to open a connection met: a refusal is kept,
    /// success clears it, anything else (an outage) leaves it as it is.
    pub fn observe(&self, opened: Result<(), &sqlx::Error>) {
        let mut refusal = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match opened {
            Ok(()) => *refusal = None,
            Err(error) if is_refusal(error) => *refusal = Some((Instant::now(), error.to_string())),
            Err(_) => {}
        }
    }

    /// The refusal met within [`REFUSAL_STANDS_FOR`], if any.
    pub fn get(&self) -> Option<String> {
        let refusal = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        refusal.as_ref().filter(|(met, _)| met.elapsed() < REFUSAL_STANDS_FOR).map(|(_, text)| text.clone())
    }
}

/// The failure says nothing answers: no connection could be opened, or the
/// one in use broke (I/O, TLS, a pool with none to give, SQLSTATE class
/// 08, or the server shutting down or starting: 57P01..57P03). Worth a
/// cheap look for the database's return while backing off.
pub fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(database) => database
            .code()
            .is_some_and(|code| code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// Whether `error` is a standby refusing a write (SQLSTATE 25006): a
/// primary demoted, or a proxy that still routes to a standby; the
/// primary is found again by reconnecting.
pub fn is_read_only(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(database) if database.code().is_some_and(|code| code == "25006"))
}

/// The wait before retry number `attempt` (from 1): 50 ms doubling up to
/// 5 s, with up to 50 % random jitter so that retries do not run in
/// lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16);
    let base = BACKOFF_FIRST.saturating_mul(1 << exponent).min(BACKOFF_MAX);
    let jitter_fraction = (RandomState::new().hash_one(attempt) % 500) as u32;
    base + base * jitter_fraction / 1000
}

/// How often a pool over several hosts checks that it still reaches a
/// suitable one ([`lazy_pool`]).
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// Opens a connection to the first host of `url` that accepts one within
/// [`CONNECT_TIMEOUT`] and suits its `target_session_attrs` (a standby is
/// skipped when a writable session is wanted), trying the hosts in order
/// as libpq does.
pub async fn connect(url: &DatabaseUrl) -> Result<PgConnection, sqlx::Error> {
    connect_to_first_suitable(url).await.map(|(_host, connection)| connection)
}

/// [`connect`], with the index of the host it reached.
async fn connect_to_first_suitable(url: &DatabaseUrl) -> Result<(usize, PgConnection), sqlx::Error> {
    let mut failures = Vec::with_capacity(url.hosts().len());
    // When every host refuses us for good, say so with the first refusal.
    let mut refusals = Vec::new();
    for (index, host) in url.hosts().iter().enumerate() {
        let error = match connect_host(&host.options).await {
            Ok(mut connection) => match unsuitable(&mut connection, url.target()).await {
                Ok(None) => return Ok((index, connection)),
                Ok(Some(why)) => {
                    let _ = connection.close().await;
                    unsuitable_error(why)
                }
                Err(error) => error,
            },
            Err(error) => error,
        };
        if url.hosts().len() == 1 {
            return Err(error);
        }
        failures.push(format!("{}: {error}", host.name));
        if is_refusal(&error) {
            refusals.push(error);
        }
    }
    if refusals.len() == url.hosts().len() {
        return Err(refusals.swap_remove(0));
    }
    Err(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        format!("no suitable database host ({})", failures.join("; ")),
    )))
}

/// Opens a connection to one host, failing after [`CONNECT_TIMEOUT`]
/// rather than waiting on an unreachable host for as long as the kernel
/// does.
async fn connect_host(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
        ))),
    }
}

/// Why the server behind `connection` is not the kind `target` asks for;
/// `None` when it is.
async fn unsuitable(connection: &mut PgConnection, target: SessionAttrs) -> Result<Option<&'static str>, sqlx::Error> {
    match target {
        SessionAttrs::Any => Ok(None),
        SessionAttrs::ReadWrite => {
            let read_only: String = sqlx::query_scalar("SHOW transaction_read_only").fetch_one(connection).await?;
            Ok((read_only == "on").then_some("read-only session (a standby?), read-write wanted"))
        }
        SessionAttrs::Primary => {
            let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(connection).await?;
            Ok(in_recovery.then_some("in recovery (a standby), primary wanted"))
        }
    }
}

fn unsuitable_error(why: &str) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, why.to_string()))
}

/// A pool over `url` that connects on demand, each new connection checked
/// against `target_session_attrs`. With several hosts it opens its
/// connections on one of them at a time, the first suitable one at
/// [`point_at_primary`]; the returned [`PrimaryFollower`] checks every
/// [`FOLLOW_INTERVAL`] that the pool still gets a connection, and when it
/// does not (the primary died, a standby was promoted) points it at the
/// first suitable host again. Connections to a dead host fail their
/// ping and are replaced on the next acquire.
pub fn lazy_pool(url: &DatabaseUrl, options: PgPoolOptions) -> (PgPool, PrimaryFollower) {
    let target = url.target();
    let options = options.after_connect(move |connection, _metadata| {
        Box::pin(async move {
            match unsuitable(connection, target).await? {
                None => Ok(()),
                Some(why) => Err(unsuitable_error(why)),
            }
        })
    });
    let first = url.hosts()[0].options.clone();
    let pool = options.connect_lazy_with(first);
    let task = (url.hosts().len() > 1).then(|| tokio::spawn(follow_primary(pool.clone(), url.clone())));
    (pool, PrimaryFollower { task })
}

/// Points `pool` at the first suitable host of `url` (see [`connect`]).
pub async fn point_at_primary(pool: &PgPool, url: &DatabaseUrl) -> Result<(), sqlx::Error> {
    let (index, connection) = connect_to_first_suitable(url).await?;
    let _ = connection.close().await;
    let host = &url.hosts()[index];
    if pool.connect_options().get_host() != host.options.get_host()
        || pool.connect_options().get_port() != host.options.get_port()
    {
        tracing::info!(message = "database pool now connects to", host = %host.name);
        pool.set_connect_options(host.options.clone());
    }
    Ok(())
}

/// The task that keeps a pool over several hosts on a suitable one; it
/// stops when dropped.
#[derive(Debug)]
pub struct PrimaryFollower {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for PrimaryFollower {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn follow_primary(pool: PgPool, url: DatabaseUrl) {
    loop {
        tokio::time::sleep(FOLLOW_INTERVAL).await;
        if pool.is_closed() {
            return;
        }
        if let Ok(Ok(_connection)) = tokio::time::timeout(FOLLOW_INTERVAL, pool.acquire()).await {
            continue;
        }
        if let Err(error) = point_at_primary(&pool, &url).await {
            tracing::debug!(message = "no suitable database host yet", %error);
        }
    }
}

/// Rows a committed batch wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub tickets: u64,
    pub lines: u64,
    pub products: u64,
    /// `product_history` rows inserted or updated.
    pub history: u64,
    /// Tickets stored under an idempotency key that already stood for
    /// another ticket (which it keeps standing for).
    pub keys_taken: Vec<Uuid>,
}

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

type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// The products upsert's conflict clause, shared by both paths.
macro_rules! products_on_conflict {
    () => {
        "    ON CONFLICT (product_id) DO UPDATE SET
        name           = CASE WHEN p.last_seen_at <= EXCLUDED.last_seen_at THEN EXCLUDED.name ELSE p.name END,
        price          = CASE WHEN p.last_seen_at <= EXCLUDED.last_seen_at THEN EXCLUDED.price ELSE p.price END,
        last_ticket_id = CASE WHEN p.last_seen_at <= EXCLUDED.last_seen_at
                              THEN EXCLUDED.last_ticket_id ELSE p.last_ticket_id END,
        last_seen_at   = GREATEST(p.last_seen_at, EXCLUDED.last_seen_at),
        first_seen_at  = LEAST(p.first_seen_at, EXCLUDED.first_seen_at),
        times_seen     = p.times_seen + EXCLUDED.times_seen"
    };
}

/// The history upsert's conflict clause, shared by both paths and
/// `reprocess`.
macro_rules! history_on_conflict {
    () => {
        "    ON CONFLICT (product_id, name, price) DO UPDATE SET
        first_seen_at = LEAST(h.first_seen_at, EXCLUDED.first_seen_at),
        last_seen_at  = GREATEST(h.last_seen_at, EXCLUDED.last_seen_at),
        times_seen    = h.times_seen + EXCLUDED.times_seen"
    };
}

const INSERT_TICKETS: &str = "
    INSERT INTO tickets (id, received_at, idempotency_key, status, order_id, vat, total, problems, raw)
    SELECT id, received_at, idempotency_key, status, order_id, vat, total, problems::jsonb, raw
    FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                $6::numeric[], $7::numeric[], $8::text[], $9::bytea[])
         AS t(id, received_at, idempotency_key, status, order_id, vat, total, problems, raw)
    ON CONFLICT DO NOTHING
    RETURNING id";

/// The keys of freshly inserted tickets (one ticket per key), where free;
/// returns the tickets whose key this took. A key row another writer has
/// inserted and not committed yet is waited for: committed, it stands.
const INSERT_KEYS: &str = "
    INSERT INTO idempotency_keys (key, ticket_id, received_at, status, body_sha256)
    SELECT key, id, received_at, status, sha256(raw)
    FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::bytea[])
         AS n(id, received_at, key, status, raw)
    ON CONFLICT (key) DO NOTHING
    RETURNING ticket_id";

/// Locks the key rows that were taken, in key order (writers lock keys in
/// the same order: no deadlock), so that [`TAKE_OVER_KEYS`], a statement
/// of its own and hence a snapshot taken after these locks, sees the
/// ticket of a key committed by a writer this one waited for.
const LOCK_KEYS: &str = "SELECT key FROM idempotency_keys WHERE key = ANY($1) ORDER BY key FOR UPDATE";

/// A key whose ticket is no longer stored (a partition dropped by the
/// retention, a ticket deleted by hand) is free again: it is taken over,
/// so that the key stands for a stored ticket. Returns the tickets whose
/// key this took.
const TAKE_OVER_KEYS: &str = "
    UPDATE idempotency_keys k SET
        ticket_id = n.id, received_at = n.received_at, status = n.status, body_sha256 = sha256(n.raw)
    FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::bytea[])
         AS n(id, received_at, key, status, raw)
    WHERE k.key = n.key AND NOT ticket_is_stored(k.ticket_id, k.received_at)
    RETURNING n.id";

const INSERT_LINES: &str = "
    INSERT INTO ticket_lines (ticket_id, received_at, line_no, product_id, name, price)
    SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::int4[], $4::text[], $5::text[], $6::numeric[])";

const UPSERT_PRODUCTS: &str = concat!(
    "
    INSERT INTO products AS p (product_id, name, price, first_seen_at, last_seen_at, last_ticket_id, times_seen)
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::numeric[], $4::timestamptz[], $5::timestamptz[],
                         $6::uuid[], $7::int8[])
",
    products_on_conflict!()
);

const UPSERT_HISTORY: &str = concat!(
    "
    INSERT INTO product_history AS h (product_id, name, price, first_seen_at, last_seen_at, times_seen)
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::numeric[], $4::timestamptz[], $5::timestamptz[], $6::int8[])
",
    history_on_conflict!()
);

/// The fast path: the five inserts above in one statement, the tickets'
/// and the keys' without `ON CONFLICT` so that a ticket already stored, or
/// a key already taken, fails it whole.
/// The products upsert runs last: it locks the hot rows every writer
/// touches, and holds them until the commit, so the tickets and lines go
/// first, then the history (hot too, but less: see the module docs).
/// PostgreSQL runs the main statement first, then the `WITH` sub-statements
/// nobody reads, the last one written first: tickets, keys, lines, history,
/// products. Nothing reads them, so no row is kept for a `RETURNING`.
/// The keys reuse the tickets' parameters.
const WRITE_FRESH_BATCH: &str = concat!(
    "
    WITH upserted_products AS (
        INSERT INTO products AS p (product_id, name, price, first_seen_at, last_seen_at, last_ticket_id, times_seen)
        SELECT * FROM UNNEST($16::text[], $17::text[], $18::numeric[], $19::timestamptz[], $20::timestamptz[],
                             $21::uuid[], $22::int8[])
",
    products_on_conflict!(),
    "
    ), upserted_history AS (
        INSERT INTO product_history AS h (product_id, name, price, first_seen_at, last_seen_at, times_seen)
        SELECT * FROM UNNEST($23::text[], $24::text[], $25::numeric[], $26::timestamptz[], $27::timestamptz[],
                             $28::int8[])
",
    history_on_conflict!(),
    "
    ), new_lines AS (
        INSERT INTO ticket_lines (ticket_id, received_at, line_no, product_id, name, price)
        SELECT * FROM UNNEST($10::uuid[], $11::timestamptz[], $12::int4[], $13::text[], $14::text[],
                             $15::numeric[])
    ), new_keys AS (
        INSERT INTO idempotency_keys (key, ticket_id, received_at, status, body_sha256)
        SELECT key, id, received_at, status, sha256(raw)
        FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $9::bytea[])
             AS k(id, received_at, key, status, raw)
        WHERE key IS NOT NULL
    )
    INSERT INTO tickets (id, received_at, idempotency_key, status, order_id, vat, total, problems, raw)
    SELECT id, received_at, idempotency_key, status, order_id, vat, total, problems::jsonb, raw
    FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                $6::numeric[], $7::numeric[], $8::text[], $9::bytea[])
         AS t(id, received_at, idempotency_key, status, order_id, vat, total, problems, raw)
"
);

/// `unique_violation`: the fast path met a ticket that is already stored.
const UNIQUE_VIOLATION: &str = "23505";

/// Applies the migrations in `migrations/` that are not applied yet.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

/// Applies the migrations on the primary of `database` (the `migrate`
/// command).
pub async fn migrate_database(database: &DatabaseUrl) -> anyhow::Result<()> {
    use anyhow::Context;
    let (pool, _follower) = lazy_pool(database, PgPoolOptions::new().max_connections(1));
    point_at_primary(&pool, database).await.context("connecting to PostgreSQL")?;
    migrate(&pool).await.context("applying migrations")?;
    tracing::info!(message = "migrations applied");
    Ok(())
}

/// Writes `batch` atomically: on error nothing of it is written. Tickets
/// already stored (same id or idempotency key) are skipped, not counted.
pub async fn write_batch(connection: &mut PgConnection, batch: &[&NewTicket]) -> Result<Written, sqlx::Error> {
    match write_fresh_batch(connection, batch).await {
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            write_batch_skipping_stored(connection, batch).await
        }
        result => result,
    }
}

/// The fast path, one statement; fails with a unique violation if any
/// ticket of `batch` is already stored.
pub async fn write_fresh_batch(connection: &mut PgConnection, batch: &[&NewTicket]) -> Result<Written, sqlx::Error> {
    let lines = LineColumns::new(batch);
    let line_count = lines.ticket_ids.len() as u64;
    // Every distinct product of the batch is inserted or updated: one row each.
    let products = ProductColumns::new(batch);
    let product_count = products.product_ids.len() as u64;
    // The same for every distinct (product id, name, price).
    let history = HistoryColumns::new(merge_history(batch));
    let history_count = history.product_ids.len() as u64;
    let query = sqlx::query(WRITE_FRESH_BATCH);
    history.bind(products.bind(lines.bind(TicketColumns::new(batch).bind(query)))).execute(connection).await?;
    Ok(Written {
        tickets: batch.len() as u64,
        lines: line_count,
        products: product_count,
        history: history_count,
        keys_taken: Vec::new(),
    })
}

/// The careful path: one statement per table in one transaction, skipping
/// the tickets already stored.
pub async fn write_batch_skipping_stored(
    connection: &mut PgConnection,
    batch: &[&NewTicket],
) -> Result<Written, sqlx::Error> {
    let mut transaction = connection.begin().await?;
    let inserted = insert_tickets(&mut transaction, batch).await?;
    let fresh: Vec<&NewTicket> = batch.iter().copied().filter(|ticket| inserted.contains(&ticket.id)).collect();
    let keys_taken = insert_keys(&mut transaction, &fresh).await?;
    let lines = insert_lines(&mut transaction, &fresh).await?;
    let history = upsert_history(&mut transaction, merge_history(&fresh)).await?;
    let products = upsert_products(&mut transaction, &fresh).await?;
    transaction.commit().await?;
    Ok(Written { tickets: inserted.len() as u64, lines, products, history, keys_taken })
}

/// Stores the keys of freshly inserted `tickets`; returns the tickets
/// whose key already stood for another ticket, still stored. First wins,
/// always: a key is only taken over from a ticket that is gone, and a key
/// committed by a writer this one waited for is seen as taken.
async fn insert_keys(connection: &mut PgConnection, tickets: &[&NewTicket]) -> Result<Vec<Uuid>, sqlx::Error> {
    let keyed: Vec<&NewTicket> = tickets.iter().copied().filter(|ticket| ticket.idempotency_key.is_some()).collect();
    if keyed.is_empty() {
        return Ok(Vec::new());
    }
    // The first ticket of the batch with a key claims it (an upsert may
    // not touch one row twice), in key order.
    let mut seen = HashSet::new();
    let mut first_per_key: Vec<&NewTicket> =
        keyed.iter().copied().filter(|ticket| seen.insert(ticket.idempotency_key.as_deref())).collect();
    first_per_key.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
    let mut claimed =
        ticket_ids(bind_key_columns(sqlx::query(INSERT_KEYS), &first_per_key).fetch_all(&mut *connection).await?)?;
    let contested: Vec<&NewTicket> =
        first_per_key.iter().copied().filter(|ticket| !claimed.contains(&ticket.id)).collect();
    if !contested.is_empty() {
        let keys: Vec<&str> = contested.iter().filter_map(|ticket| ticket.idempotency_key.as_deref()).collect();
        sqlx::query(LOCK_KEYS).bind(keys).fetch_all(&mut *connection).await?;
        let query = bind_key_columns(sqlx::query(TAKE_OVER_KEYS), &contested);
        claimed.extend(ticket_ids(query.fetch_all(&mut *connection).await?)?);
    }
    Ok(keyed.iter().map(|ticket| ticket.id).filter(|id| !claimed.contains(id)).collect())
}

/// Binds the columns [`INSERT_KEYS`] and [`TAKE_OVER_KEYS`] read.
fn bind_key_columns<'q>(query: PgQuery<'q>, tickets: &[&'q NewTicket]) -> PgQuery<'q> {
    let columns = TicketColumns::new(tickets);
    query.bind(columns.ids).bind(columns.received_at).bind(columns.keys).bind(columns.statuses).bind(columns.raws)
}

fn ticket_ids(rows: Vec<sqlx::postgres::PgRow>) -> Result<HashSet<Uuid>, sqlx::Error> {
    rows.iter().map(|row| row.try_get::<Uuid, _>(0)).collect()
}

/// The lookup of [`stored_keys`], `$1` the keys: by the primary key only,
/// whatever the statistics say of the key times (a condition on
/// `received_at` here once made the plan scan every recent key), each
/// key's ticket checked after (`ticket_is_stored`, also during a
/// conversion to partitions).
pub const STORED_KEYS_SQL: &str = "SELECT key, ticket_id, received_at, status, body_sha256
    FROM idempotency_keys WHERE key = ANY($1) AND ticket_is_stored(ticket_id, received_at)";

/// The ticket an idempotency key stands for in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub ticket_id: Uuid,
    pub status: Status,
    pub body_sha256: [u8; 32],
}

/// The tickets these keys stand for, of those stored under one since
/// `since` (the retention) and still stored: a key whose ticket is gone
/// (its partition dropped by the retention) is a new key, never a repeat
/// of a ticket that is not there.
pub async fn stored_keys(
    pool: &PgPool,
    keys: &[&str],
    since: OffsetDateTime,
) -> Result<HashMap<String, StoredKey>, sqlx::Error> {
    // Planned for each call, with the keys in hand.
    let rows = sqlx::query(STORED_KEYS_SQL).bind(keys).persistent(false).fetch_all(pool).await?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        let received_at: OffsetDateTime = row.try_get("received_at")?;
        if received_at < since {
            continue;
        }
        let key: String = row.try_get("key")?;
        let status: String = row.try_get("status")?;
        let digest: Vec<u8> = row.try_get("body_sha256")?;
        let undecodable = |what: &str| sqlx::Error::Decode(format!("idempotency_keys.{what} of key {key:?}").into());
        let stored = StoredKey {
            ticket_id: row.try_get("ticket_id")?,
            status: Status::from_name(&status).ok_or_else(|| undecodable("status"))?,
            body_sha256: digest.try_into().map_err(|_| undecodable("body_sha256"))?,
        };
        found.insert(key, stored);
    }
    Ok(found)
}

/// Deletes at most `limit` keys stored before `before`, oldest first, in
/// one short transaction; returns how many. Rows another expiry is
/// deleting are skipped, so several instances never wait on each other,
/// and the writers never wait on an expiry: they insert new keys only.
pub async fn expire_keys(pool: &PgPool, before: OffsetDateTime, limit: i64) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM idempotency_keys WHERE key IN (
             SELECT key FROM idempotency_keys WHERE received_at < $1
             ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(before)
    .bind(limit)
    .persistent(false)
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}

async fn insert_tickets(connection: &mut PgConnection, batch: &[&NewTicket]) -> Result<HashSet<Uuid>, sqlx::Error> {
    let rows = TicketColumns::new(batch).bind(sqlx::query(INSERT_TICKETS)).fetch_all(connection).await?;
    rows.iter().map(|row| row.try_get::<Uuid, _>(0)).collect()
}

/// Inserts the lines of `tickets` (the careful path's step 2).
pub async fn insert_lines(connection: &mut PgConnection, tickets: &[&NewTicket]) -> Result<u64, sqlx::Error> {
    let lines = LineColumns::new(tickets);
    if lines.ticket_ids.is_empty() {
        return Ok(0);
    }
    Ok(lines.bind(sqlx::query(INSERT_LINES)).execute(connection).await?.rows_affected())
}

/// Adds `sightings` (from [`merge_history`], or `reprocess`'s differences,
/// where a negative count takes lines away) to `product_history`, in key
/// order (step 3).
pub async fn upsert_history(connection: &mut PgConnection, sightings: HistoryMerge<'_>) -> Result<u64, sqlx::Error> {
    let history = HistoryColumns::new(sightings);
    if history.product_ids.is_empty() {
        return Ok(0);
    }
    Ok(history.bind(sqlx::query(UPSERT_HISTORY)).execute(connection).await?.rows_affected())
}

/// Merges the products of `tickets` into the catalogue (step 4).
pub async fn upsert_products(connection: &mut PgConnection, tickets: &[&NewTicket]) -> Result<u64, sqlx::Error> {
    let products = ProductColumns::new(tickets);
    if products.product_ids.is_empty() {
        return Ok(0);
    }
    Ok(products.bind(sqlx::query(UPSERT_PRODUCTS)).execute(connection).await?.rows_affected())
}

/// `problems` is NULL for ok tickets, a JSON array otherwise.
pub(crate) fn problems_json(parsed: &ParsedTicket) -> Option<String> {
    if parsed.problems.is_empty() {
        return None;
    }
    serde_json::to_string(&parsed.problems).ok()
}

/// The `tickets` columns of a batch, one array per column.
struct TicketColumns<'a> {
    ids: Vec<Uuid>,
    received_at: Vec<OffsetDateTime>,
    keys: Vec<Option<&'a str>>,
    statuses: Vec<&'static str>,
    order_ids: Vec<Option<&'a str>>,
    vats: Vec<Option<Decimal>>,
    totals: Vec<Option<Decimal>>,
    problems: Vec<Option<String>>,
    raws: Vec<&'a [u8]>,
}

impl<'a> TicketColumns<'a> {
    fn new(batch: &[&'a NewTicket]) -> Self {
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

    fn bind<'q>(self, query: PgQuery<'q>) -> PgQuery<'q>
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
struct LineColumns<'a> {
    ticket_ids: Vec<Uuid>,
    received_at: Vec<OffsetDateTime>,
    line_nos: Vec<i32>,
    product_ids: Vec<&'a str>,
    names: Vec<&'a str>,
    prices: Vec<Decimal>,
}

impl<'a> LineColumns<'a> {
    fn new(tickets: &[&'a NewTicket]) -> Self {
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

    fn bind<'q>(self, query: PgQuery<'q>) -> PgQuery<'q>
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
struct ProductColumns<'a> {
    product_ids: Vec<&'a str>,
    names: Vec<&'a str>,
    prices: Vec<Decimal>,
    first_seen: Vec<OffsetDateTime>,
    last_seen: Vec<OffsetDateTime>,
    last_ticket_ids: Vec<Uuid>,
    times_seen: Vec<i64>,
}

impl<'a> ProductColumns<'a> {
    fn new(tickets: &[&'a NewTicket]) -> Self {
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

    fn bind<'q>(self, query: PgQuery<'q>) -> PgQuery<'q>
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
struct HistoryColumns<'a> {
    product_ids: Vec<&'a str>,
    names: Vec<&'a str>,
    prices: Vec<Decimal>,
    first_seen: Vec<OffsetDateTime>,
    last_seen: Vec<OffsetDateTime>,
    times_seen: Vec<i64>,
}

impl<'a> HistoryColumns<'a> {
    fn new(merged: HistoryMerge<'a>) -> Self {
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

    fn bind<'q>(self, query: PgQuery<'q>) -> PgQuery<'q>
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
    use super::*;

    #[test]
    fn backoff_grows_then_stays_capped() {
        assert!(backoff(1) >= BACKOFF_FIRST && backoff(1) < BACKOFF_FIRST * 2);
        assert!(backoff(3) >= BACKOFF_FIRST * 4);
        assert!(backoff(40) >= BACKOFF_MAX && backoff(40) <= BACKOFF_MAX * 3 / 2);
    }

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
