//! What a failed statement says about what to do next: retry it as is,
//! give the data up, or tell an operator (the database refuses this
//! service for good). How long to wait before retrying: `retry.rs`.

use std::time::{Duration, Instant};

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
