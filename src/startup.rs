//! Wiring: [`Application::build`] connects, migrates, opens the write-ahead
//! log, starts the writers and binds the listener;
//! [`Application::run_until_stopped`] replays what the log still holds into
//! the writers in the background (so that `/healthz` answers during a long
//! replay), serves until the shutdown future fires, then stops in this order:
//!
//! 1. stop accepting connections and close the admission budget (requests
//!    still arriving on open connections get `503` + `Retry-After`);
//! 2. let in-flight requests finish, for at most `shutdown_grace_ms`;
//! 3. the writers drain the queue and flush every accepted ticket;
//! 4. the WAL appender deletes the fully committed segments and stops;
//! 5. return, and the process exits 0.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::admission::{Admission, Reception, Refusal};
use crate::config::Settings;
use crate::console::Console;
use crate::http::{self, AppState};
use crate::idempotency::{Answer, RecentKeys, TicketOnItsWay};
use crate::job::Job;
use crate::key_lookup::KeyLookup;
use crate::listener::{serve_until, ConnectionLimits};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::partition;
use crate::signature::Verifier;
use crate::standby::{StandbyGate, StandbyWatch};
use crate::store::{self, DatabaseRefusal};
use crate::ticket::{NewTicket, ParsedTicket};
use crate::wal::{Recovered, Wal, WalThread};
use crate::writer::{BatchTuning, Shared, Writers};

/// A built service: connected, migrated, writers running, listener bound.
pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
    writers: Writers,
    wal_thread: WalThread<Job>,
    /// Where the writers report their commits: records leave the log once
    /// the standbys flushed them too (`wal_hold_for_standbys`).
    standby_gate: StandbyGate,
    /// Records the log held at start, not known to be committed, each with
    /// the idempotency window's [`TicketOnItsWay`] when it has a key.
    recovered: Vec<(Recovered, Option<TicketOnItsWay>)>,
    /// The review desk, on its own listener, when configured.
    console: Option<Console>,
    /// pg_partman's maintenance on a timer (`partition_maintenance_s`),
    /// stopped when dropped.
    partition_maintenance: Option<AbortOnDrop>,
}

/// A background task stopped when its owner drops this.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let database = settings.database()?.clone();
        let pool_options =
            PgPoolOptions::new().max_connections(settings.db_pool_size).acquire_timeout(store::CONNECT_TIMEOUT);
        let (pool, pool_follower) = store::lazy_pool(&database, pool_options);
        let readiness_options = PgPoolOptions::new().max_connections(1).acquire_timeout(http::READY_TIMEOUT);
        let (readiness_pool, readiness_follower) = store::lazy_pool(&database, readiness_options);
        let schema_ready = Arc::new(AtomicBool::new(!settings.migrate_on_start));
        let refusal = Arc::new(DatabaseRefusal::default());
        if settings.migrate_on_start {
            match store::point_at_primary(&pool, &database).await {
                Ok(()) => match store::migrate(&pool).await {
                    Ok(()) => schema_ready.store(true, Ordering::Release),
                    // A proxy in front of the cluster may still route to a
                    // standby (HAProxy before its first checks): the
                    // primary is found again, as after a failover.
                    Err(sqlx::migrate::MigrateError::Execute(error)) if store::is_read_only(&error) => {
                        tracing::warn!(message = "database_url leads to a standby at start: serving anyway, migrations and writes are retried until it leads to the primary", %error);
                        tokio::spawn(migrate_once_reachable(
                            pool.clone(),
                            Arc::clone(&schema_ready),
                            Arc::clone(&refusal),
                        ));
                    }
                    Err(error) => return Err(error).context("applying migrations"),
                },
                // Nothing is accepted yet: refusing to start is loudest.
                Err(error) if store::is_refusal(&error) => {
                    return Err(anyhow::anyhow!(
                        "the database refuses this service, fix database_url or the database: {error}"
                    ));
                }
                Err(error) => {
                    // Tickets keep coming: take them (into the WAL with
                    // ack = wal) while the writers and the migrations
                    // retry; /readyz says why the service is not ready.
                    tracing::warn!(message = "database unreachable at start: serving anyway, migrations and writes are retried until it answers", %error);
                    tokio::spawn(migrate_once_reachable(pool.clone(), Arc::clone(&schema_ready), Arc::clone(&refusal)));
                }
            }
        }
        let partition_maintenance = settings.partition_maintenance_every().map(|every| {
            let maintain = partition::maintain_every(pool.clone(), settings.partition_layout(), every);
            AbortOnDrop(tokio::spawn(maintain))
        });
        let metrics = Arc::new(Metrics::new());
        let admission = Admission::new(settings.queue_capacity, settings.queue_max_bytes);
        let reception = Reception::new(settings.receive_max_bytes, settings.receive_max_bytes_per_peer);
        let connection_slots = Arc::new(Semaphore::new(settings.max_connections));
        // The queue holds at most what the budget admits, so a permitted
        // ticket always finds room in it.
        let (queue, receiver) = crossbeam_channel::bounded(settings.queue_capacity);
        let (wal, wal_thread, recovered) = Wal::open(
            &settings.wal_dir,
            settings.wal_segment_bytes,
            settings.wal_max_bytes,
            Arc::clone(&metrics),
            Some(queue.clone()),
        )
        .with_context(|| format!("opening the write-ahead log in {} (wal_dir)", settings.wal_dir.display()))?;
        let tuning = BatchTuning::new(settings.batch_limits());
        let standby_gate = StandbyGate::new(&settings, wal.clone());
        let writers = Writers::spawn(
            &settings,
            &database,
            receiver,
            Shared {
                admission: Arc::clone(&admission),
                gate: standby_gate.clone(),
                tuning: Arc::clone(&tuning),
                metrics: Arc::clone(&metrics),
                refusal: Arc::clone(&refusal),
            },
        )
        .context("starting writer threads")?;
        let listener =
            TcpListener::bind(settings.listen).await.with_context(|| format!("binding {}", settings.listen))?;
        let live = Live {
            admission: Arc::clone(&admission),
            reception: Arc::clone(&reception),
            connection_slots: Arc::clone(&connection_slots),
            max_connections: settings.max_connections,
            queue: queue.clone(),
            wal: wal.clone(),
            wal_max_bytes: settings.wal_max_bytes,
            tuning,
            metrics: Arc::clone(&metrics),
        };
        let desk_live = live.clone();
        let console = Console::build(&settings, Arc::new(move || desk_live.sample()))
            .await
            .context("starting the review desk (console)")?;
        // The keys of the records still in the log were acknowledged before
        // this start: a retry arriving during the replay gets the same id.
        let recent_keys = RecentKeys::new();
        let mut replayed = Vec::with_capacity(recovered.len());
        for recovered in recovered {
            let on_its_way = recovered.record.idempotency_key.as_deref().map(|key| {
                let record = &recovered.record;
                let answer = Answer { id: record.id, status: ParsedTicket::parse(&record.raw).status };
                recent_keys.remember(key, answer, &record.raw)
            });
            replayed.push((recovered, on_its_way));
        }
        let verifier = Verifier::new(&settings.signing_secrets, settings.signing_tolerance_s);
        let key_lookup = KeyLookup::spawn(pool.clone(), settings.idempotency_retention(), http::KEY_LOOKUP_TIMEOUT);
        let state = Arc::new(AppState {
            settings,
            admission,
            reception,
            connection_slots,
            queue,
            metrics,
            pool,
            pool_follower,
            readiness_pool,
            readiness_follower,
            recent_refusals: Default::default(),
            refusal,
            wal,
            recent_keys,
            key_lookup,
            verifier,
            live,
            schema_ready,
        });
        let recovered = replayed;
        Ok(Application {
            listener,
            state,
            writers,
            wal_thread,
            standby_gate,
            recovered,
            console,
            partition_maintenance,
        })
    }

    /// The batch triggers the writers use; a SIGHUP reload changes them.
    pub fn batch_tuning(&self) -> Arc<BatchTuning> {
        Arc::clone(&self.state.live.tuning)
    }

    /// The port actually bound (useful with `listen = "127.0.0.1:0"`).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|address| address.port()).unwrap_or(0)
    }

    /// The port of the review desk, when it runs.
    pub fn console_port(&self) -> Option<u16> {
        self.console.as_ref().map(Console::port)
    }

    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            writers,
            wal_thread,
            standby_gate,
            recovered,
            console,
            partition_maintenance,
        } = self;
        let standby_watch = StandbyWatch::spawn(standby_gate, Arc::clone(&state))?;
        // The console stops with the webhook listener, first of all.
        let (stop_console, console_stopped) = tokio::sync::watch::channel(false);
        let console = console.map(|console| {
            let mut stopped = console_stopped;
            tokio::spawn(console.run_until_stopped(async move {
                let _ = stopped.wait_for(|stopped| *stopped).await;
            }))
        });
        let replaying = tokio::spawn(replay(recovered, Arc::clone(&state.admission), state.queue.clone()));
        let expiring = AbortOnDrop(tokio::spawn(expire_idempotency_keys(Arc::clone(&state))));
        tracing::info!(message = "listening", address = %listener.local_addr()?, ack = ?state.settings.ack, writers = state.settings.writers);
        let limits = ConnectionLimits {
            header_read_timeout: state.settings.header_read_timeout(),
            max_headers: Some(state.settings.max_headers),
            max_head_bytes: Some(state.settings.max_head_bytes),
        };
        let handler = {
            let state = Arc::clone(&state);
            move |peer, request| http::route(Arc::clone(&state), peer, request)
        };
        let slots = Arc::clone(&state.connection_slots);
        let connections = serve_until("webhook", &listener, slots, limits, handler, shutdown).await;

        tracing::info!(message = "shutting down: no new tickets accepted", in_flight = state.admission.in_flight());
        drop(listener);
        drop((expiring, partition_maintenance));
        let _ = stop_console.send(true);
        state.admission.close();
        let _ = replaying.await;
        let draining = connections.shutdown();
        tokio::pin!(draining);
        let drained = tokio::time::timeout(state.settings.shutdown_grace(), &mut draining).await.is_ok();
        if !drained {
            tracing::warn!(message = "grace period over, connections still open are closed at exit");
        }
        tracing::info!(message = "draining the queue", in_flight = state.admission.in_flight());
        tokio::task::spawn_blocking(move || writers.join()).await.context("joining writers")?;
        let held_for_standbys = match standby_watch {
            Some(watch) => watch.finish().await,
            None => 0,
        };
        let leftover = tokio::task::spawn_blocking(move || wal_thread.stop()).await.context("stopping the WAL")?;
        // Answers the writers gave at the end (`503` for `ack = commit`
        // requests given up) still have to reach their clients.
        if !drained {
            let _ = tokio::time::timeout(Duration::from_secs(1), draining).await;
        }
        if let Some(console) = console {
            match console.await {
                Ok(Err(error)) => tracing::warn!(message = "review desk (console) stopped with an error", %error),
                Err(error) => tracing::warn!(message = "review desk (console) task failed", %error),
                Ok(Ok(())) => {}
            }
        }
        if leftover.records == 0 {
            tracing::info!(message = "stopped, every accepted ticket is committed");
        } else {
            tracing::warn!(
                message = "stopped with acknowledged tickets not yet in PostgreSQL, or not yet known flushed on a standby: they are kept in the write-ahead log and written at the next start with this wal_dir (those stored are skipped); do not delete it",
                tickets = leftover.records,
                held_for_standbys,
                segments = leftover.segments,
                bytes = leftover.bytes,
                wal_dir = %state.settings.wal_dir.display()
            );
        }
        Ok(())
    }
}

/// How often idempotency keys past `idempotency_retention_hours` are
/// looked for (once the schema is ready, and at once after start).
const KEY_EXPIRY_EVERY: Duration = Duration::from_secs(60);
/// Keys deleted per statement: each is one short transaction.
const KEY_EXPIRY_BATCH: i64 = 5_000;

/// Deletes the idempotency keys older than the retention, a batch at a
/// time with a pause between batches, so that the writers' inserts never
/// wait on a long delete (they only add new keys anyway).
async fn expire_idempotency_keys(state: Arc<AppState>) {
    let retention = state.settings.idempotency_retention();
    loop {
        if state.schema_ready.load(Ordering::Acquire) {
            let before = OffsetDateTime::now_utc() - retention;
            loop {
                match store::expire_keys(&state.pool, before, KEY_EXPIRY_BATCH).await {
                    Ok(deleted) => {
                        state.metrics.idempotency_keys_expired.inc_by(deleted);
                        if deleted < KEY_EXPIRY_BATCH as u64 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(error) => {
                        tracing::warn!(message = "expiring idempotency keys failed, trying again in a minute", %error);
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(KEY_EXPIRY_EVERY).await;
    }
}

/// Applies the migrations once the database answers, retrying with backoff
/// for as long as it takes; `Application::build` made the first attempt.
async fn migrate_once_reachable(pool: sqlx::PgPool, schema_ready: Arc<AtomicBool>, refusal: Arc<DatabaseRefusal>) {
    let mut backoff = store::Backoff::new();
    tokio::time::sleep(backoff.next_delay()).await;
    let migrated = store::retry(
        "migrations not applied yet, retrying",
        store::Retries::Unbounded,
        |_| true,
        backoff,
        async move |failed| {
            let outcome = store::migrate(&pool).await;
            match &outcome {
                Ok(()) => refusal.observe(Ok(())),
                Err(sqlx::migrate::MigrateError::Execute(error)) => refusal.observe(Err(error)),
                Err(_) => {}
            }
            // The attempts made here, this one included.
            outcome.map(|()| failed)
        },
    )
    .await;
    match migrated {
        Ok(attempts) => {
            tracing::info!(message = "database reachable, migrations applied", attempts);
            schema_ready.store(true, Ordering::Release);
        }
        // Every failure is retried: not reached.
        Err(error) => tracing::error!(message = "migrations not applied", %error),
    }
}

/// Feeds the records the log still holds to the writers, in order, waiting
/// for room in the budget when there are more than it admits. Their ids are
/// the original ones, so a record committed just before a crash is skipped
/// by the database (`ON CONFLICT DO NOTHING`), not stored twice.
async fn replay(
    recovered: Vec<(Recovered, Option<TicketOnItsWay>)>,
    admission: Arc<Admission>,
    queue: crossbeam_channel::Sender<Job>,
) {
    if recovered.is_empty() {
        return;
    }
    let total = recovered.len();
    tracing::info!(message = "replaying the write-ahead log", records = total);
    match feed_to_writers(recovered, &admission, &queue).await {
        Ok(()) => tracing::info!(message = "write-ahead log replayed into the queue", records = total),
        Err(Stopped { queued }) => {
            tracing::warn!(
                message = "shutting down during replay; the rest stays in the log",
                replayed = queued,
                records = total
            )
        }
    }
}

/// The service stopped taking tickets after this many were queued.
#[derive(Debug)]
pub(crate) struct Stopped {
    pub queued: usize,
}

/// Queues records of the log for the writers under their ids and sequence
/// numbers, in order, each with a permit (waiting for room in the budget).
pub(crate) async fn feed_to_writers(
    records: Vec<(Recovered, Option<TicketOnItsWay>)>,
    admission: &Arc<Admission>,
    queue: &crossbeam_channel::Sender<Job>,
) -> Result<(), Stopped> {
    for (done, (Recovered { seq, record }, on_its_way)) in records.into_iter().enumerate() {
        let permit = loop {
            match admission.try_acquire() {
                Ok(permit) => break permit,
                Err(Refusal::Exhausted) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(Refusal::Closed) => return Err(Stopped { queued: done }),
            }
        };
        let ticket = NewTicket::known(record.id, record.received_at, record.idempotency_key, record.raw);
        let mut job = Job::new(ticket, permit).on_its_way(on_its_way);
        job.wal_seq = Some(seq);
        if queue.try_send(job).is_err() {
            tracing::error!(
                message = "writers stopped while records of the log were queued; the rest stays in the log"
            );
            return Err(Stopped { queued: done });
        }
        if (done + 1) % 10_000 == 0 {
            tracing::info!(message = "records of the log queued", queued = done + 1);
        }
    }
    Ok(())
}
