//! Connections over `database_url`'s host list, tried in order as libpq
//! does, each checked against `target_session_attrs`; a pool that follows
//! the primary when a standby is promoted.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use super::is_refusal;
use crate::database_url::{DatabaseUrl, SessionAttrs};

/// How long a connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a pool over several hosts checks that it still reaches a
/// suitable one ([`lazy_pool`]).
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// Opens a connection to the first host of `url` that accepts one within
/// [`CONNECT_TIMEOUT`] and suits its `target_session_attrs` (a standby is
/// skipped when a writable session is wanted), trying the hosts in order
/// as libpq does.
pub async fn connect(url: &DatabaseUrl) -> Result<PgConnection, sqlx::Error> {
    connect_to_first_suitable(url).await.map(|(_host, connection)| connection)
}

/// [`connect`], with the index of the host it reached.
async fn connect_to_first_suitable(url: &DatabaseUrl) -> Result<(usize, PgConnection), sqlx::Error> {
    let mut failures = Vec::with_capacity(url.hosts().len());
    // When every host refuses us for good, say so with the first refusal.
    let mut refusals = Vec::new();
    for (index, host) in url.hosts().iter().enumerate() {
        let error = match connect_host(&host.options).await {
            Ok(mut connection) => match unsuitable(&mut connection, url.target()).await {
                Ok(None) => return Ok((index, connection)),
                Ok(Some(why)) => {
                    let _ = connection.close().await;
                    unsuitable_error(why)
                }
                Err(error) => error,
            },
            Err(error) => error,
        };
        if url.hosts().len() == 1 {
            return Err(error);
        }
        failures.push(format!("{}: {error}", host.name));
        if is_refusal(&error) {
            refusals.push(error);
        }
    }
    if refusals.len() == url.hosts().len() {
        return Err(refusals.swap_remove(0));
    }
    Err(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        format!("no suitable database host ({})", failures.join("; ")),
    )))
}

/// Opens a connection to one host, failing after [`CONNECT_TIMEOUT`]
/// rather than waiting on an unreachable host for as long as the kernel
/// does.
async fn connect_host(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
        ))),
    }
}

/// Why the server behind `connection` is not the kind `target` asks for;
/// `None` when it is.
async fn unsuitable(connection: &mut PgConnection, target: SessionAttrs) -> Result<Option<&'static str>, sqlx::Error> {
    match target {
        SessionAttrs::Any => Ok(None),
        SessionAttrs::ReadWrite => {
            let read_only: String = sqlx::query_scalar("SHOW transaction_read_only").fetch_one(connection).await?;
            Ok((read_only == "on").then_some("read-only session (a standby?), read-write wanted"))
        }
        SessionAttrs::Primary => {
            let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(connection).await?;
            Ok(in_recovery.then_some("in recovery (a standby), primary wanted"))
        }
    }
}

fn unsuitable_error(why: &str) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, why.to_string()))
}

/// A pool over `url` that connects on demand, each new connection checked
/// against `target_session_attrs`. With several hosts it opens its
/// connections on one of them at a time, the first suitable one at
/// [`point_at_primary`]; the returned [`PrimaryFollower`] checks every
/// [`FOLLOW_INTERVAL`] that the pool still gets a connection, and when it
/// does not (the primary died, a standby was promoted) points it at the
/// first suitable host again. Connections to a dead host fail their
/// ping and are replaced on the next acquire.
pub fn lazy_pool(url: &DatabaseUrl, options: PgPoolOptions) -> (PgPool, PrimaryFollower) {
    let target = url.target();
    let options = options.after_connect(move |connection, _metadata| {
        Box::pin(async move {
            match unsuitable(connection, target).await? {
                None => Ok(()),
                Some(why) => Err(unsuitable_error(why)),
            }
        })
    });
    let first = url.hosts()[0].options.clone();
    let pool = options.connect_lazy_with(first);
    let task = (url.hosts().len() > 1).then(|| tokio::spawn(follow_primary(pool.clone(), url.clone())));
    (pool, PrimaryFollower { task })
}

/// Points `pool` at the first suitable host of `url` (see [`connect`]).
pub async fn point_at_primary(pool: &PgPool, url: &DatabaseUrl) -> Result<(), sqlx::Error> {
    let (index, connection) = connect_to_first_suitable(url).await?;
    let _ = connection.close().await;
    let host = &url.hosts()[index];
    if pool.connect_options().get_host() != host.options.get_host()
        || pool.connect_options().get_port() != host.options.get_port()
    {
        tracing::info!(message = "database pool now connects to", host = %host.name);
        pool.set_connect_options(host.options.clone());
    }
    Ok(())
}

/// The task that keeps a pool over several hosts on a suitable one; it
/// stops when dropped.
#[derive(Debug)]
pub struct PrimaryFollower {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for PrimaryFollower {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn follow_primary(pool: PgPool, url: DatabaseUrl) {
    loop {
        tokio::time::sleep(FOLLOW_INTERVAL).await;
        if pool.is_closed() {
            return;
        }
        if let Ok(Ok(_connection)) = tokio::time::timeout(FOLLOW_INTERVAL, pool.acquire()).await {
            continue;
        }
        if let Err(error) = point_at_primary(&pool, &url).await {
            tracing::debug!(message = "no suitable database host yet", %error);
        }
    }
}
