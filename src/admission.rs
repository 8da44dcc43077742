//! The two budgets that bound what requests hold in memory.
//!
//! **Admission** ([`Admission`]): how many tickets, and how many bytes of
//! them, may be in flight (accepted, not yet committed) at once. A request
//! takes a [`Permit`] once its body is read and parsed, and the permit
//! travels with the ticket through the queue; dropping it, after the
//! ticket's batch committed, gives the place and the bytes back
//! ([`Permit::resize`] sets what the parsed ticket costs). When no place or
//! no bytes are left the request is refused with `503` and `Retry-After`,
//! so memory stays bounded whatever the tickets' size, the queue (sized to
//! the budget) never has to refuse a ticket, and a database outage turns
//! into backpressure instead of loss.
//!
//! **Reception** ([`Reception`]): bytes of bodies being received, counted
//! as they arrive ([`Receiving::hold`]), never as a client declares them,
//! in all and per peer address. A slow client therefore holds only what it
//! has sent, for no longer than the body deadlines allow, and never a place
//! of the admission budget: a flood of slow or stalled bodies cannot refuse
//! the tickets of fast clients, and one address cannot take the whole
//! reception budget.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Admission {
    /// Permits currently held.
    in_flight: AtomicUsize,
    /// Permits that may be held at once.
    capacity: usize,
    /// Bytes the permits hold.
    bytes: AtomicUsize,
    /// Bytes they may hold at once.
    max_bytes: usize,
    /// Set at shutdown: no permit is granted any more.
    closed: AtomicBool,
    /// When it was closed.
    closed_at: OnceLock<Instant>,
    /// Tells [`Admission::closed`] waiters.
    closed_signal: tokio::sync::watch::Sender<bool>,
}

/// Why no permit was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every place is taken.
    Exhausted,
    /// The service is shutting down.
    Closed,
}

/// One place in the budget, and the bytes it holds, given back on drop.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    bytes: usize,
}

impl Admission {
    pub fn new(capacity: usize, max_bytes: usize) -> Arc<Admission> {
        Arc::new(Admission {
            in_flight: AtomicUsize::new(0),
            capacity,
            bytes: AtomicUsize::new(0),
            max_bytes,
            closed: AtomicBool::new(false),
            closed_at: OnceLock::new(),
            closed_signal: tokio::sync::watch::Sender::new(false),
        })
    }

    /// A place in the budget. The place is taken first and the budget's
    /// closing looked at after (both sequentially consistent, as in
    /// [`Admission::close`] and [`Admission::is_drained`]): a permit granted
    /// is always seen by a writer deciding whether the service is drained,
    /// so no ticket is queued after the last writer left.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Permit, Refusal> {
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= self.capacity {
                return Err(Refusal::Exhausted);
            }
            match self.in_flight.compare_exchange_weak(current, current + 1, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        let permit = Permit { admission: Arc::clone(self), bytes: 0 };
        if self.closed.load(Ordering::SeqCst) {
            return Err(Refusal::Closed); // dropping the permit gives the place back
        }
        Ok(permit)
    }

    /// Refuses every later request; permits already granted stay valid.
    pub fn close(&self) {
        let _ = self.closed_at.set(Instant::now());
        self.closed.store(true, Ordering::SeqCst);
        self.closed_signal.send_replace(true);
    }

    /// Resolves once the budget is closed (the shutdown began).
    pub async fn closed(&self) {
        let mut closed = self.closed_signal.subscribe();
        let _ = closed.wait_for(|closed| *closed).await;
    }

    /// Resolves `grace` after the budget was closed.
    pub async fn grace_over(&self, grace: Duration) {
        self.closed().await;
        let closed_for = self.closed_for().unwrap_or_default();
        tokio::time::sleep(grace.saturating_sub(closed_for)).await;
    }

    /// How long ago the budget was closed (the shutdown began), if it was.
    pub fn closed_for(&self) -> Option<Duration> {
        self.closed_at.get().map(Instant::elapsed)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held by the permits.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    pub fn is_exhausted(&self) -> bool {
        self.in_flight() >= self.capacity || self.bytes() >= self.max_bytes
    }

    /// Whether a ticket taking `bytes` would get a permit now.
    pub fn has_room_for(&self, bytes: usize) -> bool {
        !self.is_closed()
            && self.in_flight() < self.capacity
            && (self.bytes() == 0 || self.bytes().saturating_add(bytes) <= self.max_bytes)
    }

    /// Closed and every permit given back: nothing accepted is left to write.
    pub fn is_drained(&self) -> bool {
        self.closed.load(Ordering::SeqCst) && self.in_flight.load(Ordering::SeqCst) == 0
    }
}

impl Permit {
    /// Bytes this permit holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Makes this permit hold `bytes`. Growing fails when the budget's bytes
    /// would run over — unless this permit holds every byte in flight, so
    /// that a ticket larger than the budget still gets through alone.
    pub fn resize(&mut self, bytes: usize) -> Result<(), Refusal> {
        let counter = &self.admission.bytes;
        if bytes <= self.bytes {
            counter.fetch_sub(self.bytes - bytes, Ordering::AcqRel);
            self.bytes = bytes;
            return Ok(());
        }
        let growth = bytes - self.bytes;
        let mut current = counter.load(Ordering::Relaxed);
        loop {
            let alone = current == self.bytes;
            if !alone && current + growth > self.admission.max_bytes {
                return Err(Refusal::Exhausted);
            }
            match counter.compare_exchange_weak(current, current + growth, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    self.bytes = bytes;
                    return Ok(());
                }
                Err(actual) => current = actual,
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        let previous = self.admission.in_flight.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(previous > 0, "a permit was given back twice");
    }
}

/// The budget of bytes of bodies being received; see the module docs.
#[derive(Debug)]
pub struct Reception {
    bytes: AtomicUsize,
    max_bytes: usize,
    /// Bytes held per peer address; only kept when the per-peer bound is
    /// below the whole budget.
    per_peer: Option<Mutex<HashMap<IpAddr, usize>>>,
    max_bytes_per_peer: usize,
}

/// The bytes one body holds while it is received, given back on drop.
#[derive(Debug)]
pub struct Receiving {
    reception: Arc<Reception>,
    peer: IpAddr,
    bytes: usize,
    /// What of `bytes` is counted under the peer (all of it once the body
    /// lingers, else nothing).
    peer_bytes: usize,
}

impl Reception {
    pub fn new(max_bytes: usize, max_bytes_per_peer: usize) -> Arc<Reception> {
        let per_peer = (max_bytes_per_peer < max_bytes).then(|| Mutex::new(HashMap::new()));
        Arc::new(Reception { bytes: AtomicUsize::new(0), max_bytes, per_peer, max_bytes_per_peer })
    }

    /// Starts receiving a body from `peer`, holding nothing yet.
    pub fn start(self: &Arc<Self>, peer: IpAddr) -> Receiving {
        Receiving { reception: Arc::clone(self), peer, bytes: 0, peer_bytes: 0 }
    }

    /// Bytes held by bodies being received.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Peers currently holding bytes (0 when peers are not counted).
    pub fn peers(&self) -> usize {
        self.per_peer.as_ref().map_or(0, |per_peer| lock(per_peer).len())
    }

    fn lock_peers(&self) -> Option<std::sync::MutexGuard<'_, HashMap<IpAddr, usize>>> {
        self.per_peer.as_ref().map(lock)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Receiving {
    /// Makes this body hold `bytes` (what its buffer takes now). `lingering`:
    /// more of the body is still to come. Growing fails when the budget
    /// would run over — unless nothing else is being received, so that one
    /// body up to `max_body_bytes` always gets through — or, for a body
    /// that lingers, when its peer's share would: a body read whole at once
    /// is held for microseconds and never counted per peer, which keeps the
    /// peer map (and its lock) off the path of fast clients.
    pub fn hold(&mut self, bytes: usize, lingering: bool) -> Result<(), Refusal> {
        let reception = &*self.reception;
        let peer_bytes = if lingering || self.peer_bytes > 0 { bytes } else { 0 };
        let mut peers = if peer_bytes != self.peer_bytes { reception.lock_peers() } else { None };
        if let Some(peers) = peers.as_mut() {
            let held = peers.get(&self.peer).copied().unwrap_or(0);
            let others = held.saturating_sub(self.peer_bytes);
            if peer_bytes > self.peer_bytes && others > 0 && others + peer_bytes > reception.max_bytes_per_peer {
                return Err(Refusal::Exhausted);
            }
        }
        if bytes <= self.bytes {
            reception.bytes.fetch_sub(self.bytes - bytes, Ordering::AcqRel);
        } else {
            let growth = bytes - self.bytes;
            let mut current = reception.bytes.load(Ordering::Relaxed);
            loop {
                let alone = current == self.bytes;
                if !alone && current + growth > reception.max_bytes {
                    return Err(Refusal::Exhausted);
                }
                match reception.bytes.compare_exchange_weak(
                    current,
                    current + growth,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(actual) => current = actual,
                }
            }
        }
        self.bytes = bytes;
        if let Some(peers) = peers.as_mut() {
            let held = peers.entry(self.peer).or_insert(0);
            *held = (*held + peer_bytes).saturating_sub(self.peer_bytes);
            if *held == 0 {
                peers.remove(&self.peer);
            }
            self.peer_bytes = peer_bytes;
        }
        Ok(())
    }

    /// Bytes this body holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        let _ = self.hold(0, false);
    }
}

/// How many tickets were posted in about the last minute, and how many of
/// them the budgets refused (admission or reception): `/readyz` models a
/// typical ticket, so it stays ready while every large one is refused, and
/// says so with these. Two 30 s buckets of counters, approximate at a
/// bucket's turn (a count may land in the bucket being reset): cheap on
/// the hot path, exact enough to read a share.
#[derive(Debug)]
pub struct RecentRefusals {
    started: Instant,
    buckets: [Bucket; 2],
}

#[derive(Debug, Default)]
struct Bucket {
    /// Which 30 s since `started` the counts are for.
    epoch: AtomicU64,
    posted: AtomicU64,
    refused: AtomicU64,
}

const BUCKET_SECONDS: u64 = 30;

impl Default for RecentRefusals {
    fn default() -> Self {
        // Epoch 0 is the first bucket's own: start the others past it.
        let buckets = [Bucket::default(), Bucket { epoch: AtomicU64::new(u64::MAX), ..Bucket::default() }];
        RecentRefusals { started: Instant::now(), buckets }
    }
}

impl RecentRefusals {
    /// A ticket was posted.
    pub fn posted(&self) {
        self.current().posted.fetch_add(1, Ordering::Relaxed);
    }

    /// A posted ticket was refused by a budget.
    pub fn refused(&self) {
        self.current().refused.fetch_add(1, Ordering::Relaxed);
    }

    /// (posted, refused by a budget) in the current and the previous 30 s.
    pub fn last_minute(&self) -> (u64, u64) {
        let epoch = self.epoch();
        self.buckets
            .iter()
            .filter(|bucket| {
                let of = bucket.epoch.load(Ordering::Relaxed);
                of == epoch || of.wrapping_add(1) == epoch
            })
            .fold((0, 0), |(posted, refused), bucket| {
                (posted + bucket.posted.load(Ordering::Relaxed), refused + bucket.refused.load(Ordering::Relaxed))
            })
    }

    fn epoch(&self) -> u64 {
        self.started.elapsed().as_secs() / BUCKET_SECONDS
    }

    fn current(&self) -> &Bucket {
        let epoch = self.epoch();
        let bucket = &self.buckets[(epoch % 2) as usize];
        if bucket.epoch.load(Ordering::Acquire) != epoch && bucket.epoch.swap(epoch, Ordering::AcqRel) != epoch {
            bucket.posted.store(0, Ordering::Relaxed);
            bucket.refused.store(0, Ordering::Relaxed);
        }
        bucket
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_refusals_count_the_last_minute() {
        let recent = RecentRefusals::default();
        for number in 0..10 {
            recent.posted();
            if number % 4 == 0 {
                recent.refused();
            }
        }
        assert_eq!(recent.last_minute(), (10, 3));
    }

    #[test]
    fn permits_are_refused_once_the_budget_is_used_up_and_granted_again_when_given_back() {
        let admission = Admission::new(2, 1000);
        let first = admission.try_acquire().expect("first permit");
        let _second = admission.try_acquire().expect("second permit");
        assert_eq!(admission.try_acquire().unwrap_err(), Refusal::Exhausted);
        drop(first);
        assert!(admission.try_acquire().is_ok());
    }

    #[test]
    fn a_closed_budget_refuses_but_keeps_counting_held_permits() {
        let admission = Admission::new(5, 1000);
        let held = admission.try_acquire().expect("permit");
        admission.close();
        assert_eq!(admission.try_acquire().unwrap_err(), Refusal::Closed);
        assert!(!admission.is_drained());
        drop(held);
        assert!(admission.is_drained());
    }

    #[test]
    fn bytes_are_held_until_the_permit_is_given_back_and_refused_beyond_the_budget() {
        let admission = Admission::new(10, 100);
        let mut first = admission.try_acquire().expect("permit");
        first.resize(60).expect("fits");
        let mut second = admission.try_acquire().expect("permit");
        assert_eq!(second.resize(50), Err(Refusal::Exhausted));
        second.resize(40).expect("fits exactly");
        assert_eq!(admission.bytes(), 100);
        first.resize(10).expect("shrinking always works");
        second.resize(90).expect("room again");
        drop(first);
        drop(second);
        assert_eq!(admission.bytes(), 0);
    }

    #[test]
    fn a_ticket_larger_than_the_budget_gets_through_when_it_is_alone() {
        let admission = Admission::new(10, 100);
        let mut big = admission.try_acquire().expect("permit");
        big.resize(500).expect("alone, so admitted");
        let mut other = admission.try_acquire().expect("a place is left");
        assert_eq!(other.resize(1), Err(Refusal::Exhausted));
        drop(big);
        other.resize(100).expect("fits once the big one is gone");
    }

    fn peer(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn received_bytes_are_held_as_they_arrive_and_given_back_on_drop() {
        let reception = Reception::new(100, 100);
        let mut first = reception.start(peer(1));
        first.hold(60, true).expect("fits");
        let mut second = reception.start(peer(1));
        assert_eq!(second.hold(50, true), Err(Refusal::Exhausted));
        second.hold(40, true).expect("fits exactly");
        drop(first);
        second.hold(100, true).expect("room again");
        drop(second);
        assert_eq!(reception.bytes(), 0);
    }

    #[test]
    fn one_peer_cannot_hold_more_than_its_share_while_others_still_get_through() {
        let reception = Reception::new(1000, 300);
        let mut greedy: Vec<Receiving> = Vec::new();
        for _ in 0..3 {
            let mut receiving = reception.start(peer(1));
            receiving.hold(100, true).expect("within the share");
            greedy.push(receiving);
        }
        let mut one_more = reception.start(peer(1));
        assert_eq!(one_more.hold(100, true), Err(Refusal::Exhausted), "the peer's share is used up");
        let mut other = reception.start(peer(2));
        other.hold(300, true).expect("another peer is not refused");
        drop(greedy);
        assert_eq!(reception.peers(), 1);
        one_more.hold(100, true).expect("the share is back");
    }

    #[test]
    fn a_body_alone_gets_through_even_beyond_the_budget() {
        let reception = Reception::new(100, 50);
        let mut big = reception.start(peer(1));
        big.hold(500, true).expect("alone, so admitted");
        let mut other = reception.start(peer(2));
        assert_eq!(other.hold(1, true), Err(Refusal::Exhausted));
    }
}
