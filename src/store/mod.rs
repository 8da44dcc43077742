//! SQL: one batch of tickets written atomically, one statement per table,
//! whatever the batch size.
//!
//! Each statement binds whole columns as arrays and expands them with
//! `UNNEST`, so the SQL text never depends on the batch size: the prepared
//! statement is reused by every batch and PostgreSQL's 65 535-parameter
//! limit never applies, even for a batch of 500 tickets of 2 000 lines.
//!
//! - `batch.rs`: the batch statements, the fast path and the careful path
//!   ([`write_batch`]);
//! - `columns.rs`: a batch's tickets as columns, products and product
//!   history merged in memory and sorted, so that writers lock rows in the
//!   same order;
//! - `keys.rs`: idempotency keys claimed when written, looked up, expired;
//! - `connect.rs`: connections over `database_url`'s host list, a pool
//!   that follows the primary;
//! - `failure.rs`: what a failed statement says (retry, data at fault,
//!   refused for good);
//! - `retry.rs`: the backoff between retries, and the retry loop of the
//!   migrations and `reprocess`.

mod batch;
mod columns;
mod connect;
mod failure;
mod keys;
mod retry;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

pub use batch::{
    insert_lines, upsert_history, upsert_products, write_batch, write_batch_skipping_stored, write_fresh_batch,
};
pub(crate) use columns::problems_json;
pub use columns::{
    add_sighting, history_name, merge_history, HistoryKey, HistoryMerge, HistorySeen, HISTORY_NAME_MAX_CHARS,
};
pub use connect::{connect, lazy_pool, point_at_primary, PrimaryFollower, CONNECT_TIMEOUT};
pub use failure::{classify, is_read_only, is_refusal, is_unreachable, DatabaseRefusal, Failure, REFUSAL_STANDS_FOR};
pub use keys::{expire_keys, stored_keys, StoredKey, STORED_KEYS_SQL};
pub use retry::{retry, Backoff, Retries};

use crate::database_url::DatabaseUrl;

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
