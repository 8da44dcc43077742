//! The probes: `/healthz` (the process, and a database that refuses it for
//! good), `/readyz` (would a typical ticket be accepted now), `/metrics`.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use super::{text, AppState, HttpResponse, READY_TIMEOUT, TICKET_BYTES};
use crate::config::AckMode;
use crate::metrics;

/// What `/readyz` means by a typical ticket: a 4 KiB body, parsed.
const TYPICAL_TICKET_BYTES: usize = TICKET_BYTES + 4 * 1024;

/// `200` while the process can do its work once the database answers;
/// `503` while the database refuses it for good (wrong password, unknown
/// role or database): only an operator can fix that, and an orchestrator
/// that restarts the process makes it loud (a restart refuses to start).
pub(super) fn health(state: &AppState) -> HttpResponse {
    match state.refusal.get() {
        None => text(StatusCode::OK, "ok"),
        Some(refusal) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the database refuses this service, fix database_url or the database: {refusal}"),
        ),
    }
}

/// Ready means "would accept a typical ticket now": not shutting down,
/// room in both budgets, a usable write-ahead log (`ack = wal`), and a
/// database that answers, on a connection of its own.
pub(super) async fn readiness(state: &AppState) -> HttpResponse {
    if let Some(reason) = refusing(state) {
        return text(StatusCode::SERVICE_UNAVAILABLE, &reason);
    }
    let probe = sqlx::query("SELECT 1").execute(&state.readiness_pool);
    match tokio::time::timeout(READY_TIMEOUT, probe).await {
        Ok(Ok(_)) => text(StatusCode::OK, &ready_detail(state)),
        Ok(Err(error)) if crate::store::is_refusal(&error) => {
            state.refusal.observe(Err(&error));
            text(StatusCode::SERVICE_UNAVAILABLE, &format!("the database refuses this service: {error}"))
        }
        Ok(Err(error)) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("database unreachable: {error}")),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "database did not answer within 1 s"),
    }
}

/// "ready", and what a typical ticket hides: the tickets of the last minute
/// the budgets refused (larger ones, or a burst), when there were any.
fn ready_detail(state: &AppState) -> String {
    let (posted, refused) = state.recent_refusals.last_minute();
    if refused == 0 {
        return "ready".to_string();
    }
    let percent = refused * 100 / posted.max(refused);
    format!(
        "ready, but {refused} of the {posted} tickets posted in the last minute ({percent} %) were refused for the admission or reception budget (ticket_ingest_refused_total, kind budget or reception)"
    )
}

/// Why a typical ticket would be refused now, if it would.
fn refusing(state: &AppState) -> Option<String> {
    let admission = &state.admission;
    if admission.is_closed() {
        return Some("shutting down".to_string());
    }
    if !admission.has_room_for(TYPICAL_TICKET_BYTES) {
        return Some(format!(
            "admission budget used up: {} of {} tickets, {} of {} bytes in flight",
            admission.in_flight(),
            admission.capacity(),
            admission.bytes(),
            admission.max_bytes()
        ));
    }
    let reception = &state.reception;
    if reception.bytes() > 0 && reception.bytes() + TYPICAL_TICKET_BYTES > reception.max_bytes() {
        return Some(format!("reception budget used up: {} bytes of bodies being received", reception.bytes()));
    }
    if !state.schema_ready.load(Ordering::Acquire) {
        return Some("migrations not applied yet: the database was unreachable at start, retrying".to_string());
    }
    if state.settings.ack == AckMode::Wal {
        if state.wal.is_full() {
            return Some(format!("write-ahead log full: {} bytes on disk", state.wal.bytes_on_disk()));
        }
        if let Some(failure) = state.wal.failure() {
            return Some(format!("write-ahead log failing: {failure}"));
        }
    }
    None
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), the
/// Prometheus text format otherwise.
pub(super) fn metrics_page(state: &AppState, headers: &HeaderMap) -> HttpResponse {
    let metrics = &state.metrics;
    state.live.sample();
    let wants_openmetrics = headers
        .get(ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let (body, content_type) = if wants_openmetrics {
        (metrics.encode(), metrics::CONTENT_TYPE)
    } else {
        (metrics.encode_prometheus_text(), metrics::PROMETHEUS_TEXT_CONTENT_TYPE)
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
