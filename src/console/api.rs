//! The JSON API under `/api/v1`, documented in `openapi.yaml`: requests
//! parsed into the filters of [`queries`], results serialized as they are.
//!
//! Query parameters are checked: an unknown one, or a value that does not
//! parse, is a `400` naming it, rather than a filter silently ignored.
//! POSTs made with the session cookie must carry `X-CSRF-Token`
//! ([`auth`](super::auth)); `GET /api/v1/session` tells a caller its name
//! and that token (`null` with a Bearer token, which needs none).

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_DISPOSITION, CONTENT_TYPE, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::actions::{self, Decision};
use super::auth::{Caller, CSRF_HEADER};
use super::queries::{self, ProductFilter, StatsWindow, TicketCursor, TicketFilter, TicketStatus};
use super::{json, ConsoleError, ConsoleState};
use super::{percent_decoded, ticket_id};
use crate::http::HttpResponse;

/// Largest JSON body of a review.
const MAX_REVIEW_BYTES: usize = 16 * 1024;

/// Answers one authenticated `/api/…` request.
pub async fn route(state: &ConsoleState, caller: &Caller, request: Request<Incoming>) -> HttpResponse {
    match handle(state, caller, request).await {
        Ok(response) => response,
        Err(error) => error.json_response(),
    }
}

async fn handle(
    state: &ConsoleState,
    caller: &Caller,
    request: Request<Incoming>,
) -> Result<HttpResponse, ConsoleError> {
    let path = request.uri().path().to_string();
    let rest = path.strip_prefix("/api/v1/").ok_or(ConsoleError::NotFound("route"))?;
    let segments: Vec<&str> = rest.split('/').collect();
    let mut params = Params::parse(request.uri().query())?;
    let method = request.method().clone();
    let pool = &state.pool;
    match segments.as_slice() {
        ["session"] => {
            only_get(&method)?;
            params.finish()?;
            let session = serde_json::json!({ "name": caller.name, "csrf_token": caller.csrf_token() });
            Ok(json(StatusCode::OK, &session))
        }
        ["tickets"] => {
            only_get(&method)?;
            let filter = ticket_filter(&mut params)?;
            let mut transaction = queries::read_only(&state.read_pool).await?;
            Ok(json(StatusCode::OK, &queries::list_tickets(&mut transaction, &filter).await?))
        }
        ["tickets", id] => {
            only_get(&method)?;
            params.finish()?;
            let id = ticket_id(id)?;
            let mut transaction = queries::read_only(&state.read_pool).await?;
            let ticket = queries::ticket(&mut transaction, id).await?.ok_or(ConsoleError::NotFound("ticket"))?;
            Ok(json(StatusCode::OK, &ticket))
        }
        ["tickets", id, "raw"] => {
            only_get(&method)?;
            params.finish()?;
            let id = ticket_id(id)?;
            let mut transaction = queries::read_only(&state.read_pool).await?;
            let raw = queries::raw_ticket(&mut transaction, id).await?.ok_or(ConsoleError::NotFound("ticket"))?;
            Ok(raw_response(id, raw))
        }
        ["tickets", id, "review"] => {
            only_post(&method, caller, &request)?;
            params.finish()?;
            let id = ticket_id(id)?;
            let body = read_body(request.into_body(), MAX_REVIEW_BYTES).await?;
            let review: ReviewRequest =
                serde_json::from_slice(&body).map_err(|error| ConsoleError::BadRequest(format!("body: {error}")))?;
            let recorded = actions::record_review(pool, id, &caller.name, review.decision, &review.note).await?;
            Ok(json(StatusCode::CREATED, &recorded))
        }
        ["tickets", id, "reprocess"] => {
            only_post(&method, caller, &request)?;
            params.finish()?;
            let id = ticket_id(id)?;
            Ok(json(StatusCode::OK, &actions::reprocess_ticket(pool, id).await?))
        }
        ["tickets", id, "correction"] => {
            only_post(&method, caller, &request)?;
            params.finish()?;
            let id = ticket_id(id)?;
            let raw = read_body(request.into_body(), state.settings.max_body_bytes).await?;
            let corrected = actions::correct_ticket(pool, id, raw).await?;
            let mut response = json(StatusCode::CREATED, &corrected);
            if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/tickets/{}", corrected.id)) {
                response.headers_mut().insert(LOCATION, location);
            }
            Ok(response)
        }
        ["products"] => {
            only_get(&method)?;
            let filter = ProductFilter { q: params.take("q"), after: params.take("after"), limit: limit(&mut params)? };
            params.finish()?;
            let mut transaction = queries::read_only(&state.read_pool).await?;
            Ok(json(StatusCode::OK, &queries::list_products(&mut transaction, &filter).await?))
        }
        ["products", product_id] => {
            only_get(&method)?;
            params.finish()?;
            let product_id = percent_decoded(product_id)?;
            let mut transaction = queries::read_only(&state.read_pool).await?;
            let product =
                queries::product(&mut transaction, &product_id).await?.ok_or(ConsoleError::NotFound("product"))?;
            Ok(json(StatusCode::OK, &product))
        }
        ["stats"] => {
            only_get(&method)?;
            let window = match params.take("window") {
                None => StatsWindow::Day,
                Some(text) => StatsWindow::parse(&text)
                    .ok_or_else(|| ConsoleError::BadRequest("window: 1h, 24h or 7d".to_string()))?,
            };
            params.finish()?;
            Ok(json(StatusCode::OK, &state.stats.get(&state.read_pool, window).await?))
        }
        _ => Err(ConsoleError::NotFound("route")),
    }
}

/// `POST /api/v1/tickets/{id}/review`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewRequest {
    decision: Decision,
    #[serde(default)]
    note: String,
}

fn only_get(method: &Method) -> Result<(), ConsoleError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(ConsoleError::MethodNotAllowed("GET, HEAD"))
    }
}

/// A POST, with the CSRF token if it came with the session cookie.
fn only_post(method: &Method, caller: &Caller, request: &Request<Incoming>) -> Result<(), ConsoleError> {
    if method != Method::POST {
        return Err(ConsoleError::MethodNotAllowed("POST"));
    }
    let presented = request.headers().get(CSRF_HEADER).and_then(|value| value.to_str().ok());
    caller.check_csrf(presented)
}

fn ticket_filter(params: &mut Params) -> Result<TicketFilter, ConsoleError> {
    let status = match params.take("status") {
        None => None,
        Some(text) => Some(
            TicketStatus::parse(&text)
                .ok_or_else(|| ConsoleError::BadRequest("status: ok, partial or invalid".to_string()))?,
        ),
    };
    let after = match params.take("after") {
        None => None,
        Some(text) => Some(
            TicketCursor::parse(&text)
                .ok_or_else(|| ConsoleError::BadRequest("after: not a cursor given as next".to_string()))?,
        ),
    };
    let filter = TicketFilter {
        status,
        problem: params.take("problem"),
        order_id: params.take("order"),
        since: time_param(params, "since")?,
        until: time_param(params, "until")?,
        after,
        limit: limit(params)?,
    };
    params.finish()?;
    Ok(filter)
}

fn time_param(params: &mut Params, name: &'static str) -> Result<Option<OffsetDateTime>, ConsoleError> {
    let Some(text) = params.take(name) else { return Ok(None) };
    queries::bounded_time(&text).map(Some).ok_or_else(|| ConsoleError::BadRequest(queries::time_error(name)))
}

fn limit(params: &mut Params) -> Result<i64, ConsoleError> {
    let Some(text) = params.take("limit") else { return Ok(queries::DEFAULT_LIMIT) };
    match text.parse::<i64>() {
        Ok(limit) if (1..=queries::MAX_LIMIT).contains(&limit) => Ok(limit),
        _ => Err(ConsoleError::BadRequest(format!("limit: from 1 to {}", queries::MAX_LIMIT))),
    }
}

async fn read_body(body: Incoming, max: usize) -> Result<Bytes, ConsoleError> {
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(ConsoleError::TooLarge(max)),
        Err(error) => Err(ConsoleError::BadRequest(format!("body could not be read: {error}"))),
    }
}

/// The stored bytes, exactly, as a download: never rendered by a browser.
fn raw_response(id: Uuid, raw: Vec<u8>) -> HttpResponse {
    let mut response = Response::new(http_body_util::Full::new(Bytes::from(raw)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(disposition) = HeaderValue::from_str(&format!("attachment; filename=\"ticket-{id}.txt\"")) {
        headers.insert(CONTENT_DISPOSITION, disposition);
    }
    response
}

/// The query parameters of a request, taken one by one; any left over is
/// unknown.
struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    fn parse(query: Option<&str>) -> Result<Params, ConsoleError> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        for (key, value) in &pairs {
            super::storable_text(key, key)?;
            super::storable_text(key, value)?;
        }
        Ok(Params { pairs })
    }

    /// The value of `name` (the last one given), `None` when absent or empty.
    fn take(&mut self, name: &str) -> Option<String> {
        let mut value = None;
        self.pairs.retain(|(key, given)| {
            if key == name {
                value = Some(given.clone());
                false
            } else {
                true
            }
        });
        value.filter(|value| !value.is_empty())
    }

    fn finish(&self) -> Result<(), ConsoleError> {
        match self.pairs.first() {
            None => Ok(()),
            Some((key, _)) => Err(ConsoleError::BadRequest(format!("unknown parameter {key}"))),
        }
    }
}
