//! Idempotency keys looked up in the database in batches. The requests
//! whose key this process does not remember ask together: one query for
//! every key pending, so a load where each request carries a key of its
//! own costs a round trip per batch, not per request (one query per
//! request took the throughput to a fifth, docs/performance.md).
//!
//! One query at a time: the keys asked while it runs make the next batch,
//! as the write-ahead log groups its records.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::store::{self, StoredKey};

/// Keys asked in one query, at most.
const MAX_KEYS_PER_QUERY: usize = 1_000;

/// Why a key could not be looked up.
pub type LookupFailed = String;

type Reply = oneshot::Sender<Result<Option<StoredKey>, LookupFailed>>;

/// The handle requests ask through; the batches run in a task of their own
/// until every handle is dropped.
#[derive(Clone)]
pub struct KeyLookup {
    sender: mpsc::UnboundedSender<(String, Reply)>,
    timeout: Duration,
}

impl KeyLookup {
    /// Starts the task that queries `pool` for keys stored within
    /// `retention`; a query slower than `timeout` fails its batch, and no
    /// request waits longer than `timeout` for its answer, so that a
    /// database that stopped answering holds nobody longer than that.
    pub fn spawn(pool: PgPool, retention: Duration, timeout: Duration) -> KeyLookup {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, retention, timeout, receiver));
        KeyLookup { sender, timeout }
    }

    /// The ticket the database holds under `key`, if any.
    pub async fn stored(&self, key: &str) -> Result<Option<StoredKey>, LookupFailed> {
        let (reply, answer) = oneshot::channel();
        self.sender.send((key.to_string(), reply)).map_err(|_| "key lookup stopped".to_string())?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(answer) => answer.map_err(|_| "key lookup stopped".to_string())?,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

async fn run(
    pool: PgPool,
    retention: Duration,
    timeout: Duration,
    mut receiver: mpsc::UnboundedReceiver<(String, Reply)>,
) {
    let mut batch = Vec::with_capacity(MAX_KEYS_PER_QUERY);
    while receiver.recv_many(&mut batch, MAX_KEYS_PER_QUERY).await > 0 {
        // Nobody waits for these any more (gone, or past their timeout).
        batch.retain(|(_, reply)| !reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let keys: Vec<&str> = batch.iter().map(|(key, _)| key.as_str()).collect();
        let since = OffsetDateTime::now_utc() - retention;
        let found: Result<HashMap<String, StoredKey>, LookupFailed> =
            match tokio::time::timeout(timeout, store::stored_keys(&pool, &keys, since)).await {
                Ok(Ok(found)) => Ok(found),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
        for (key, reply) in batch.drain(..) {
            let _ = reply.send(found.as_ref().map(|found| found.get(&key).cloned()).map_err(Clone::clone));
        }
    }
}
