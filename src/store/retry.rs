//! Retrying: one backoff curve for every retried operation, and one loop,
//! [`retry`], for the operations retried as they are (the migrations once
//! the database answers, `reprocess`'s batches).
//!
//! The batch writers count their attempts with the same [`Backoff`] in a
//! loop of their own (`Writer::write_retrying`): whether a writer tries
//! again depends on the shutdown at every attempt, and its wait is cut
//! short by a connection that opens or by the end of the grace period.

use std::collections::hash_map::RandomState;
use std::fmt::Display;
use std::hash::BuildHasher;
use std::time::Duration;

const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The failed attempts of one operation, and the wait before the next:
/// 50 ms doubling up to 5 s, with up to 50 % random jitter so that retries
/// do not run in lockstep.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    /// Attempts failed so far.
    failures: u32,
}

impl Backoff {
    /// No attempt failed yet.
    pub fn new() -> Backoff {
        Backoff::default()
    }

    /// Counts one more failed attempt; returns the wait before the next.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        delay_before_retry(self.failures)
    }

    /// The retry about to be made, from 1: the attempts failed so far.
    pub fn attempt(&self) -> u32 {
        self.failures
    }
}

/// The wait before retry number `attempt` (from 1).
fn delay_before_retry(attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16);
    let base = BACKOFF_FIRST.saturating_mul(1 << exponent).min(BACKOFF_MAX);
    let jitter_fraction = (RandomState::new().hash_one(attempt) % 500) as u32;
    base + base * jitter_fraction / 1000
}

/// How many times [`retry`] tries a transient failure again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retries {
    /// For as long as it takes.
    Unbounded,
    /// At most this many times; then the error is returned.
    AtMost(u32),
}

/// Runs `operation` until it succeeds, waiting as `backoff` says after
/// every failure that `is_transient` and `retries` let through; returns
/// the first other failure. Each retry is logged at WARN with `message`,
/// the `attempt`, the `delay_ms` before it and the `error`.
///
/// `operation` is given the attempts failed before it (0 the first time,
/// more when `backoff` comes with failures counted already): a retry that
/// needs a new connection opens it there.
pub async fn retry<T, E: Display>(
    message: &'static str,
    retries: Retries,
    is_transient: impl Fn(&E) -> bool,
    mut backoff: Backoff,
    mut operation: impl AsyncFnMut(u32) -> Result<T, E>,
) -> Result<T, E> {
    loop {
        let error = match operation(backoff.attempt()).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let retried = match retries {
            Retries::Unbounded => true,
            Retries::AtMost(max) => backoff.attempt() < max,
        };
        if !retried || !is_transient(&error) {
            return Err(error);
        }
        let delay = backoff.next_delay();
        tracing::warn!(message, attempt = backoff.attempt(), delay_ms = delay.as_millis() as u64, %error);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_stays_capped() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..40).map(|_| backoff.next_delay()).collect();

        assert_eq!(backoff.attempt(), 40);
        assert!(delays[0] >= BACKOFF_FIRST && delays[0] < BACKOFF_FIRST * 2);
        assert!(delays[2] >= BACKOFF_FIRST * 4);
        assert!(delays[39] >= BACKOFF_MAX && delays[39] <= BACKOFF_MAX * 3 / 2);
    }

    #[tokio::test]
    async fn a_bounded_retry_gives_up_after_its_last_retry_and_a_data_error_at_once() {
        let mut calls = Vec::new();
        let transient: Result<(), &str> = retry(
            "failed",
            Retries::AtMost(2),
            |_| true,
            Backoff::new(),
            async |failed| {
                calls.push(failed);
                Err("down")
            },
        )
        .await;
        assert_eq!(transient, Err("down"));
        assert_eq!(calls, [0, 1, 2]);

        let mut data_calls = 0;
        let data: Result<(), &str> = retry(
            "failed",
            Retries::Unbounded,
            |_| false,
            Backoff::new(),
            async |_| {
                data_calls += 1;
                Err("refused")
            },
        )
        .await;
        assert_eq!(data, Err("refused"));
        assert_eq!(data_calls, 1);
    }

    #[tokio::test]
    async fn an_unbounded_retry_goes_on_until_the_operation_succeeds() {
        let answered: Result<u32, &str> = retry(
            "failed",
            Retries::Unbounded,
            |_| true,
            Backoff::new(),
            async |failed| {
                if failed < 2 {
                    Err("down")
                } else {
                    Ok(failed)
                }
            },
        )
        .await;

        assert_eq!(answered, Ok(2));
    }
}
