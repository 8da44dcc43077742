//! Every reason `POST /ticket` is refused, mapped to its status and message
//! in one place, and the response that says it (`503`s with `Retry-After`).

use bytes::Bytes;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::StatusCode;
use uuid::Uuid;

use super::{json, json_error, AppState, HttpResponse};
use crate::admission::Refusal;
use crate::config::Settings;
use crate::metrics::KindLabels;
use crate::signature::SignatureError;
use crate::wal::WalError;

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

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Refused {
        match refusal {
            Refusal::Exhausted => Refused::BudgetExhausted,
            Refusal::Closed => Refused::ShuttingDown,
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
                super::body::BODY_RATE_GRACE.as_secs()
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

/// The response for `refused`, counted in the metrics.
pub(super) fn refusal(state: &AppState, refused: &Refused) -> HttpResponse {
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
