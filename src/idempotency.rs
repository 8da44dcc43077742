//! The idempotency window: recent `Idempotency-Key`s and the answer their
//! first request got, so that a repeat gets the same answer.
//!
//! # Rules
//!
//! - The first request with a key **claims** it ([`RecentKeys::claim`]) and
//!   holds a [`Claim`] while it makes its ticket as safe as the ack mode
//!   promises. It then settles the claim with its answer, or drops it on a
//!   refusal.
//! - A repeat that arrives meanwhile **waits** for that outcome
//!   ([`Repeat::outcome`]): never a `202` for a first request that is not
//!   durable yet. If the first is refused, the repeat gets the same
//!   refusal, and the key is free again for the producer's next retry.
//! - A repeat is compared with the first by a hash of its body: the same
//!   body is a duplicate (`202` with the first id), another body is a
//!   conflict (first wins; the caller answers `409` with the first id).
//! - A key this process does not remember may have been stored earlier
//!   (before a restart, by another instance, longer ago than this window):
//!   the first request looks it up in the database while it holds the
//!   claim, and [`Claim::stored_earlier`] turns it into a repeat of the
//!   stored ticket, for itself and for the repeats waiting on it.
//! - Memory never outlives the row. While the first ticket is on its way
//!   to the database (its job holds a [`TicketOnItsWay`]), memory is all
//!   there is and a repeat is answered from it. Once the writers are done
//!   with it, the database is the truth: the caller looks the key up for
//!   each repeat ([`FirstTicket::Written`]) and answers with the ticket the
//!   key row stands for ([`RecentKeys::stands_for`]: another instance's,
//!   when two took the key at once), or, when the key no longer stands for
//!   a stored ticket (its partition dropped by the retention, the key
//!   expired), forgets it ([`RecentKeys::forget_written`]) and takes the
//!   request as a first.
//! - Bodies are compared by SHA-256, the digest the database keeps too.
//! - Bounded: [`CAPACITY`] keys, the oldest forgotten first.
//!
//! Every operation is O(1) under one mutex: the age order is a queue of
//! (key, generation) and an entry is only evicted by the generation that
//! created it, so forgetting a key does not scan the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use uuid::Uuid;

use crate::ticket::Status;

/// Keys remembered.
pub const CAPACITY: usize = 65_536;

/// What the first request with a key was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub id: Uuid,
    pub status: Status,
}

/// SHA-256 of a body.
pub type BodyHash = [u8; 32];

/// The SHA-256 of `body`, as `sha256(raw)` computes it in PostgreSQL.
pub fn body_hash(body: &[u8]) -> BodyHash {
    Sha256::digest(body).into()
}

/// How a repeat relates to its first request, once that one succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeated {
    /// Same body: answer the first answer again.
    Duplicate(Answer),
    /// Another body under the same key: not stored; the first one stands.
    Conflict(Answer),
}

/// Travels with the job of a key's first ticket, and is dropped with it
/// once the writers are done with the ticket (written, or given up): until
/// then a repeat is answered from memory, after that from the database.
#[derive(Debug, Clone, Default)]
pub struct TicketOnItsWay(Arc<()>);

impl TicketOnItsWay {
    pub fn new() -> TicketOnItsWay {
        TicketOnItsWay::default()
    }

    fn watch(&self) -> Weak<()> {
        Arc::downgrade(&self.0)
    }
}

/// Where the first request's ticket is, as a repeat finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstTicket {
    /// Still on its way to the database: memory is the truth.
    OnItsWay,
    /// The writers are done with it (or it was found stored): the key row
    /// is the truth, if the database can be asked.
    Written,
}

/// A first request that succeeded: its answer, the hash of its body, and
/// whether its ticket is still on its way.
#[derive(Debug, Clone)]
struct Settled {
    answer: Answer,
    body_hash: BodyHash,
    on_its_way: Weak<()>,
}

impl Settled {
    fn first_ticket(&self) -> FirstTicket {
        if self.on_its_way.strong_count() > 0 {
            FirstTicket::OnItsWay
        } else {
            FirstTicket::Written
        }
    }
}

/// The first request's outcome, as its repeats see it, or how the caller
/// describes its refusal (`F`).
type Outcome<F> = Option<Result<Settled, F>>;

pub struct RecentKeys<F> {
    inner: Arc<Mutex<Inner<F>>>,
}

struct Inner<F> {
    entries: HashMap<String, Entry<F>>,
    /// Keys in the order they were claimed, with the generation of the claim.
    order: VecDeque<(String, u64)>,
    next_generation: u64,
}

struct Entry<F> {
    generation: u64,
    first_id: Uuid,
    outcome: watch::Receiver<Outcome<F>>,
}

/// Held by the first request with a key until it knows its answer.
/// Dropped unsettled, it tells the waiting repeats the first one failed
/// without saying how (a cancelled request), and frees the key.
pub struct Claim<F> {
    inner: Arc<Mutex<Inner<F>>>,
    key: String,
    generation: u64,
    body_hash: BodyHash,
    sender: Option<watch::Sender<Outcome<F>>>,
}

/// A repeat of a key whose first request is known or under way.
pub struct Repeat<F> {
    body_hash: BodyHash,
    outcome: watch::Receiver<Outcome<F>>,
}

/// What [`RecentKeys::claim`] found.
pub enum Claimed<F> {
    First(Claim<F>),
    Repeat(Repeat<F>),
}

/// The first request went away without an answer (its client hung up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstVanished;

impl<F: Clone + Send + Sync + 'static> RecentKeys<F> {
    pub fn new() -> RecentKeys<F> {
        let inner = Inner { entries: HashMap::new(), order: VecDeque::new(), next_generation: 0 };
        RecentKeys { inner: Arc::new(Mutex::new(inner)) }
    }

    /// Claims `key` for a ticket `id` with this body, or finds the request
    /// that claimed it first.
    pub fn claim(&self, key: &str, id: Uuid, body: &[u8]) -> Claimed<F> {
        let body_hash = body_hash(body);
        let mut inner = lock(&self.inner);
        if let Some(entry) = inner.entries.get(key) {
            return Claimed::Repeat(Repeat { body_hash, outcome: entry.outcome.clone() });
        }
        inner.evict_to(CAPACITY - 1);
        let generation = inner.next_generation;
        inner.next_generation += 1;
        let (sender, outcome) = watch::channel(None);
        inner.entries.insert(key.to_string(), Entry { generation, first_id: id, outcome });
        inner.order.push_back((key.to_string(), generation));
        let inner = Arc::clone(&self.inner);
        Claimed::First(Claim { inner, key: key.to_string(), generation, body_hash, sender: Some(sender) })
    }

    /// Remembers a key whose ticket was answered before this process
    /// started (a record of the write-ahead log, replayed now), so that a
    /// repeat gets the id acknowledged the first time. The replayed job
    /// carries what this returns.
    pub fn remember(&self, key: &str, answer: Answer, body: &[u8]) -> TicketOnItsWay {
        let on_its_way = TicketOnItsWay::new();
        let settled = Settled { answer, body_hash: body_hash(body), on_its_way: on_its_way.watch() };
        self.settle_anew(key, settled, false);
        on_its_way
    }

    /// A record of the write-ahead log written again (the service found
    /// itself on another primary, which may lack it): while it is on its
    /// way, memory answers the key's repeats with its id, as before its
    /// first write — unless the key already stands for another ticket, or
    /// a first request with it is under way. The job carries what this
    /// returns.
    pub fn on_its_way_again(&self, key: &str, answer: Answer, body: &[u8]) -> TicketOnItsWay {
        let on_its_way = TicketOnItsWay::new();
        let id = answer.id;
        let settled = Settled { answer, body_hash: body_hash(body), on_its_way: on_its_way.watch() };
        self.settle_anew_where(key, settled, |entry| entry.first_id == id);
        on_its_way
    }

    /// The database says `key` stands for the ticket `answer`, with a body
    /// hashing to `first_body_hash`: later repeats get that one.
    pub fn stands_for(&self, key: &str, answer: Answer, first_body_hash: BodyHash) {
        let settled = Settled { answer, body_hash: first_body_hash, on_its_way: Weak::new() };
        self.settle_anew(key, settled, true);
    }

    /// Forgets `key` if it still stands for the written ticket `first_id`:
    /// the database no longer holds that ticket under it.
    pub fn forget_written(&self, key: &str, first_id: Uuid) {
        let mut inner = lock(&self.inner);
        let written = inner.entries.get(key).is_some_and(|entry| {
            entry.first_id == first_id
                && matches!(&*entry.outcome.borrow(), Some(Ok(settled)) if settled.first_ticket() == FirstTicket::Written)
        });
        if written {
            inner.entries.remove(key);
        }
    }

    /// Puts `settled` in for `key`: as a new entry, or, with `replace`, over
    /// a settled one (never over a first request still under way).
    fn settle_anew(&self, key: &str, settled: Settled, replace: bool) {
        self.settle_anew_where(key, settled, |_| replace);
    }

    /// [`RecentKeys::settle_anew`], replacing a settled entry where
    /// `replace` says so.
    fn settle_anew_where(&self, key: &str, settled: Settled, replace: impl Fn(&Entry<F>) -> bool) {
        let mut inner = lock(&self.inner);
        if let Some(entry) = inner.entries.get(key) {
            let under_way = entry.outcome.borrow().is_none();
            if !replace(entry) || under_way {
                return;
            }
            inner.entries.remove(key);
        }
        inner.evict_to(CAPACITY - 1);
        let generation = inner.next_generation;
        inner.next_generation += 1;
        let first_id = settled.answer.id;
        let (_settled, outcome) = watch::channel(Some(Ok(settled)));
        inner.entries.insert(key.to_string(), Entry { generation, first_id, outcome });
        inner.order.push_back((key.to_string(), generation));
    }

    /// Keys remembered now, settled or under way.
    pub fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id given to the first request with `key`, if it is remembered.
    pub fn first_id(&self, key: &str) -> Option<Uuid> {
        lock(&self.inner).entries.get(key).map(|entry| entry.first_id)
    }
}

impl<F: Clone + Send + Sync + 'static> Default for RecentKeys<F> {
    fn default() -> Self {
        RecentKeys::new()
    }
}

impl<F> Inner<F> {
    /// Forgets the oldest settled keys until at most `keep` are left. A
    /// key whose first request is still under way, or whose ticket is still
    /// on its way to the database, is kept (moved to the back): its repeats
    /// must keep finding it, the database cannot answer for it yet.
    fn evict_to(&mut self, keep: usize) {
        let mut passes = self.order.len();
        while self.entries.len() > keep && passes > 0 {
            passes -= 1;
            let Some((key, generation)) = self.order.pop_front() else { break };
            let Some(entry) = self.entries.get(&key).filter(|entry| entry.generation == generation) else { continue };
            let under_way = match &*entry.outcome.borrow() {
                None => true,
                Some(Ok(settled)) => settled.first_ticket() == FirstTicket::OnItsWay,
                Some(Err(_)) => false,
            };
            if under_way {
                self.order.push_back((key, generation));
                continue;
            }
            self.entries.remove(&key);
        }
        // Forgotten claims leave stale queue entries behind; drop them once
        // they outnumber the live ones.
        if self.order.len() > 2 * self.entries.len().max(1024) {
            let entries = &self.entries;
            self.order
                .retain(|(key, generation)| entries.get(key).is_some_and(|entry| entry.generation == *generation));
        }
    }

    fn forget(&mut self, key: &str, generation: u64) {
        if self.entries.get(key).is_some_and(|entry| entry.generation == generation) {
            self.entries.remove(key);
        }
    }
}

impl<F> Claim<F> {
    /// The first request is answered `202` with `answer`: its repeats get
    /// it too, from memory while its job holds `on_its_way`.
    pub fn succeed(mut self, answer: Answer, on_its_way: &TicketOnItsWay) {
        if let Some(sender) = self.sender.take() {
            let settled = Settled { answer, body_hash: self.body_hash, on_its_way: on_its_way.watch() };
            sender.send_replace(Some(Ok(settled)));
        }
    }

    /// The key was stored before, with `answer` for a body hashing to
    /// `first_body_hash`: the key stands for that ticket from now on, and
    /// this request is a repeat of it like the ones waiting.
    pub fn stored_earlier(mut self, answer: Answer, first_body_hash: BodyHash) -> Repeated {
        if let Some(entry) = lock(&self.inner).entries.get_mut(&self.key).filter(|e| e.generation == self.generation) {
            entry.first_id = answer.id;
        }
        if let Some(sender) = self.sender.take() {
            let settled = Settled { answer, body_hash: first_body_hash, on_its_way: Weak::new() };
            sender.send_replace(Some(Ok(settled)));
        }
        relate(self.body_hash, answer, first_body_hash)
    }

    /// The first request is refused: its waiting repeats get the same
    /// refusal and the key is free for the next try.
    pub fn fail(mut self, refusal: F) {
        lock(&self.inner).forget(&self.key, self.generation);
        if let Some(sender) = self.sender.take() {
            sender.send_replace(Some(Err(refusal)));
        }
    }
}

impl<F> Drop for Claim<F> {
    fn drop(&mut self) {
        if self.sender.is_some() {
            // Neither settled: the sender is dropped with it, which wakes the
            // repeats with `FirstVanished`.
            lock(&self.inner).forget(&self.key, self.generation);
        }
    }
}

impl<F: Clone> Repeat<F> {
    /// Waits for the first request's outcome: how this repeat relates to it
    /// once it succeeded, and where its ticket is; or the refusal it got.
    pub async fn outcome(mut self) -> Result<Result<(Repeated, FirstTicket), F>, FirstVanished> {
        let settled = self.outcome.wait_for(Option::is_some).await.map_err(|_| FirstVanished)?;
        let result = match settled.as_ref() {
            Some(Ok(first)) => Ok((relate(self.body_hash, first.answer, first.body_hash), first.first_ticket())),
            Some(Err(refusal)) => Err(refusal.clone()),
            None => return Err(FirstVanished),
        };
        Ok(result)
    }

    /// The SHA-256 of this repeat's body.
    pub fn body_hash(&self) -> BodyHash {
        self.body_hash
    }
}

impl Repeated {
    /// The first request's answer.
    pub fn first(&self) -> Answer {
        match self {
            Repeated::Duplicate(first) | Repeated::Conflict(first) => *first,
        }
    }
}

/// The same body is a duplicate of the first, another one a conflict.
pub fn relate(body_hash: BodyHash, first: Answer, first_body_hash: BodyHash) -> Repeated {
    if body_hash == first_body_hash {
        Repeated::Duplicate(first)
    } else {
        Repeated::Conflict(first)
    }
}

fn lock<F>(inner: &Mutex<Inner<F>>) -> MutexGuard<'_, Inner<F>> {
    inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Answer {
        Answer { id: Uuid::now_v7(), status: Status::Ok }
    }

    fn first(claimed: Claimed<&'static str>) -> Claim<&'static str> {
        match claimed {
            Claimed::First(claim) => claim,
            Claimed::Repeat(_) => panic!("expected the first claim"),
        }
    }

    fn repeat(claimed: Claimed<&'static str>) -> Repeat<&'static str> {
        match claimed {
            Claimed::Repeat(repeat) => repeat,
            Claimed::First(_) => panic!("expected a repeat"),
        }
    }

    #[tokio::test]
    async fn a_repeat_waits_for_the_first_and_gets_its_answer() {
        let keys = RecentKeys::new();
        let claim = first(keys.claim("k", Uuid::now_v7(), b"body"));
        let waiting = tokio::spawn(repeat(keys.claim("k", Uuid::now_v7(), b"body")).outcome());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a repeat must not be answered before the first is");

        let given = answer();
        claim.succeed(given, &TicketOnItsWay::new());

        assert_eq!(waiting.await.expect("task"), Ok(Ok((Repeated::Duplicate(given), FirstTicket::Written))));
    }

    #[tokio::test]
    async fn a_repeat_of_a_refused_first_gets_the_refusal_and_the_key_is_free_again() {
        let keys = RecentKeys::new();
        let claim = first(keys.claim("k", Uuid::now_v7(), b"body"));
        let waiting = repeat(keys.claim("k", Uuid::now_v7(), b"body"));

        claim.fail("disk full");

        assert_eq!(waiting.outcome().await, Ok(Err("disk full")));
        assert!(matches!(keys.claim("k", Uuid::now_v7(), b"body"), Claimed::First(_)));
    }

    #[tokio::test]
    async fn a_first_that_vanishes_frees_the_key_and_says_so_to_its_repeats() {
        let keys = RecentKeys::<&'static str>::new();
        let claim = first(keys.claim("k", Uuid::now_v7(), b"body"));
        let waiting = repeat(keys.claim("k", Uuid::now_v7(), b"body"));

        drop(claim);

        assert_eq!(waiting.outcome().await, Err(FirstVanished));
        assert!(keys.is_empty());
    }

    #[tokio::test]
    async fn another_body_under_the_same_key_is_a_conflict_with_the_first_id() {
        let keys = RecentKeys::new();
        let given = answer();
        first(keys.claim("k", given.id, b"first body")).succeed(given, &TicketOnItsWay::new());

        let outcome = repeat(keys.claim("k", Uuid::now_v7(), b"corrected body")).outcome().await;

        assert_eq!(outcome, Ok(Ok((Repeated::Conflict(given), FirstTicket::Written))));
    }

    #[tokio::test]
    async fn a_remembered_key_answers_its_repeats_with_the_acknowledged_id() {
        let keys = RecentKeys::<&'static str>::new();
        let given = answer();
        let on_its_way = keys.remember("from-the-log", given, b"body");

        let outcome = repeat(keys.claim("from-the-log", Uuid::now_v7(), b"body")).outcome().await;

        assert_eq!(outcome, Ok(Ok((Repeated::Duplicate(given), FirstTicket::OnItsWay))));
        drop(on_its_way);
        let outcome = repeat(keys.claim("from-the-log", Uuid::now_v7(), b"body")).outcome().await;
        assert_eq!(outcome, Ok(Ok((Repeated::Duplicate(given), FirstTicket::Written))));
    }

    #[tokio::test]
    async fn a_key_found_stored_earlier_answers_the_claimer_and_its_waiting_repeats_with_the_stored_ticket() {
        let keys = RecentKeys::<&'static str>::new();
        let claim = first(keys.claim("k", Uuid::now_v7(), b"body"));
        let same_body = repeat(keys.claim("k", Uuid::now_v7(), b"body"));
        let other_body = repeat(keys.claim("k", Uuid::now_v7(), b"other body"));
        let stored = answer();

        assert_eq!(claim.stored_earlier(stored, body_hash(b"body")), Repeated::Duplicate(stored));
        assert_eq!(same_body.outcome().await, Ok(Ok((Repeated::Duplicate(stored), FirstTicket::Written))));
        assert_eq!(other_body.outcome().await, Ok(Ok((Repeated::Conflict(stored), FirstTicket::Written))));
        assert_eq!(keys.first_id("k"), Some(stored.id));
    }

    #[tokio::test]
    async fn a_key_stored_earlier_for_another_body_is_a_conflict_for_the_claimer() {
        let keys = RecentKeys::<&'static str>::new();
        let claim = first(keys.claim("k", Uuid::now_v7(), b"corrected body"));
        let stored = answer();

        assert_eq!(claim.stored_earlier(stored, body_hash(b"first body")), Repeated::Conflict(stored));
        let later = repeat(keys.claim("k", Uuid::now_v7(), b"first body")).outcome().await;
        assert_eq!(
            later,
            Ok(Ok((Repeated::Duplicate(stored), FirstTicket::Written))),
            "later repeats compare with the stored body"
        );
    }

    #[test]
    fn a_key_under_way_is_not_forgotten_to_make_room() {
        let keys = RecentKeys::<&'static str>::new();
        let _pending = first(keys.claim("under-way", Uuid::now_v7(), b"x"));
        for number in 0..CAPACITY {
            if let Claimed::First(claim) = keys.claim(&number.to_string(), Uuid::now_v7(), b"x") {
                claim.succeed(answer(), &TicketOnItsWay::new());
            }
        }
        assert!(keys.first_id("under-way").is_some(), "its repeats must still find it");
        assert!(keys.first_id("0").is_none(), "the oldest settled key went instead");
    }

    #[test]
    fn the_oldest_keys_are_forgotten_first_and_forgetting_is_not_confused_by_reuse() {
        let keys = RecentKeys::<&'static str>::new();
        let claim = first(keys.claim("reused", Uuid::now_v7(), b"x"));
        claim.fail("refused");
        first(keys.claim("reused", Uuid::now_v7(), b"x")).succeed(answer(), &TicketOnItsWay::new());
        for number in 0..CAPACITY {
            if let Claimed::First(claim) = keys.claim(&number.to_string(), Uuid::now_v7(), b"x") {
                claim.succeed(answer(), &TicketOnItsWay::new());
            }
        }
        assert_eq!(keys.len(), CAPACITY);
        assert!(keys.first_id("reused").is_none(), "the oldest key goes first");
        assert!(keys.first_id("0").is_some());
        assert!(keys.first_id(&(CAPACITY - 1).to_string()).is_some());
    }

    #[tokio::test]
    async fn a_first_ticket_is_on_its_way_until_its_job_lets_go_and_a_written_key_can_be_forgotten_or_replaced() {
        let keys = RecentKeys::<&'static str>::new();
        let given = answer();
        let on_its_way = TicketOnItsWay::new();
        first(keys.claim("k", given.id, b"body")).succeed(given, &on_its_way);
        let job_holds = on_its_way.clone();
        drop(on_its_way);

        let outcome = repeat(keys.claim("k", Uuid::now_v7(), b"body")).outcome().await;
        assert_eq!(outcome, Ok(Ok((Repeated::Duplicate(given), FirstTicket::OnItsWay))));
        keys.forget_written("k", given.id);
        assert_eq!(keys.first_id("k"), Some(given.id), "a ticket on its way is not forgotten");

        drop(job_holds);
        let elsewhere = answer();
        keys.stands_for("k", elsewhere, body_hash(b"body"));
        let outcome = repeat(keys.claim("k", Uuid::now_v7(), b"body")).outcome().await;
        assert_eq!(outcome, Ok(Ok((Repeated::Duplicate(elsewhere), FirstTicket::Written))));
        keys.forget_written("k", given.id);
        assert_eq!(keys.first_id("k"), Some(elsewhere.id), "only the ticket named is forgotten");
        keys.forget_written("k", elsewhere.id);
        assert!(matches!(keys.claim("k", Uuid::now_v7(), b"body"), Claimed::First(_)));
    }

    #[test]
    fn a_ticket_still_on_its_way_is_not_forgotten_to_make_room() {
        let keys = RecentKeys::<&'static str>::new();
        let on_its_way = TicketOnItsWay::new();
        first(keys.claim("on-its-way", Uuid::now_v7(), b"x")).succeed(answer(), &on_its_way);
        for number in 0..CAPACITY {
            if let Claimed::First(claim) = keys.claim(&number.to_string(), Uuid::now_v7(), b"x") {
                claim.succeed(answer(), &TicketOnItsWay::new());
            }
        }
        assert!(keys.first_id("on-its-way").is_some(), "the database cannot answer for it yet");
    }
}
