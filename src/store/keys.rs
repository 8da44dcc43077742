//! Idempotency keys in the database: claimed when their tickets are
//! written (first wins, always; a key is taken over only from a ticket
//! that is gone), looked up by the requests that carry them, expired after
//! the retention.

use std::collections::{HashMap, HashSet};

use sqlx::{PgConnection, PgPool, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::columns::{PgQuery, TicketColumns};
use crate::ticket::{NewTicket, Status};

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

/// Stores the keys of freshly inserted `tickets`; returns the tickets
/// whose key already stood for another ticket, still stored. First wins,
/// always: a key is only taken over from a ticket that is gone, and a key
/// committed by a writer this one waited for is seen as taken.
pub(super) async fn insert_keys(
    connection: &mut PgConnection,
    tickets: &[&NewTicket],
) -> Result<Vec<Uuid>, sqlx::Error> {
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
