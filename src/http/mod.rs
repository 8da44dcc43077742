//! The HTTP front end: routes, request limits, and the mapping of every
//! refusal to a status code.
//!
//! `POST /ticket` reads the body into the reception budget as it arrives —
//! at most `max_body_bytes` (after gzip decoding), within
//! `body_read_timeout_ms` and no slower than `body_min_bytes_per_s` — then
//! parses the ticket, takes an admission permit for what it costs, queues
//! it for the writers and answers `202` once the ack condition holds.
//! Whatever is refused is refused loudly, with a JSON error and, for `503`,
//! a `Retry-After`.

//!
//! # Layout
//! - `mod.rs`     [`AppState`], [`route`]: which route answers, recorded in the metrics
//! - `ingest.rs`  `POST /ticket`: receive, claim the key, hand over per ack mode, `202`
//! - `body.rs`    reading a body into the reception budget: limits, pace, gzip
//! - `refused.rs` [`Refused`]: every reason a ticket is refused, its status and message
//! - `probes.rs`  `/healthz`, `/readyz`, `/metrics`

mod body;
mod ingest;
mod probes;
mod refused;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Sender;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use sqlx::PgPool;
use tracing::Instrument;

use crate::admission::{Admission, Reception};
use crate::config::Settings;
use crate::idempotency::RecentKeys;
use crate::job::Job;
use crate::key_lookup::KeyLookup;
use crate::metrics::Metrics;
use crate::signature::Verifier;
use crate::wal::Wal;

pub use refused::Refused;

/// How long `/readyz` waits for the database.
pub const READY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a request waits for the database to say whether its
/// idempotency key was stored before.
pub const KEY_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// What a ticket in flight takes besides its body and parsed lines: the
/// job, the queue slot, the WAL record, the response.
const TICKET_BYTES: usize = 1024;

pub type HttpResponse = Response<Full<Bytes>>;

/// Everything a request handler needs, shared by all connections.
pub struct AppState {
    pub settings: Settings,
    pub admission: Arc<Admission>,
    /// Bytes of bodies being received, in all and per peer.
    pub reception: Arc<Reception>,
    /// One permit per open connection, `max_connections` in all.
    pub connection_slots: Arc<tokio::sync::Semaphore>,
    pub queue: Sender<Job>,
    pub metrics: Arc<Metrics>,
    /// The shared pool (key expiry).
    pub pool: PgPool,
    /// Keeps `pool` on the primary when `database_url` lists several hosts.
    pub pool_follower: crate::store::PrimaryFollower,
    /// `/readyz`'s own connection, so that readiness never queues behind
    /// the work it reports on (key lookups waiting on a lock, say).
    pub readiness_pool: PgPool,
    pub readiness_follower: crate::store::PrimaryFollower,
    /// Tickets posted and refused by a budget in the last minute (`/readyz`).
    pub recent_refusals: crate::admission::RecentRefusals,
    /// Set while the database refuses us for good (`/healthz` is `503`).
    pub refusal: Arc<crate::store::DatabaseRefusal>,
    pub wal: Wal<Job>,
    /// Idempotency keys seen recently, with their first request's outcome.
    pub recent_keys: RecentKeys<Refused>,
    /// Asks the database about the keys not in `recent_keys`.
    pub key_lookup: KeyLookup,
    /// Checks signatures when `signing_secrets` is set.
    pub verifier: Option<Verifier>,
    /// The numbers of the moment, for `/metrics`.
    pub live: crate::live::Live,
    /// The migrations are applied (or not ours to apply).
    pub schema_ready: Arc<std::sync::atomic::AtomicBool>,
}

/// Routes one request and records it in the metrics, inside an INFO span
/// `request` with its `method`, `route` (the metrics' label: bounded),
/// `status` once answered and, for a ticket, its `id`. A span prints
/// nothing by itself: its fields go with the events logged inside it.
pub async fn route(state: Arc<AppState>, peer: IpAddr, request: Request<Incoming>) -> Result<HttpResponse, Infallible> {
    let started = Instant::now();
    let route = Route::of(request.method(), request.uri().path());
    let span = tracing::info_span!(
        "request",
        method = request.method().as_str(),
        route = route.label(),
        status = tracing::field::Empty,
        id = tracing::field::Empty,
    );
    let response = answer(&state, route, peer, request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("status", status);
    state.metrics.record_request(route.label(), status, started.elapsed().as_secs_f64());
    Ok(response)
}

/// What a request asks for, from its method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    PostTicket,
    Ping,
    Health,
    Readiness,
    Metrics,
    /// `/ticket` with another method than `POST`.
    TicketNotPosted,
    /// A probe with another method than `GET` or `HEAD`.
    ProbeNotGot,
    NotFound,
}

impl Route {
    fn of(method: &Method, path: &str) -> Route {
        match path {
            "/ticket" if method == Method::POST => Route::PostTicket,
            "/ticket" => Route::TicketNotPosted,
            "/ping" if is_get(method) => Route::Ping,
            "/healthz" if is_get(method) => Route::Health,
            "/readyz" if is_get(method) => Route::Readiness,
            "/metrics" if is_get(method) => Route::Metrics,
            "/ping" | "/healthz" | "/readyz" | "/metrics" => Route::ProbeNotGot,
            _ => Route::NotFound,
        }
    }

    /// The route in the metrics and the log: one of a handful of names.
    fn label(self) -> &'static str {
        match self {
            Route::PostTicket | Route::TicketNotPosted => "/ticket",
            Route::Ping => "/ping",
            Route::Health => "/healthz",
            Route::Readiness => "/readyz",
            Route::Metrics => "/metrics",
            Route::ProbeNotGot | Route::NotFound => "other",
        }
    }
}

async fn answer(state: &Arc<AppState>, route: Route, peer: IpAddr, request: Request<Incoming>) -> HttpResponse {
    match route {
        Route::PostTicket => {
            state.recent_refusals.posted();
            ingest::ingest(state, peer, request).await
        }
        Route::Ping => text(StatusCode::OK, "Pong"),
        Route::Health => probes::health(state),
        Route::Readiness => probes::readiness(state).await,
        Route::Metrics => probes::metrics_page(state, request.headers()),
        Route::TicketNotPosted => method_not_allowed("POST"),
        Route::ProbeNotGot => method_not_allowed("GET, HEAD"),
        Route::NotFound => json_error(StatusCode::NOT_FOUND, "no such route"),
    }
}

fn is_get(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

fn json(status: StatusCode, body: Bytes) -> HttpResponse {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn json_error(status: StatusCode, message: &str) -> HttpResponse {
    let body = serde_json::json!({ "error": message }).to_string();
    json(status, Bytes::from(body))
}

fn text(status: StatusCode, body: &str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut response = json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_labelled_with_one_of_a_handful_of_routes() {
        let labelled = |method: Method, path: &str| Route::of(&method, path).label();

        assert_eq!(labelled(Method::POST, "/ticket"), "/ticket");
        assert_eq!(labelled(Method::GET, "/ticket"), "/ticket");
        assert_eq!(labelled(Method::HEAD, "/readyz"), "/readyz");
        assert_eq!(labelled(Method::GET, "/metrics"), "/metrics");
        assert_eq!(labelled(Method::POST, "/healthz"), "other");
        assert_eq!(labelled(Method::GET, "/ticket/0190a1b2-0000-7000-8000-000000000000"), "other");
        assert_eq!(labelled(Method::GET, "/anything/else"), "other");
    }
}
