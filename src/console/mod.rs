//! The review desk: a second HTTP listener, for people, apart from the
//! webhook's — `admin_listen` (default `127.0.0.1:9099`; empty: none).
//! `ticket-ingest serve` runs it beside the webhook; `ticket-ingest
//! console` runs it alone, so that it can run on another host.
//!
//! # What it never does: slow ingestion down
//! - its own pool of `admin_db_pool_size` connections (2), never the
//!   writers' or the webhook's, so that people browsing cannot take a
//!   connection ingestion waits for;
//! - every connection carries `statement_timeout =
//!   admin_statement_timeout_ms`, and reads run in `READ ONLY`
//!   transactions ([`queries::read_only`]);
//! - listings are keyset-paginated on indexes that exist anyway or are
//!   partial (`queries` module docs): a page costs the same on a million
//!   tickets as on a hundred (`docs/console.md`);
//! - at most [`MAX_CONNECTIONS`] connections are served at once.
//!
//! # Layout
//! - `mod.rs` (here): the listener, the router, [`ConsoleError`] mapped to
//!   a status in one `match`, the login flow, [`escape_html`];
//! - [`auth`]: tokens, the session cookie, CSRF;
//! - [`queries`]: what is read, as typed results;
//! - [`actions`]: what is written (reviews, reprocessing, corrections);
//! - [`api`]: the JSON API under `/api/v1`;
//! - [`pages`]: the server-rendered pages and their forms; [`html`]: the
//!   layout, the raw body views and the SVG price chart they are made of.
//!
//! # Routes
//! `/healthz` answers anyone. `/login` opens a browser session (see
//! [`auth`]). Everything else needs a token: `/api/…` answers `401` JSON
//! without one, pages show the login form (`401`, HTML). `/`, `/tickets`,
//! `/tickets/{id}`, `/products`, `/products/{id}` are the pages, and
//! `POST /tickets/{id}/review|reprocess|correction` their forms
//! ([`pages`]). Inside `serve` the overview also reads the service's
//! admission, queue and WAL numbers through a [`LiveSource`]; alone, it
//! says they are not available.
//!
//! Whatever a ticket shows came from a sender nobody vouches for: JSON is
//! escaped by serde, HTML by [`escape_html`], every answer carries
//! `X-Content-Type-Options: nosniff`, and pages a `Content-Security-Policy`
//! that runs no script: `default-src 'none'` with `style-src
//! 'unsafe-inline'` for the one inline style sheet (no script source at
//! all, so an injected `<script>` or `onerror=` never runs even if an
//! escape were missed; a chart is inline SVG, no image request).

pub mod actions;
pub mod api;
pub mod auth;
pub mod html;
pub mod pages;
pub mod queries;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config::Settings;
use crate::http::HttpResponse;
use crate::listener::{serve_until, ConnectionLimits};
use crate::store;
use auth::Tokens;

/// Connections the console serves at once; more wait in the backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// How long the console waits for a pool connection before `503`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long shutdown waits for console requests to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What every console request handler shares.
pub struct ConsoleState {
    pub settings: Settings,
    /// The console's own pool on `database_url` (`admin_db_pool_size`,
    /// `statement_timeout`), for its writes: reviews, reprocessing,
    /// corrections.
    pub pool: PgPool,
    /// The pool its pages and listings read from: one more of the same
    /// size on `read_database_url` when set (a replica), else `pool`.
    pub read_pool: PgPool,
    /// Keep the pools on the primary when a URL lists several hosts.
    _followers: Vec<store::PrimaryFollower>,
    pub tokens: Tokens,
    /// The overview's counts, shared by every caller.
    pub stats: queries::StatsCache,
    /// The live numbers of the service the console runs in (`serve`);
    /// `None` when it runs alone (`ticket-ingest console`).
    pub live: Option<LiveSource>,
}

/// Reads the service's admission, queue and WAL numbers now.
pub type LiveSource = Arc<dyn Fn() -> crate::live::LiveNumbers + Send + Sync>;

/// A bound console listener, not yet serving.
pub struct Console {
    listener: TcpListener,
    state: Arc<ConsoleState>,
}

/// Why a request was not served, each mapped to a status in [`ConsoleError::status`].
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("a valid token is required: Authorization: Bearer <token>, or log in at /login")]
    Unauthorized,
    #[error("missing or wrong CSRF token: send the session's token in X-CSRF-Token (or the csrf_token form field)")]
    CsrfRefused,
    #[error("{0}")]
    BadRequest(String),
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("the database did not answer within admin_statement_timeout_ms: narrow the query")]
    Timeout,
    #[error("{0}")]
    Unavailable(String),
    /// The details go to the log, never into a response.
    #[error("the desk could not answer this request: the service's log says why")]
    Internal,
}

impl ConsoleError {
    pub fn status(&self) -> StatusCode {
        match self {
            ConsoleError::Unauthorized => StatusCode::UNAUTHORIZED,
            ConsoleError::CsrfRefused => StatusCode::FORBIDDEN,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ConsoleError::Conflict(_) => StatusCode::CONFLICT,
            ConsoleError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ConsoleError::Timeout | ConsoleError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ConsoleError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON answer: `{"error": "…"}`.
    pub fn json_response(&self) -> HttpResponse {
        let mut response = json(self.status(), &serde_json::json!({ "error": self.to_string() }));
        match self {
            ConsoleError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"ticket-ingest console\""));
            }
            ConsoleError::MethodNotAllowed(allow) => {
                response.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        response
    }
}

impl From<sqlx::Error> for ConsoleError {
    fn from(error: sqlx::Error) -> ConsoleError {
        let code = match &error {
            sqlx::Error::Database(database) => database.code().map(|code| code.into_owned()),
            _ => None,
        };
        match (code.as_deref(), &error) {
            // query_canceled: statement_timeout.
            (Some("57014"), _) => ConsoleError::Timeout,
            (Some("25006"), _) => ConsoleError::Unavailable(
                "the database is read-only (a replica?): reviews, reprocessing and corrections need the primary"
                    .to_string(),
            ),
            (Some("23505"), _) => {
                ConsoleError::Conflict("a concurrent change conflicts with this one: retry".to_string())
            }
            (_, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::Tls(_)) => {
                let unavailable = ConsoleError::Unavailable("database unavailable: try again".to_string());
                answered_with(&unavailable);
                tracing::warn!(message = "console query: database unavailable", %error);
                unavailable
            }
            _ => {
                answered_with(&ConsoleError::Internal);
                tracing::warn!(message = "console query failed", %error);
                ConsoleError::Internal
            }
        }
    }
}

/// Records the status `error` is answered with on the request's span
/// before the warning that says why, so that the warning carries it too.
fn answered_with(error: &ConsoleError) {
    tracing::Span::current().record("status", error.status().as_u16());
}

impl Console {
    /// Why the console cannot start with `settings`, if it cannot.
    pub fn not_started_reason(settings: &Settings) -> Option<&'static str> {
        if settings.admin_listen.is_none() {
            return Some("admin_listen is empty");
        }
        if settings.admin_tokens.is_empty() {
            return Some("no admin_tokens configured: set admin_tokens (or TICKET_INGEST_ADMIN_TOKENS=name:secret)");
        }
        None
    }

    /// The console `serve` runs beside the webhook: `None`, with the reason
    /// logged, when it is disabled or has no token.
    /// `live` reads the service's admission, queue and WAL numbers.
    pub async fn build(settings: &Settings, live: LiveSource) -> anyhow::Result<Option<Console>> {
        if let Some(reason) = Console::not_started_reason(settings) {
            tracing::warn!(message = "review desk (console) not started", reason);
            return Ok(None);
        }
        Console::bind(settings, Some(live)).await.map(Some)
    }

    /// The console of `ticket-ingest console`: an error when it cannot start.
    pub async fn build_alone(settings: &Settings) -> anyhow::Result<Console> {
        if let Some(reason) = Console::not_started_reason(settings) {
            anyhow::bail!("review desk (console) not started: {reason}");
        }
        Console::bind(settings, None).await
    }

    async fn bind(settings: &Settings, live: Option<LiveSource>) -> anyhow::Result<Console> {
        let tokens = Tokens::new(&settings.admin_tokens);
        let address = settings.admin_listen.context("admin_listen")?;
        let console_options = |options: PgConnectOptions| {
            options
                .application_name("ticket-ingest console")
                .options([("statement_timeout", settings.admin_statement_timeout_ms.to_string())])
        };
        let pool_options =
            || PgPoolOptions::new().max_connections(settings.admin_db_pool_size).acquire_timeout(ACQUIRE_TIMEOUT);
        let database = settings.database()?.clone().with_options(console_options);
        let (pool, follower) = store::lazy_pool(&database, pool_options());
        let mut followers = vec![follower];
        let read_pool = match settings.read_database_url {
            Some(_) => {
                let read_database = settings.read_database()?.clone().with_options(console_options);
                let (read_pool, read_follower) = store::lazy_pool(&read_database, pool_options());
                followers.push(read_follower);
                read_pool
            }
            None => pool.clone(),
        };
        let listener = TcpListener::bind(address).await.with_context(|| format!("binding {address} (admin_listen)"))?;
        let state = Arc::new(ConsoleState {
            settings: settings.clone(),
            pool,
            read_pool,
            _followers: followers,
            tokens,
            stats: queries::StatsCache::default(),
            live,
        });
        Ok(Console { listener, state })
    }

    /// The port actually bound (useful with `admin_listen = "127.0.0.1:0"`).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|address| address.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` fires, then lets requests finish for at
    /// most [`SHUTDOWN_GRACE`].
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Console { listener, state } = self;
        tracing::info!(message = "review desk (console) listening", address = %listener.local_addr()?, tokens = ?state.tokens.names().collect::<Vec<_>>());
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let limits = ConnectionLimits {
            header_read_timeout: state.settings.header_read_timeout(),
            max_headers: None,
            max_head_bytes: None,
        };
        let handler = {
            let state = Arc::clone(&state);
            move |_peer, request| route(Arc::clone(&state), request)
        };
        let connections = serve_until("console", &listener, slots, limits, handler, shutdown).await;
        drop(listener);
        if tokio::time::timeout(SHUTDOWN_GRACE, connections.shutdown()).await.is_err() {
            tracing::warn!(message = "console requests still running at shutdown are cut");
        }
        state.pool.close().await;
        state.read_pool.close().await;
        Ok(())
    }
}

/// Routes one console request; every answer gets the security headers.
/// Inside an INFO span `request`, as the webhook's: `method`, `route` (the
/// route's pattern, [`route_of`]), `status` once answered, and the ticket
/// `id` when the path names one.
pub async fn route(state: Arc<ConsoleState>, request: Request<Incoming>) -> Result<HttpResponse, Infallible> {
    let (route, ticket) = route_of(request.uri().path());
    let span = tracing::info_span!(
        "request",
        method = request.method().as_str(),
        route,
        status = tracing::field::Empty,
        id = tracing::field::Empty,
    );
    if let Some(ticket) = ticket {
        span.record("id", tracing::field::display(ticket));
    }
    let mut response = answer(&state, request).instrument(span.clone()).await;
    span.record("status", response.status().as_u16());
    let headers = response.headers_mut();
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The pattern of the route `path` asks for (one of a few dozen names:
/// ids become `{id}`, anything unknown is `other`), and the ticket id it
/// names, if any.
pub fn route_of(path: &str) -> (&'static str, Option<uuid::Uuid>) {
    let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
    let segments: [Option<&str>; 6] = std::array::from_fn(|_| segments.next());
    let ticket = |id: &str| uuid::Uuid::try_parse(id).ok();
    match segments {
        [Some("healthz"), None, ..] => ("/healthz", None),
        [Some("login"), None, ..] => ("/login", None),
        [Some("api"), Some("v1"), rest @ ..] => match rest {
            [Some("session"), None, ..] => ("/api/v1/session", None),
            [Some("stats"), None, ..] => ("/api/v1/stats", None),
            [Some("tickets"), None, ..] => ("/api/v1/tickets", None),
            [Some("tickets"), Some(id), None, ..] => ("/api/v1/tickets/{id}", ticket(id)),
            [Some("tickets"), Some(id), Some("raw"), None] => ("/api/v1/tickets/{id}/raw", ticket(id)),
            [Some("tickets"), Some(id), Some("review"), None] => ("/api/v1/tickets/{id}/review", ticket(id)),
            [Some("tickets"), Some(id), Some("reprocess"), None] => ("/api/v1/tickets/{id}/reprocess", ticket(id)),
            [Some("tickets"), Some(id), Some("correction"), None] => ("/api/v1/tickets/{id}/correction", ticket(id)),
            [Some("products"), None, ..] => ("/api/v1/products", None),
            [Some("products"), Some(_), None, ..] => ("/api/v1/products/{id}", None),
            _ => ("other", None),
        },
        [Some(""), None, ..] => ("/", None),
        [Some("tickets"), None, ..] => ("/tickets", None),
        [Some("tickets"), Some(id), None, ..] => ("/tickets/{id}", ticket(id)),
        [Some("tickets"), Some(id), Some("review"), None, ..] => ("/tickets/{id}/review", ticket(id)),
        [Some("tickets"), Some(id), Some("reprocess"), None, ..] => ("/tickets/{id}/reprocess", ticket(id)),
        [Some("tickets"), Some(id), Some("correction"), None, ..] => ("/tickets/{id}/correction", ticket(id)),
        [Some("products"), None, ..] => ("/products", None),
        [Some("products"), Some(_), None, ..] => ("/products/{id}", None),
        _ => ("other", None),
    }
}

async fn answer(state: &ConsoleState, request: Request<Incoming>) -> HttpResponse {
    let path = request.uri().path().to_string();
    let is_get = request.method() == Method::GET || request.method() == Method::HEAD;
    match path.as_str() {
        "/healthz" if is_get => return text(StatusCode::OK, "ok"),
        "/login" if is_get => return login(state, request.uri().query()),
        "/healthz" | "/login" => return ConsoleError::MethodNotAllowed("GET, HEAD").json_response(),
        _ => {}
    }
    let is_api = path == "/api" || path.starts_with("/api/");
    let Some(caller) = state.tokens.authenticate(request.headers()) else {
        if is_api {
            return ConsoleError::Unauthorized.json_response();
        }
        let next = match request.uri().query() {
            Some(query) => format!("{path}?{query}"),
            None => path.clone(),
        };
        return login_page(StatusCode::UNAUTHORIZED, &next, None);
    };
    if is_api {
        return api::route(state, &caller, request).await;
    }
    pages::route(state, &caller, request).await
}

/// `GET /login?token=…&next=…` (module docs of [`auth`]).
fn login(state: &ConsoleState, query: Option<&str>) -> HttpResponse {
    let mut token = None;
    let mut next = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "token" => token = Some(value.into_owned()),
            "next" => next = Some(value.into_owned()),
            _ => {}
        }
    }
    let next = next.unwrap_or_else(|| "/tickets".to_string());
    let Some(token) = token.filter(|token| !token.is_empty()) else {
        return login_page(StatusCode::OK, &next, None);
    };
    let Some(session) = state.tokens.open_session(&token, OffsetDateTime::now_utc()) else {
        return login_page(StatusCode::UNAUTHORIZED, &next, Some("Unknown token."));
    };
    let location = auth::local_path(&next);
    let mut response = html_response(StatusCode::SEE_OTHER, &page("Logged in", "<p>Logged in.</p>"));
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(location) {
        headers.insert(LOCATION, location);
    } else {
        headers.insert(LOCATION, HeaderValue::from_static("/"));
    }
    if let Ok(cookie) = HeaderValue::from_str(&auth::session_set_cookie(&session)) {
        headers.insert(SET_COOKIE, cookie);
    }
    response
}

fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> HttpResponse {
    let error = error.map(|error| format!("<p><strong>{}</strong></p>", escape_html(error))).unwrap_or_default();
    let body = format!(
        "{error}<form method=\"get\" action=\"/login\">\
         <label>Token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" autofocus></label>\
         <input type=\"hidden\" name=\"next\" value=\"{}\"> <button>Log in</button></form>\
         <p>The token is one of <code>admin_tokens</code>; <code>scripts/run.sh</code> prints a link that logs in.</p>",
        escape_html(auth::local_path(next))
    );
    html_response(status, &page("Review desk: log in", &body))
}

/// `text` with `& < > " '` replaced by entities: safe in element content
/// and in quoted attribute values.
pub fn escape_html(text: &str) -> String {
    escape(text, |escaped, control| {
        let _ =
            write!(escaped, "<span class=\"ctl\" title=\"a text direction control\">[U+{:04X}]</span>", control as u32);
    })
}

/// As [`escape_html`], for a form field's value (an `<input>`'s `value`,
/// a `<textarea>`): a text direction control stays itself once submitted,
/// written as a character reference.
pub fn escape_html_value(text: &str) -> String {
    escape(text, |escaped, control| {
        let _ = write!(escaped, "&#x{:X};", control as u32);
    })
}

/// The text direction controls (Unicode's bidi embeddings, overrides,
/// isolates and marks): shown as they are, they reorder what follows, so
/// that `Croi\u{202E}ssant` reads `Croitnass`.
fn is_direction_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn escape(text: &str, control: impl Fn(&mut String, char)) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c if is_direction_control(c) => control(&mut escaped, c),
            _ => escaped.push(c),
        }
    }
    escaped
}

/// Refuses text PostgreSQL cannot store or compare (`text` takes no NUL),
/// naming where it came from.
pub(crate) fn storable_text(name: &str, text: &str) -> Result<(), ConsoleError> {
    if text.contains('\0') {
        return Err(ConsoleError::BadRequest(format!("{}: must not contain a NUL byte", name.escape_debug())));
    }
    Ok(())
}

/// A whole HTML document without the caller's name (login, refusals
/// before authentication); `title` is escaped, `body` is taken as HTML.
fn page(title: &str, body: &str) -> String {
    html::document(title, None, body)
}

pub(crate) fn html_response(status: StatusCode, document: &str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(document.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert("content-security-policy", HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    response
}

pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> HttpResponse {
    let (status, body) = match serde_json::to_vec(value) {
        Ok(body) => (status, body),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": error.to_string() }).to_string().into_bytes(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, body: &str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// A ticket id from a path segment; anything else is no such ticket.
fn ticket_id(text: &str) -> Result<uuid::Uuid, ConsoleError> {
    uuid::Uuid::try_parse(text).map_err(|_| ConsoleError::NotFound("ticket"))
}

/// A product id from a path segment, percent-decoded as a query value is,
/// except `+` (which stays a plus).
fn percent_decoded(segment: &str) -> Result<String, ConsoleError> {
    let escaped = segment.replace('+', "%2B");
    let decoded: String = form_urlencoded::parse(format!("x={escaped}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    if decoded.is_empty() {
        return Err(ConsoleError::NotFound("product"));
    }
    storable_text("product", &decoded)?;
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_is_named_by_its_pattern_with_the_ticket_it_names() {
        let id = uuid::Uuid::now_v7();

        assert_eq!(route_of("/"), ("/", None));
        assert_eq!(route_of("/healthz"), ("/healthz", None));
        assert_eq!(route_of(&format!("/tickets/{id}")), ("/tickets/{id}", Some(id)));
        assert_eq!(route_of(&format!("/tickets/{id}/review")), ("/tickets/{id}/review", Some(id)));
        assert_eq!(route_of("/tickets/not-an-id"), ("/tickets/{id}", None));
        assert_eq!(route_of("/products/IZ8z"), ("/products/{id}", None));
        assert_eq!(route_of("/api/v1/tickets"), ("/api/v1/tickets", None));
        assert_eq!(route_of(&format!("/api/v1/tickets/{id}/raw")), ("/api/v1/tickets/{id}/raw", Some(id)));
        assert_eq!(route_of("/api/v1/products/a%2Fb"), ("/api/v1/products/{id}", None));
        assert_eq!(route_of("/api/v1/tickets/x/raw/more"), ("other", None));
        assert_eq!(route_of("/api/v2/tickets"), ("other", None));
        assert_eq!(route_of("/tickets/x/y/z/w/v/u"), ("other", None));
        assert_eq!(route_of("/wp-admin.php"), ("other", None));
    }

    #[test]
    fn html_special_characters_are_escaped() {
        assert_eq!(escape_html(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
