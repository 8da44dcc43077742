//! The HTTP front end: routes, request limits, and the mapping of every
//! refusal to a status code.
//!
//! `POST /ticket` takes an admission permit *before* reading the body, reads
//! at most `max_body_bytes` (after gzip decoding) within
//! `body_read_timeout_ms`, parses the ticket, queues it for the writers and
//! answers `202` once the ack condition holds. Whatever is refused is
//! refused loudly, with a JSON error and, for `503`, a `Retry-After`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Sender;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT, ALLOW, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
    TRANSFER_ENCODING,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::admission::{Admission, Permit, Refusal};
use crate::config::{AckMode, Settings};
use crate::metrics::{self, KindLabels, Metrics, StatusLabels};
use crate::signature::{SignatureError, Verifier};
use crate::store::NewTicket;
use crate::ticket::{ParsedTicket, Problem, Status};
use crate::wal::{Wal, WalError, WalRecord};
use crate::writer::{BatchTuning, Job};

/// gzip adds a few bytes to incompressible data: leave room for them on the
/// encoded body, the decoded one is held to `max_body_bytes` exactly.
const GZIP_SLACK: usize = 1024;
/// Longest accepted `Idempotency-Key` / `webhook-id`.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// What a ticket in flight takes besides its body and parsed lines: the
/// job, the queue slot, the WAL record, the response.
const TICKET_BYTES: usize = 1024;
/// Idempotency keys remembered for answering repeats with the first id.
const RECENT_KEYS: usize = 65_536;
/// How long `/readyz` waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

pub type HttpResponse = Response<Full<Bytes>>;

/// Everything a request handler needs, shared by all connections.
pub struct AppState {
    pub settings: Settings,
    pub admission: Arc<Admission>,
    pub queue: Sender<Job>,
    pub metrics: Arc<Metrics>,
    /// For readiness checks.
    pub pool: PgPool,
    pub wal: Wal,
    pub recent_keys: RecentKeys,
    /// Checks signatures when `signing_secrets` is set.
    pub verifier: Option<Verifier>,
    /// The batch triggers in force (shown in the metrics).
    pub tuning: Arc<BatchTuning>,
}

/// Why a `POST /ticket` was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refused {
    EmptyBody,
    TooLarge,
    BodyTimeout,
    BadBody(String),
    UnsupportedEncoding,
    UnsupportedTransferCoding,
    BadIdempotencyKey(&'static str),
    BadSignature(SignatureError),
    BudgetExhausted,
    WalFull,
    WalFailed,
    ShuttingDown,
}

impl From<WalError> for Refused {
    fn from(error: WalError) -> Refused {
        match error {
            WalError::Full(_) => Refused::WalFull,
            WalError::Io(_) => Refused::WalFailed,
            WalError::Closed => Refused::ShuttingDown,
        }
    }
}

impl Refused {
    fn status(&self) -> StatusCode {
        match self {
            Refused::EmptyBody | Refused::BadBody(_) | Refused::BadIdempotencyKey(_) => StatusCode::BAD_REQUEST,
            Refused::BadSignature(_) => StatusCode::UNAUTHORIZED,
            Refused::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refused::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Refused::UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refused::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Refused::BudgetExhausted | Refused::WalFull | Refused::WalFailed | Refused::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn message(&self, settings: &Settings) -> String {
        match self {
            Refused::EmptyBody => "empty body: send one ticket per request".to_string(),
            Refused::TooLarge => format!("body larger than {} bytes (after gzip decoding)", settings.max_body_bytes),
            Refused::BodyTimeout => format!("body not received within {} ms", settings.body_read_timeout_ms),
            Refused::BadBody(reason) => reason.clone(),
            Refused::UnsupportedEncoding => "Content-Encoding must be gzip or identity".to_string(),
            Refused::UnsupportedTransferCoding => {
                "Transfer-Encoding other than chunked is not implemented (gzip the body with Content-Encoding: gzip)"
                    .to_string()
            }
            Refused::BadIdempotencyKey(reason) => format!("invalid idempotency key: {reason}"),
            Refused::BadSignature(reason) => format!("webhook signature refused: {reason}"),
            Refused::BudgetExhausted => "too many tickets (or bytes of tickets) in flight, retry later".to_string(),
            Refused::WalFull => "write-ahead log full (database behind or disk full), retry later".to_string(),
            Refused::WalFailed => "write-ahead log write failed, retry later".to_string(),
            Refused::ShuttingDown => "shutting down, retry later".to_string(),
        }
    }
}

/// The `202` body.
#[derive(Serialize)]
struct Accepted<'a> {
    id: Uuid,
    status: Status,
    problems: &'a [Problem],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

/// Routes one request and records it in the metrics.
pub async fn route(state: Arc<AppState>, request: Request<Incoming>) -> Result<HttpResponse, Infallible> {
    let started = Instant::now();
    let method = request.method().clone();
    let (route, response) = match request.uri().path() {
        "/ticket" if method == Method::POST => ("/ticket", ingest(&state, request).await),
        "/ticket" => ("/ticket", method_not_allowed("POST")),
        "/ping" if is_get(&method) => ("/ping", text(StatusCode::OK, "Pong")),
        "/healthz" if is_get(&method) => ("/healthz", text(StatusCode::OK, "ok")),
        "/readyz" if is_get(&method) => ("/readyz", readiness(&state).await),
        "/metrics" if is_get(&method) => ("/metrics", metrics_page(&state, request.headers())),
        "/ping" | "/healthz" | "/readyz" | "/metrics" => ("other", method_not_allowed("GET, HEAD")),
        _ => ("other", json_error(StatusCode::NOT_FOUND, "no such route")),
    };
    state.metrics.record_request(route, response.status().as_u16(), started.elapsed().as_secs_f64());
    Ok(response)
}

fn is_get(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

async fn ingest(state: &AppState, request: Request<Incoming>) -> HttpResponse {
    match accept(state, request).await {
        Ok(response) => response,
        Err(refused) => refusal(state, &refused),
    }
}

/// The happy path of `POST /ticket`, from permit to `202`.
async fn accept(state: &AppState, request: Request<Incoming>) -> Result<HttpResponse, Refused> {
    let mut permit = state.admission.try_acquire().map_err(refused_by_budget)?;
    let (parts, body) = request.into_parts();
    let idempotency_key = idempotency_key(&parts.headers)?;
    permit.resize(body_reservation(&state.settings, &parts.headers)).map_err(refused_by_budget)?;
    let raw = read_body(&state.settings, &parts.headers, body).await?;
    if raw.is_empty() {
        return Err(Refused::EmptyBody);
    }
    if let Some(verifier) = &state.verifier {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        verifier.verify(&parts.headers, &raw, now).map_err(Refused::BadSignature)?;
    }
    let parsed = ParsedTicket::parse(&raw);
    permit.resize(TICKET_BYTES + raw.len() + parsed.heap_bytes()).map_err(refused_by_budget)?;
    let id = Uuid::now_v7();

    if let Some(key) = &idempotency_key {
        if let Some((first_id, first_status)) = state.recent_keys.claim(key, id, parsed.status) {
            state.metrics.duplicates.inc();
            return Ok(accepted(&Accepted { id: first_id, status: first_status, problems: &[], duplicate: true }));
        }
    }

    let body =
        serde_json::to_vec(&Accepted { id, status: parsed.status, problems: &parsed.problems, duplicate: false })
            .map_err(|error| Refused::BadBody(error.to_string()))?;
    let status = parsed.status;
    let claimed_key = idempotency_key.clone();
    let ticket = NewTicket { id, received_at: OffsetDateTime::now_utc(), idempotency_key, raw, parsed };
    if let Err(refused) = hand_over(state, ticket, permit).await {
        if let Some(key) = &claimed_key {
            state.recent_keys.forget(key);
        }
        return Err(refused);
    }
    state.metrics.tickets_accepted.get_or_create(&StatusLabels { status: status.as_str() }).inc();
    Ok(json(StatusCode::ACCEPTED, Bytes::from(body)))
}

fn refused_by_budget(refusal: Refusal) -> Refused {
    match refusal {
        Refusal::Exhausted => Refused::BudgetExhausted,
        Refusal::Closed => Refused::ShuttingDown,
    }
}

/// Bytes a body may take while it is read: its declared length, or the
/// most it may decode to (twice, gzip: encoded and decoded at once).
fn body_reservation(settings: &Settings, headers: &HeaderMap) -> usize {
    let max = settings.max_body_bytes;
    if headers.contains_key(CONTENT_ENCODING) {
        return 2 * max + GZIP_SLACK;
    }
    let declared = headers.get(CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    declared.map_or(max, |length| length.min(max))
}

/// Makes the ticket as safe as the ack mode promises, and queues it for
/// the writers. `Ok` means the request may be answered `202`.
async fn hand_over(state: &AppState, ticket: NewTicket, permit: Permit) -> Result<(), Refused> {
    match state.settings.ack {
        AckMode::Memory => enqueue(state, Job { ticket, permit, reply: None, wal_seq: None }),
        AckMode::Commit => {
            let (reply, committed) = oneshot::channel();
            enqueue(state, Job { ticket, permit, reply: Some(reply), wal_seq: None })?;
            // Writers answer every ticket they take; a closed channel means
            // the process is going down before the commit.
            committed.await.map_err(|_| Refused::ShuttingDown)
        }
        AckMode::Wal => {
            let record = WalRecord {
                id: ticket.id,
                received_at: ticket.received_at,
                idempotency_key: ticket.idempotency_key.clone(),
                raw: ticket.raw.clone(),
            };
            // The appender queues the job once the record is durable, even
            // if this request is cancelled meanwhile (the client hung up).
            let job = Job { ticket, permit, reply: None, wal_seq: None };
            state.wal.append(record, Some(job)).await.map_err(Refused::from)?;
            Ok(())
        }
    }
}

/// The queue is as large as the admission budget, so it only refuses a
/// permitted ticket once the writers are gone.
fn enqueue(state: &AppState, job: Job) -> Result<(), Refused> {
    state.queue.try_send(job).map_err(|_| Refused::ShuttingDown)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Refused> {
    let Some(value) = headers.get("idempotency-key").or_else(|| headers.get("webhook-id")) else {
        return Ok(None);
    };
    let key = value.to_str().map_err(|_| Refused::BadIdempotencyKey("not printable ASCII"))?.trim();
    if key.is_empty() {
        return Err(Refused::BadIdempotencyKey("empty"));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(Refused::BadIdempotencyKey("longer than 255 bytes"));
    }
    Ok(Some(key.to_string()))
}

/// Reads the whole body within the time and size limits, gunzipping it
/// when `Content-Encoding: gzip` says so.
async fn read_body(settings: &Settings, headers: &HeaderMap, body: Incoming) -> Result<Bytes, Refused> {
    only_chunked_transfer_coding(headers)?;
    let gzip = match headers.get(CONTENT_ENCODING).map(|value| value.as_bytes().trim_ascii()) {
        None => false,
        Some(encoding) if encoding.eq_ignore_ascii_case(b"identity") => false,
        Some(encoding) if encoding.eq_ignore_ascii_case(b"gzip") || encoding.eq_ignore_ascii_case(b"x-gzip") => true,
        Some(_) => return Err(Refused::UnsupportedEncoding),
    };
    let limit = if gzip { settings.max_body_bytes + GZIP_SLACK } else { settings.max_body_bytes };
    let declared = headers.get(CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(Refused::TooLarge);
    }
    let collected = tokio::time::timeout(settings.body_read_timeout(), Limited::new(body, limit).collect())
        .await
        .map_err(|_| Refused::BodyTimeout)?
        .map_err(|error| {
            if error.downcast_ref::<LengthLimitError>().is_some() {
                Refused::TooLarge
            } else {
                Refused::BadBody(format!("body could not be read: {error}"))
            }
        })?;
    let bytes = collected.to_bytes();
    if gzip {
        return gunzip(&bytes, settings.max_body_bytes);
    }
    // A copy the size of the body: hyper's slice would keep its connection's
    // whole read buffer (8 KiB or more) alive for as long as the ticket waits
    // for the writers, where the admission budget counts the body's length.
    Ok(Bytes::copy_from_slice(&bytes))
}

/// hyper decodes `chunked` and refuses (400) a `Transfer-Encoding` that
/// does not end with it, but hands over the body of `gzip, chunked` still
/// gzipped: any coding besides one `chunked` is refused here, 501 as
/// RFC 9112 §6.1 says for a coding the server does not understand.
fn only_chunked_transfer_coding(headers: &HeaderMap) -> Result<(), Refused> {
    let mut chunked = 0;
    for value in headers.get_all(TRANSFER_ENCODING) {
        for coding in value.as_bytes().split(|byte| *byte == b',').map(<[u8]>::trim_ascii) {
            if coding.eq_ignore_ascii_case(b"chunked") {
                chunked += 1;
            } else if !coding.is_empty() {
                return Err(Refused::UnsupportedTransferCoding);
            }
        }
    }
    if chunked > 1 {
        return Err(Refused::BadBody("chunked transfer coding applied more than once".to_string()));
    }
    Ok(())
}

/// Inflates at most `max + 1` bytes, so a gzip bomb is refused, not inflated.
fn gunzip(encoded: &[u8], max: usize) -> Result<Bytes, Refused> {
    let mut decoded = Vec::with_capacity(encoded.len().saturating_mul(4).min(max + 1));
    let mut reader = flate2::read::MultiGzDecoder::new(encoded).take(max as u64 + 1);
    reader.read_to_end(&mut decoded).map_err(|error| Refused::BadBody(format!("invalid gzip body: {error}")))?;
    if decoded.len() > max {
        return Err(Refused::TooLarge);
    }
    decoded.shrink_to_fit(); // the budget counts the length, not the guess
    Ok(Bytes::from(decoded))
}

fn refusal(state: &AppState, refused: &Refused) -> HttpResponse {
    let status = refused.status();
    let mut response = json_error(status, &refused.message(&state.settings));
    if status == StatusCode::UNAUTHORIZED {
        state.metrics.signature_failures.inc();
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        let kind = match refused {
            Refused::BudgetExhausted => "budget",
            Refused::WalFull => "wal_full",
            Refused::WalFailed => "wal_error",
            _ => "shutdown",
        };
        state.metrics.refused.get_or_create(&KindLabels { kind }).inc();
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(state.settings.retry_after_s));
    }
    response
}

/// Ready when the database answers and the budget has room.
async fn readiness(state: &AppState) -> HttpResponse {
    if state.admission.is_closed() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    if state.admission.is_exhausted() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "admission budget exhausted");
    }
    if state.wal.is_full() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "write-ahead log full");
    }
    let probe = sqlx::query("SELECT 1").execute(&state.pool);
    match tokio::time::timeout(READY_TIMEOUT, probe).await {
        Ok(Ok(_)) => text(StatusCode::OK, "ready"),
        Ok(Err(error)) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("database unreachable: {error}")),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "database did not answer within 1 s"),
    }
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), the
/// Prometheus text format otherwise.
fn metrics_page(state: &AppState, headers: &HeaderMap) -> HttpResponse {
    let metrics = &state.metrics;
    metrics.in_flight.set(state.admission.in_flight() as i64);
    metrics.in_flight_capacity.set(state.admission.capacity() as i64);
    metrics.in_flight_bytes.set(state.admission.bytes() as i64);
    metrics.in_flight_bytes_capacity.set(state.admission.max_bytes() as i64);
    metrics.queue_depth.set(state.queue.len() as i64);
    metrics.wal_bytes.set(state.wal.bytes_on_disk() as i64);
    metrics.batch_max_tickets.set(state.tuning.max_tickets() as i64);
    metrics.batch_max_bytes.set(state.tuning.max_bytes() as i64);
    metrics.batch_max_wait.set(state.tuning.max_wait_ms() as f64 / 1000.0);
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

fn accepted(body: &Accepted<'_>) -> HttpResponse {
    match serde_json::to_vec(body) {
        Ok(bytes) => json(StatusCode::ACCEPTED, Bytes::from(bytes)),
        Err(error) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
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

/// Idempotency keys seen recently, with the id and status first given to
/// them, so that a repeat gets the same answer. Bounded: the oldest keys
/// are forgotten first. Older repeats are still stored only once (the
/// `idempotency_key` column is unique); they just get a fresh id in their
/// answer.
pub struct RecentKeys {
    inner: Mutex<RecentInner>,
}

#[derive(Default)]
struct RecentInner {
    answers: HashMap<String, (Uuid, Status)>,
    order: VecDeque<String>,
}

impl RecentKeys {
    pub fn new() -> RecentKeys {
        RecentKeys { inner: Mutex::new(RecentInner::default()) }
    }

    /// The first answer for `key`, or `None` after recording this one.
    fn claim(&self, key: &str, id: Uuid, status: Status) -> Option<(Uuid, Status)> {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(first) = inner.answers.get(key) {
            return Some(*first);
        }
        if inner.order.len() >= RECENT_KEYS {
            if let Some(oldest) = inner.order.pop_front() {
                inner.answers.remove(&oldest);
            }
        }
        inner.answers.insert(key.to_string(), (id, status));
        inner.order.push_back(key.to_string());
        None
    }

    /// Drops a key whose ticket was not accepted after all.
    fn forget(&self, key: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.answers.remove(key);
        inner.order.retain(|queued| queued != key);
    }
}

impl Default for RecentKeys {
    fn default() -> Self {
        RecentKeys::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).expect("in-memory write");
        encoder.finish().expect("in-memory finish")
    }

    #[test]
    fn gunzip_returns_the_exact_bytes() {
        let body = b"Order: 1\n\nproduct,product_id,price\nA,a,1\n";
        assert_eq!(gunzip(&gzip(body), 1024).expect("valid gzip"), Bytes::from_static(body));
    }

    #[test]
    fn a_gzip_bomb_is_refused_without_inflating_it_all() {
        let bomb = gzip(&vec![b'a'; 10 * 1024 * 1024]);
        assert_eq!(gunzip(&bomb, 64 * 1024).unwrap_err(), Refused::TooLarge);
    }

    #[test]
    fn garbage_announced_as_gzip_is_a_bad_request() {
        assert!(matches!(gunzip(b"not gzip at all", 1024).unwrap_err(), Refused::BadBody(_)));
    }

    #[test]
    fn a_repeated_key_gets_the_first_answer_until_forgotten() {
        let keys = RecentKeys::new();
        let first = Uuid::now_v7();
        assert_eq!(keys.claim("k", first, Status::Ok), None);
        assert_eq!(keys.claim("k", Uuid::now_v7(), Status::Partial), Some((first, Status::Ok)));
        keys.forget("k");
        assert_eq!(keys.claim("k", first, Status::Ok), None);
    }
}
