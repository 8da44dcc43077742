//! The admission budget: how many tickets, and how many bytes of them, may
//! be in flight (accepted, not yet committed) at once.
//!
//! A request takes a [`Permit`] before it reads its body and the permit
//! travels with the ticket through the queue; dropping it, after the
//! ticket's batch committed, gives the place back. The permit also holds the
//! ticket's bytes: first what its body may take while it is read, then what
//! the parsed ticket costs ([`Permit::resize`]). When no place or no bytes
//! are left the request is refused with `503` and `Retry-After`, so memory
//! stays bounded whatever the tickets' size, the queue (sized to the budget)
//! never has to refuse a ticket, and a database outage turns into
//! backpressure instead of loss.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

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
        })
    }

    pub fn try_acquire(self: &Arc<Self>) -> Result<Permit, Refusal> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Refusal::Closed);
        }
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= self.capacity {
                return Err(Refusal::Exhausted);
            }
            match self.in_flight.compare_exchange_weak(current, current + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(Permit { admission: Arc::clone(self), bytes: 0 }),
                Err(actual) => current = actual,
            }
        }
    }

    /// Refuses every later request; permits already granted stay valid.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
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

    /// Closed and every permit given back: nothing accepted is left to write.
    pub fn is_drained(&self) -> bool {
        self.is_closed() && self.in_flight() == 0
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
