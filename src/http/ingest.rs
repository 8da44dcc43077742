//! `POST /ticket`: the body is received and parsed, takes an admission
//! permit for what it costs, claims its idempotency key (a repeat waits for
//! its first's answer), and is handed over as the ack mode says; the
//! answer is `202` once the ticket is as safe as that mode promises.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, StatusCode};
use serde::Serialize;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use super::body::{only_chunked_transfer_coding, read_body};
use super::refused::refusal;
use super::{json, json_error, AppState, HttpResponse, Refused, TICKET_BYTES};
use crate::admission::{Permit, Refusal};
use crate::config::AckMode;
use crate::idempotency::{
    relate, Answer, Claim, Claimed, FirstTicket, FirstVanished, Repeat, Repeated, TicketOnItsWay,
};
use crate::job::{Job, Stored};
use crate::metrics::StatusLabels;
use crate::store::StoredKey;
use crate::ticket::{NewTicket, Problem, Status};
use crate::wal::WalRecord;

/// Longest accepted `Idempotency-Key` / `webhook-id`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The `202` body.
#[derive(Serialize)]
struct Accepted<'a> {
    id: Uuid,
    status: Status,
    problems: &'a [Problem],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

pub(super) async fn ingest(state: &Arc<AppState>, peer: IpAddr, request: Request<Incoming>) -> HttpResponse {
    match accept(state, peer, request).await {
        Ok(response) => response,
        Err(refused) => refusal(state, &refused),
    }
}

/// The happy path of `POST /ticket`, from the body to `202`.
async fn accept(state: &Arc<AppState>, peer: IpAddr, request: Request<Incoming>) -> Result<HttpResponse, Refused> {
    let (ticket, permit) = receive(state, peer, request).await?;
    let claim = match ticket.idempotency_key.clone() {
        None => None,
        // A repeat is answered here; dropping its ticket and permit
        // stores nothing.
        Some(key) => match claim_key(state, &key, &ticket).await {
            Ok(claim) => Some(claim),
            Err(answered) => return answered,
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
    match claim {
        None => hand_over(state, ticket, permit, None).await?,
        Some(claim) => settle(state, claim, answer, ticket, permit).await?,
    }
    state.metrics.tickets_accepted.get_or_create(&StatusLabels { status: answer.status.as_str() }).inc();
    Ok(json(StatusCode::ACCEPTED, Bytes::from(body)))
}

/// The ticket of `request`: its body read into the reception budget,
/// checked (signature), parsed, and holding an admission permit for what
/// it costs. Each budget refuses with `503` as soon as it cannot take it.
async fn receive(state: &AppState, peer: IpAddr, request: Request<Incoming>) -> Result<(NewTicket, Permit), Refused> {
    let (parts, body) = request.into_parts();
    let idempotency_key = idempotency_key(&parts.headers)?;
    only_chunked_transfer_coding(&parts.headers)?;
    // Not worth receiving a body that would be refused: check, don't reserve.
    if !state.admission.has_room_for(TICKET_BYTES) {
        return Err(Refused::from(if state.admission.is_closed() { Refusal::Closed } else { Refusal::Exhausted }));
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
    let mut permit = state.admission.try_acquire()?;
    permit.resize(TICKET_BYTES + ticket.raw.len() + ticket.parsed.heap_bytes())?;
    // The permit holds the body from here on: `receiving` is dropped.
    Ok((ticket, permit))
}

/// Claims `key` for `ticket`: `Ok` when it is the first with it, or the
/// answer to give when it repeats a ticket this process remembers, or one
/// the database holds under the key.
async fn claim_key(
    state: &AppState,
    key: &str,
    ticket: &NewTicket,
) -> Result<Claim<Refused>, Result<HttpResponse, Refused>> {
    loop {
        match state.recent_keys.claim(key, ticket.id, &ticket.raw) {
            Claimed::First(claim) => match stored_earlier(state, key).await {
                None => return Ok(claim),
                Some(stored) => {
                    // Stored before this process remembers: a repeat of that ticket.
                    let first = Answer { id: stored.ticket_id, status: stored.status };
                    return Err(answer_repeated(state, claim.stored_earlier(first, stored.body_sha256)));
                }
            },
            // A repeat stores nothing: it only waits for the first's
            // answer, unless the first's ticket turns out gone.
            Claimed::Repeat(repeat) => match answer_repeat(state, key, repeat).await {
                Some(answered) => return Err(answered),
                None => continue,
            },
        }
    }
}

/// Hands the first ticket of a key over in a task of its own, so that the
/// claim is settled with the ticket's real outcome even if this request is
/// dropped (its client hung up while the ticket is being made safe): its
/// repeats wait for that outcome, not for the connection.
async fn settle(
    state: &Arc<AppState>,
    claim: Claim<Refused>,
    answer: Answer,
    ticket: NewTicket,
    permit: Permit,
) -> Result<(), Refused> {
    let state = Arc::clone(state);
    // In the request's span: what it logs names the request and its ticket.
    let settling = tokio::spawn(
        async move {
            let on_its_way = TicketOnItsWay::new();
            let handed_over = hand_over(&state, ticket, permit, Some(on_its_way.clone())).await;
            match &handed_over {
                Ok(()) => claim.succeed(answer, &on_its_way),
                Err(refused) => claim.fail(refused.clone()),
            }
            handed_over
        }
        .in_current_span(),
    );
    settling.await.unwrap_or(Err(Refused::ShuttingDown))
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
            let record = WalRecord::from(&ticket);
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

fn accepted(body: &Accepted<'_>) -> HttpResponse {
    match serde_json::to_vec(body) {
        Ok(bytes) => json(StatusCode::ACCEPTED, Bytes::from(bytes)),
        Err(error) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}
