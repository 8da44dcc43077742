//! Idempotency keys looked up in the database in batches. The requests
//! whose key this process does not remember ask together: one query for
//! every key pending, so a load where each request carries a key of its
//! own costs a round trip per batch, not per request (one query per
//! request took the throughput to a fifth, docs/performance.md).
//!
//! One query at a time: the keys asked while it runs make the next batch,
//! as the write-ahead log groups its records.
//!
//! A database that does not answer (down, or a lock held on `tickets`)
//! fails a batch after `timeout`; from then on every request is told at
//! once that the database cannot say, without asking, and the task probes
//! with the failed batch's keys every [`PROBE_EVERY`] until a lookup
//! answers again. So an outage costs each keyed request nothing, not a
//! timeout each (one ticket per connection per second, before).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::store::{self, StoredKey};

/// Keys asked in one query, at most.
const MAX_KEYS_PER_QUERY: usize = 1_000;

/// How often a lookup is tried again once the database did not answer one.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Why a key could not be looked up.
pub type LookupFailed = String;

type Reply = oneshot::Sender<Result<Option<StoredKey>, LookupFailed>>;

/// The handle requests ask through; the batches run in a task of their own
/// until every handle is dropped.
#[derive(Clone)]
pub struct KeyLookup {
    sender: mpsc::UnboundedSender<(String, Reply)>,
    timeout: Duration,
    /// The last lookup failed and no probe has answered since.
    unanswered: Arc<AtomicBool>,
}

impl KeyLookup {
    /// Starts the task that queries `pool` for keys stored within
    /// `retention`; a query slower than `timeout` fails its batch, and no
    /// request waits longer than `timeout` for its answer, so that a
    /// database that stopped answering holds nobody longer than that.
    pub fn spawn(pool: PgPool, retention: Duration, timeout: Duration) -> KeyLookup {
        let (sender, receiver) = mpsc::unbounded_channel();
        let unanswered = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(pool, retention, timeout, receiver, Arc::clone(&unanswered)));
        KeyLookup { sender, timeout, unanswered }
    }

    /// The ticket the database holds under `key`, if any.
    pub async fn stored(&self, key: &str) -> Result<Option<StoredKey>, LookupFailed> {
        if self.unanswered.load(Ordering::Acquire) {
            return Err("the database did not answer the last key lookup".to_string());
        }
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
    unanswered: Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(MAX_KEYS_PER_QUERY);
    while receiver.recv_many(&mut batch, MAX_KEYS_PER_QUERY).await > 0 {
        // Nobody waits for these any more (gone, or past their timeout).
        batch.retain(|(_, reply)| !reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let keys: Vec<&str> = batch.iter().map(|(key, _)| key.as_str()).collect();
        let found = look_up(&pool, &keys, retention, timeout).await;
        let failed = found.is_err();
        let probe_keys: Vec<String> =
            if failed { keys.iter().map(|key| key.to_string()).collect() } else { Vec::new() };
        for (key, reply) in batch.drain(..) {
            let _ = reply.send(found.as_ref().map(|found| found.get(&key).cloned()).map_err(Clone::clone));
        }
        if failed {
            unanswered.store(true, Ordering::Release);
            probe_until_answered(&pool, &probe_keys, retention, timeout, &mut receiver).await;
            unanswered.store(false, Ordering::Release);
        }
    }
}

/// One query for `keys`, within `timeout`.
async fn look_up(
    pool: &PgPool,
    keys: &[&str],
    retention: Duration,
    timeout: Duration,
) -> Result<HashMap<String, StoredKey>, LookupFailed> {
    let since = OffsetDateTime::now_utc() - retention;
    match tokio::time::timeout(timeout, store::stored_keys(pool, keys, since)).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Asks for `keys` again every [`PROBE_EVERY`] until the database answers;
/// meanwhile the requests that were already on their way are told it did
/// not (the others are not sent: the caller's flag is set).
async fn probe_until_answered(
    pool: &PgPool,
    keys: &[String],
    retention: Duration,
    timeout: Duration,
    receiver: &mut mpsc::UnboundedReceiver<(String, Reply)>,
) {
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    loop {
        loop {
            match receiver.try_recv() {
                Ok((_, reply)) => {
                    let _ = reply.send(Err("the database did not answer the last key lookup".to_string()));
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                // Every handle is gone: the service stops.
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        tokio::time::sleep(PROBE_EVERY).await;
        if look_up(pool, &keys, retention, timeout).await.is_ok() {
            tracing::info!(message = "idempotency keys are looked up again: the database answers");
            return;
        }
    }
}
