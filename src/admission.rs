//! The admission budget: how many tickets may be in flight (accepted, not
//! yet committed) at once.
//!
//! A request takes a [`Permit`] before it reads its body and the permit
//! travels with the ticket through the queue; dropping it, after the
//! ticket's batch committed, gives the place back. When no place is left the
//! request is refused with `503` and `Retry-After`, so memory stays bounded,
//! the queue (sized to the budget) never has to refuse a ticket, and a
//! database outage turns into backpressure instead of loss.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct Admission {
    /// Permits currently held.
    in_flight: AtomicUsize,
    /// Permits that may be held at once.
    capacity: usize,
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

/// One place in the budget, given back on drop.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
}

impl Admission {
    pub fn new(capacity: usize) -> Arc<Admission> {
        Arc::new(Admission { in_flight: AtomicUsize::new(0), capacity, closed: AtomicBool::new(false) })
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
                Ok(_) => return Ok(Permit { admission: Arc::clone(self) }),
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

    pub fn is_exhausted(&self) -> bool {
        self.in_flight() >= self.capacity
    }

    /// Closed and every permit given back: nothing accepted is left to write.
    pub fn is_drained(&self) -> bool {
        self.is_closed() && self.in_flight() == 0
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let previous = self.admission.in_flight.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(previous > 0, "a permit was given back twice");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_refused_once_the_budget_is_used_up_and_granted_again_when_given_back() {
        let admission = Admission::new(2);
        let first = admission.try_acquire().expect("first permit");
        let _second = admission.try_acquire().expect("second permit");
        assert_eq!(admission.try_acquire().unwrap_err(), Refusal::Exhausted);
        drop(first);
        assert!(admission.try_acquire().is_ok());
    }

    #[test]
    fn a_closed_budget_refuses_but_keeps_counting_held_permits() {
        let admission = Admission::new(5);
        let held = admission.try_acquire().expect("permit");
        admission.close();
        assert_eq!(admission.try_acquire().unwrap_err(), Refusal::Closed);
        assert!(!admission.is_drained());
        drop(held);
        assert!(admission.is_drained());
    }
}
