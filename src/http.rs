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

use std::convert::Infallible;
use std::io::Read;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Sender;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT, ALLOW, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
    TRANSFER_ENCODING,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use crate::admission::{Admission, Permit, Receiving, Reception, Refusal};
use crate::config::{AckMode, Settings};
use crate::idempotency::{
    relate, Answer, Claimed, FirstTicket, FirstVanished, RecentKeys, Repeat, Repeated, TicketOnItsWay,
};
use crate::job::{Job, Stored};
use crate::key_lookup::KeyLookup;
use crate::metrics::{self, KindLabels, Metrics, StatusLabels};
use crate::signature::{SignatureError, Verifier};
use crate::store::StoredKey;
use crate::ticket::{NewTicket, Problem, Status};
use crate::wal::{Wal, WalError, WalRecord};

/// gzip adds a few bytes to incompressible data: leave room for them on the
/// encoded body, the decoded one is held to `max_body_bytes` exactly.
const GZIP_SLACK: usize = 1024;
/// Longest accepted `Idempotency-Key` / `webhook-id`.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// What a ticket in flight takes besides its body and parsed lines: the
/// job, the queue slot, the WAL record, the response.
const TICKET_BYTES: usize = 1024;
/// How long `/readyz` waits for the database.
pub const READY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a request waits for the database to say whether its
/// idempotency key was stored before.
pub const KEY_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// A body may arrive at any pace during its first seconds; after that it
/// must have averaged `body_min_bytes_per_s`.
const BODY_RATE_GRACE: Duration = Duration::from_secs(2);
/// What `/readyz` means by a typical ticket: a 4 KiB body, parsed.
const TYPICAL_TICKET_BYTES: usize = TICKET_BYTES + 4 * 1024;

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

/// Why a `POST /ticket` was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    EmptyBody,
    TooLarge,
    BodyTimeout,
    /// The body arrived slower than `body_min_bytes_per_s`.
    BodyTooSlow,
    /// A `Transfer-Encoding` other than `chunked`.
    UnsupportedTransferCoding,
    BadBody(String),
    UnsupportedEncoding,
    BadIdempotencyKey(&'static str),
    BadSignature(SignatureError),
    /// The key was first used for another body, stored as this ticket.
    KeyConflict(Uuid),
    /// The first request with this key went away before it was answered.
    FirstVanished,
    /// PostgreSQL refused the ticket even as `invalid` (`ack = commit`).
    NotStored,
    BudgetExhausted,
    /// Too many bytes of bodies being received, in all or from this peer.
    ReceptionExhausted,
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
            Refused::KeyConflict(_) => StatusCode::CONFLICT,
            Refused::BodyTimeout | Refused::BodyTooSlow => StatusCode::REQUEST_TIMEOUT,
            Refused::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Refused::UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refused::FirstVanished
            | Refused::NotStored
            | Refused::BudgetExhausted
            | Refused::ReceptionExhausted
            | Refused::WalFull
            | Refused::WalFailed
            | Refused::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn message(&self, settings: &Settings) -> String {
        match self {
            Refused::EmptyBody => "empty body: send one ticket per request".to_string(),
            Refused::TooLarge => format!("body larger than {} bytes (after gzip decoding)", settings.max_body_bytes),
            Refused::BodyTimeout => format!("body not received within {} ms", settings.body_read_timeout_ms),
            Refused::BodyTooSlow => format!(
                "body arrived slower than {} bytes/s (after the first {} s)",
                settings.body_min_bytes_per_s,
                BODY_RATE_GRACE.as_secs()
            ),
            Refused::UnsupportedTransferCoding => {
                "Transfer-Encoding other than chunked is not implemented: send the body as is, or use Content-Encoding: gzip".to_string()
            }
            Refused::BadBody(reason) => reason.clone(),
            Refused::UnsupportedEncoding => "Content-Encoding must be gzip or identity".to_string(),
            Refused::BadIdempotencyKey(reason) => format!("invalid idempotency key: {reason}"),
            Refused::BadSignature(reason) => format!("webhook signature refused: {reason}"),
            Refused::KeyConflict(_) => {
                "idempotency key already used for another body: the first ticket (id) stands, this one was not stored"
                    .to_string()
            }
            Refused::FirstVanished => {
                "the first request with this idempotency key ended without an answer, retry later".to_string()
            }
            Refused::NotStored => "the ticket could not be stored, retry later".to_string(),
            Refused::BudgetExhausted => "too many tickets (or bytes of tickets) in flight, retry later".to_string(),
            Refused::ReceptionExhausted => "too many bytes of bodies being received, retry later".to_string(),
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
pub async fn route(state: Arc<AppState>, peer: IpAddr, request: Request<Incoming>) -> Result<HttpResponse, Infallible> {
    let started = Instant::now();
    let method = request.method().clone();
    let (route, response) = match request.uri().path() {
        "/ticket" if method == Method::POST => {
            state.recent_refusals.posted();
            let span = tracing::debug_span!("request", route = "/ticket", id = tracing::field::Empty);
            ("/ticket", ingest(&state, peer, request).instrument(span).await)
        }
        "/ticket" => ("/ticket", method_not_allowed("POST")),
        "/ping" if is_get(&method) => ("/ping", text(StatusCode::OK, "Pong")),
        "/healthz" if is_get(&method) => ("/healthz", health(&state)),
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

async fn ingest(state: &Arc<AppState>, peer: IpAddr, request: Request<Incoming>) -> HttpResponse {
    match accept(state, peer, request).await {
        Ok(response) => response,
        Err(refused) => refusal(state, &refused),
    }
}

/// The happy path of `POST /ticket`, from the body to `202`.
async fn accept(state: &Arc<AppState>, peer: IpAddr, request: Request<Incoming>) -> Result<HttpResponse, Refused> {
    let (parts, body) = request.into_parts();
    let idempotency_key = idempotency_key(&parts.headers)?;
    only_chunked_transfer_coding(&parts.headers)?;
    // Not worth receiving a body that would be refused: check, don't reserve.
    if !state.admission.has_room_for(TICKET_BYTES) {
        return Err(refused_by_budget(if state.admission.is_closed() { Refusal::Closed } else { Refusal::Exhausted }));
    }
    let mut receiving = state.reception.start(peer);
    let raw = read_body(&state.settings, &parts.headers, body, &mut receiving).await?;
    if raw.is_empty() {
        return Err(Refused::EmptyBody);
    }
    if let Some(verifier) = &state.verifier {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        verifier.verify(&parts.headers, &raw, now).map_err(Refused::BadSignature)?;
    }
    let ticket = NewTicket::arrived(raw, idempotency_key);
    tracing::Span::current().record("id", tracing::field::display(ticket.id));
    let mut permit = state.admission.try_acquire().map_err(refused_by_budget)?;
    permit.resize(TICKET_BYTES + ticket.raw.len() + ticket.parsed.heap_bytes()).map_err(refused_by_budget)?;
    // The permit holds the body from here on.
    drop(receiving);

    let claim = match ticket.idempotency_key.clone() {
        None => None,
        Some(key) => loop {
            match state.recent_keys.claim(&key, ticket.id, &ticket.raw) {
                Claimed::First(claim) => match stored_earlier(state, &key).await {
                    None => break Some(claim),
                    Some(stored) => {
                        // Stored before this process remembers: a repeat of that ticket.
                        drop((ticket, permit));
                        let first = Answer { id: stored.ticket_id, status: stored.status };
                        return answer_repeated(state, claim.stored_earlier(first, stored.body_sha256));
                    }
                },
                // A repeat stores nothing: it only waits for the first's
                // answer, unless the first's ticket turns out gone.
                Claimed::Repeat(repeat) => match answer_repeat(state, &key, repeat).await {
                    Some(answered) => {
                        drop((ticket, permit));
                        return answered;
                    }
                    None => continue,
                },
            }
        },
    };
    let answer = Answer { id: ticket.id, status: ticket.parsed.status };
    let body = serde_json::to_vec(&Accepted {
        id: answer.id,
        status: answer.status,
        problems: &ticket.parsed.problems,
        duplicate: false,
    })
    .map_err(|error| Refused::BadBody(error.to_string()))?;
    let handed_over = match claim {
        None => hand_over(state, ticket, permit, None).await,
        Some(claim) => {
            // In a task of its own, so that the claim is settled with the
            // ticket's real outcome even if this request is dropped (its
            // client hung up while the ticket is being made safe): its
            // repeats wait for that outcome, not for the connection.
            let state = Arc::clone(state);
            let settling = tokio::spawn(async move {
                let on_its_way = TicketOnItsWay::new();
                let handed_over = hand_over(&state, ticket, permit, Some(on_its_way.clone())).await;
                match &handed_over {
                    Ok(()) => claim.succeed(answer, &on_its_way),
                    Err(refused) => claim.fail(refused.clone()),
                }
                handed_over
            });
            settling.await.unwrap_or(Err(Refused::ShuttingDown))
        }
    };
    handed_over?;
    state.metrics.tickets_accepted.get_or_create(&StatusLabels { status: answer.status.as_str() }).inc();
    Ok(json(StatusCode::ACCEPTED, Bytes::from(body)))
}

/// A repeated key is answered like its first request, once that one has
/// its answer: never a `202` before the first ticket is as safe as the ack
/// mode promises. Once the first ticket is written, the key row is the
/// truth: the ticket it stands for (another instance's, when two took the
/// key at once), or, when it stands for no stored ticket any more (a
/// partition dropped by the retention, the key expired), `None`: the key
/// is forgotten and the request is a first one. When the database cannot
/// be asked, memory answers.
async fn answer_repeat(state: &AppState, key: &str, repeat: Repeat<Refused>) -> Option<Result<HttpResponse, Refused>> {
    let body_hash = repeat.body_hash();
    let (repeated, first_ticket) = match repeat.outcome().await {
        Ok(Ok(seen)) => seen,
        Ok(Err(refused)) => return Some(Err(refused)),
        Err(FirstVanished) => return Some(Err(Refused::FirstVanished)),
    };
    if first_ticket == FirstTicket::OnItsWay {
        return Some(answer_repeated(state, repeated));
    }
    match state.key_lookup.stored(key).await {
        Ok(Some(stored)) => {
            let first = Answer { id: stored.ticket_id, status: stored.status };
            state.recent_keys.stands_for(key, first, stored.body_sha256);
            Some(answer_repeated(state, relate(body_hash, first, stored.body_sha256)))
        }
        Ok(None) => {
            state.recent_keys.forget_written(key, repeated.first().id);
            None
        }
        Err(failure) => {
            tracing::debug!(message = "repeat answered from memory: the database did not answer", %failure);
            Some(answer_repeated(state, repeated))
        }
    }
}

/// The same body again: `202` with the first id; another body: `409`.
fn answer_repeated(state: &AppState, repeated: Repeated) -> Result<HttpResponse, Refused> {
    match repeated {
        Repeated::Duplicate(first) => {
            state.metrics.duplicates.inc();
            Ok(accepted(&Accepted { id: first.id, status: first.status, problems: &[], duplicate: true }))
        }
        Repeated::Conflict(first) => Err(Refused::KeyConflict(first.id)),
    }
}

/// The ticket the database holds under `key`, for a key this process does
/// not remember (asked with the other requests' keys, [`KeyLookup`]). When
/// the database cannot say (unreachable, or slower than
/// [`KEY_LOOKUP_TIMEOUT`]), the keys in memory are all there is to go on:
/// the ticket is accepted as the first with its key, and counted. Should
/// the key turn out to be taken when the ticket is written, the ticket is
/// stored all the same (it was answered `202` with its id) and the key
/// keeps answering the first one (`store::Written::keys_taken`).
async fn stored_earlier(state: &AppState, key: &str) -> Option<StoredKey> {
    let failure = match state.key_lookup.stored(key).await {
        Ok(found) => return found,
        Err(failure) => failure,
    };
    state.metrics.idempotency_keys_unchecked.inc();
    tracing::debug!(message = "idempotency key not looked up: the database did not answer", %failure);
    None
}

fn refused_by_budget(refusal: Refusal) -> Refused {
    match refusal {
        Refusal::Exhausted => Refused::BudgetExhausted,
        Refusal::Closed => Refused::ShuttingDown,
    }
}

/// Makes the ticket as safe as the ack mode promises, and queues it for
/// the writers. `Ok` means the request may be answered `202`.
async fn hand_over(
    state: &AppState,
    ticket: NewTicket,
    permit: Permit,
    on_its_way: Option<TicketOnItsWay>,
) -> Result<(), Refused> {
    match state.settings.ack {
        AckMode::Memory => enqueue(state, Job::new(ticket, permit).on_its_way(on_its_way)),
        AckMode::Commit => {
            let (job, outcome) = Job::awaited(ticket, permit);
            let job = job.on_its_way(on_its_way);
            enqueue(state, job)?;
            // Writers answer every ticket they take; a closed channel means
            // the process is going down before the commit.
            match outcome.await {
                Ok(Stored::Committed) => Ok(()),
                Ok(Stored::Refused) => Err(Refused::NotStored),
                Ok(Stored::Abandoned) | Err(_) => Err(Refused::ShuttingDown),
            }
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
            let job = Job::new(ticket, permit).on_its_way(on_its_way);
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

/// Reads the whole body, gunzipping it when `Content-Encoding: gzip` says
/// so. Every byte received is held in the reception budget as it arrives;
/// the body must arrive within `body_read_timeout_ms`, and once
/// [`BODY_RATE_GRACE`] has passed, at `body_min_bytes_per_s` on average.
async fn read_body(
    settings: &Settings,
    headers: &HeaderMap,
    mut body: Incoming,
    receiving: &mut Receiving,
) -> Result<Bytes, Refused> {
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
    let started = tokio::time::Instant::now();
    let last_chance = started + settings.body_read_timeout();
    let min_rate = settings.body_min_bytes_per_s.max(1) as f64;
    // Grown as bytes arrive (a first frame that is the whole body is
    // allocated exactly), never to what the client declares.
    let mut received: Vec<u8> = Vec::new();
    loop {
        // By then the body must have averaged `min_rate` after the grace.
        let rate_deadline = started + BODY_RATE_GRACE + Duration::from_secs_f64(received.len() as f64 / min_rate);
        let deadline = rate_deadline.min(last_chance);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) if deadline == last_chance => return Err(Refused::BodyTimeout),
            Err(_) => return Err(Refused::BodyTooSlow),
            Ok(None) => break,
            Ok(Some(Err(error))) => return Err(Refused::BadBody(format!("body could not be read: {error}"))),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        if received.len() + data.len() > limit {
            return Err(Refused::TooLarge);
        }
        received.reserve(data.len());
        let lingering = !hyper::body::Body::is_end_stream(&body);
        receiving.hold(received.capacity(), lingering).map_err(|_| Refused::ReceptionExhausted)?;
        received.extend_from_slice(&data);
    }
    if gzip {
        return gunzip(&received, settings.max_body_bytes);
    }
    // What is kept is the body's length, not what the buffer grew to.
    received.shrink_to_fit();
    Ok(Bytes::from(received))
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
    let message = refused.message(&state.settings);
    let mut response = match refused {
        Refused::KeyConflict(first_id) => {
            json(status, Bytes::from(serde_json::json!({ "error": message, "id": first_id }).to_string()))
        }
        _ => json_error(status, &message),
    };
    if status == StatusCode::UNAUTHORIZED {
        state.metrics.signature_failures.inc();
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        if matches!(refused, Refused::BudgetExhausted | Refused::ReceptionExhausted) {
            state.recent_refusals.refused();
        }
        let kind = match refused {
            Refused::BudgetExhausted => "budget",
            Refused::ReceptionExhausted => "reception",
            Refused::WalFull => "wal_full",
            Refused::WalFailed => "wal_error",
            Refused::NotStored => "not_stored",
            Refused::FirstVanished => "first_vanished",
            _ => "shutdown",
        };
        state.metrics.refused.get_or_create(&KindLabels { kind }).inc();
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(state.settings.retry_after_s));
    }
    response
}

/// Ready means "would accept a typical ticket now": not shutting down,
/// room in both budgets, a usable write-ahead log (`ack = wal`), and a
/// database that answers.
/// `200` while the process can do its work once the database answers;
/// `503` while the database refuses it for good (wrong password, unknown
/// role or database): only an operator can fix that, and an orchestrator
/// that restarts the process makes it loud (a restart refuses to start).
fn health(state: &AppState) -> HttpResponse {
    match state.refusal.get() {
        None => text(StatusCode::OK, "ok"),
        Some(refusal) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the database refuses this service, fix database_url or the database: {refusal}"),
        ),
    }
}

async fn readiness(state: &AppState) -> HttpResponse {
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
    if !state.schema_ready.load(std::sync::atomic::Ordering::Acquire) {
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
fn metrics_page(state: &AppState, headers: &HeaderMap) -> HttpResponse {
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
}
