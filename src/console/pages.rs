//! The server-rendered pages: readable without JavaScript, the same data
//! and filters as the JSON API ([`super::api`]), from the same
//! [`queries`] and [`actions`].
//!
//! | route | page |
//! |---|---|
//! | `GET /` | overview: counts by status and problem code, ingest rate, live queue and WAL numbers when inside `serve` |
//! | `GET /tickets?status=&problem=&order=&since=&until=&after=` | ticket list, filters in a GET form, a next-page link (keyset cursor) |
//! | `GET /tickets/{id}` | one ticket: raw body by line beside its problems (hex dump if binary), lines, reviews, forms |
//! | `POST /tickets/{id}/review` · `/reprocess` · `/correction` | the forms; `303` back to the ticket with `?done=…` |
//! | `GET /products?q=&after=` | the catalogue, searched |
//! | `GET /products/{product_id}` | one product: its price history as an SVG chart, the names it was seen under |
//!
//! # Forms
//! Each form is `application/x-www-form-urlencoded` and carries
//! [`CSRF_FIELD`] (the session's token, [`Caller::csrf_token`]); a POST
//! without it is refused (`403`). A successful one answers `303 See Other`
//! to the ticket page with `?done=<outcome>`, which the page turns into a
//! fixed sentence (Post/Redirect/Get: reloading the page repeats nothing).
//! A refused one (unknown ticket, note too long, already corrected)
//! answers an error page with the status and a link back.
//!
//! Every value that comes from a ticket or a request goes through
//! [`escape_html`], in text and in attributes alike.

use std::collections::BTreeMap;
use std::fmt::Write;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, LOCATION};
use hyper::{Method, Request, StatusCode};
use time::OffsetDateTime;
use uuid::Uuid;

use super::actions::{self, Decision};
use super::auth::{Caller, CSRF_FIELD};
use super::html::{self, document, query_string};
use super::queries::{self, ProductFilter, StatsWindow, TicketCursor, TicketFilter, TicketStatus};
use super::{escape_html, escape_html_value, percent_decoded, ticket_id, ConsoleError, ConsoleState};
use crate::http::HttpResponse;

/// Largest review form body.
const MAX_REVIEW_FORM_BYTES: usize = 16 * 1024;

/// Answers one authenticated page request.
pub async fn route(state: &ConsoleState, caller: &Caller, request: Request<Incoming>) -> HttpResponse {
    match handle(state, caller, request).await {
        Ok(response) => response,
        Err(error) => error_page(caller, &error),
    }
}

async fn handle(
    state: &ConsoleState,
    caller: &Caller,
    request: Request<Incoming>,
) -> Result<HttpResponse, ConsoleError> {
    let path = request.uri().path().to_string();
    let params = Params::parse(request.uri().query())?;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is_get = request.method() == Method::GET || request.method() == Method::HEAD;
    let is_post = request.method() == Method::POST;
    match segments.as_slice() {
        [""] if is_get => overview(state, caller, &params).await,
        ["tickets"] if is_get => ticket_list(state, caller, &params).await,
        ["tickets", id] if is_get => ticket_page(state, caller, ticket_id(id)?, &params).await,
        ["tickets", id, action] if is_post => {
            let id = ticket_id(id)?;
            let limit = match *action {
                // Percent-encoding may triple a body.
                "correction" => state.settings.max_body_bytes * 3 + 1024,
                _ => MAX_REVIEW_FORM_BYTES,
            };
            let form = read_form(request.into_body(), limit).await?;
            caller.check_csrf(form.get(CSRF_FIELD))?;
            let done = match *action {
                "review" => review(state, caller, id, &form).await?,
                "reprocess" => reprocess(state, id).await?,
                "correction" => correct(state, id, &form).await?,
                _ => return Err(ConsoleError::NotFound("page")),
            };
            Ok(see_other(&format!("/tickets/{id}?done={done}")))
        }
        ["products"] if is_get => match params.get("id") {
            Some(product_id) => product_page(state, caller, product_id).await,
            None => product_list(state, caller, &params).await,
        },
        ["products", product_id] if is_get => product_page(state, caller, &percent_decoded(product_id)?).await,
        ["" | "tickets" | "products"] | ["tickets" | "products", _] => Err(ConsoleError::MethodNotAllowed("GET, HEAD")),
        ["tickets", _, "review" | "reprocess" | "correction"] => Err(ConsoleError::MethodNotAllowed("POST")),
        _ => Err(ConsoleError::NotFound("page")),
    }
}

/// `GET /?window=1h|24h|7d`.
async fn overview(state: &ConsoleState, caller: &Caller, params: &Params) -> Result<HttpResponse, ConsoleError> {
    let window = match params.get("window") {
        None => StatsWindow::Day,
        Some(text) => {
            StatsWindow::parse(text).ok_or_else(|| ConsoleError::BadRequest("window: 1h, 24h or 7d".to_string()))?
        }
    };
    let stats = state.stats.get(&state.read_pool, window).await?;
    let mut body = String::from("<p>Window:");
    for choice in [StatsWindow::Hour, StatsWindow::Day, StatsWindow::Week] {
        if choice == window {
            let _ = write!(body, " <strong>{}</strong>", choice.as_str());
        } else {
            let _ = write!(body, " <a href=\"/?window={0}\">{0}</a>", choice.as_str());
        }
    }
    let minutes = window.duration().as_secs_f64() / 60.0;
    let _ = write!(
        body,
        " (since {}).</p><h2>Ingest rate</h2><p id=\"rate\"><strong>{:.2}</strong> tickets a minute on average \
         ({} tickets in {}).</p><h2>By status</h2><table id=\"by-status\"><tr><th>status</th><th>tickets</th></tr>",
        html::time(stats.since),
        stats.total as f64 / minutes,
        stats.total,
        window.as_str()
    );
    for (status, count) in &stats.by_status {
        let _ = write!(
            body,
            "<tr><td><a class=\"status-{0}\" href=\"/tickets?status={0}\">{0}</a></td><td class=\"num\">{1}</td></tr>",
            escape_html(status),
            count
        );
    }
    body.push_str("</table><h2>By problem code</h2>");
    if stats.by_problem.is_empty() {
        body.push_str("<p class=\"muted\">No problem in this window.</p>");
    } else {
        body.push_str("<table id=\"by-problem\"><tr><th>problem</th><th>tickets</th></tr>");
        for (code, count) in &stats.by_problem {
            let _ = write!(
                body,
                "<tr><td><a href=\"/tickets?{}\">{}</a></td><td class=\"num\">{count}</td></tr>",
                escape_html(&query_string(&[("problem", code)])),
                escape_html(code)
            );
        }
        body.push_str("</table>");
    }
    body.push_str("<h2>Admission, queue and WAL</h2>");
    match &state.live {
        Some(live) => {
            let now = live();
            let _ = write!(
                body,
                "<table id=\"live\"><tr><th>in flight (admitted, not yet written)</th><td class=\"num\">{} of {}</td></tr>\
                 <tr><th>writer queue depth</th><td class=\"num\">{}</td></tr>\
                 <tr><th>WAL backlog (records not known committed)</th><td class=\"num\">{}</td></tr>\
                 <tr><th>WAL on disk</th><td class=\"num\">{} of {} bytes</td></tr></table>",
                now.in_flight, now.in_flight_capacity, now.queue_depth, now.wal_records, now.wal_bytes, now.wal_max_bytes
            );
        }
        None => body.push_str(
            "<p id=\"live\" class=\"muted\">Live numbers are not available: this review desk runs alone \
             (<code>ticket-ingest console</code>), apart from the service's queue and WAL. The counts above \
             come from the database.</p>",
        ),
    }
    let _ = write!(
        body,
        "<p class=\"muted\">JSON: <a href=\"/api/v1/stats?window={0}\">/api/v1/stats?window={0}</a></p>",
        window.as_str()
    );
    Ok(page(caller, "Overview", &body))
}

/// `GET /tickets?…`: the API's filters; empty fields (as a GET form sends
/// them) are no filter.
async fn ticket_list(state: &ConsoleState, caller: &Caller, params: &Params) -> Result<HttpResponse, ConsoleError> {
    let status = match params.get("status") {
        None => None,
        Some(text) => Some(
            TicketStatus::parse(text)
                .ok_or_else(|| ConsoleError::BadRequest("status: ok, partial or invalid".to_string()))?,
        ),
    };
    let after = match params.get("after") {
        None => None,
        Some(text) => Some(
            TicketCursor::parse(text)
                .ok_or_else(|| ConsoleError::BadRequest("after: not a cursor given as next".to_string()))?,
        ),
    };
    let filter = TicketFilter {
        status,
        problem: params.get("problem").map(str::to_string),
        order_id: params.get("order").map(str::to_string),
        since: time_param(params, "since")?,
        until: time_param(params, "until")?,
        after,
        limit: queries::DEFAULT_LIMIT,
    };
    let mut transaction = queries::read_only(&state.read_pool).await?;
    let listing = queries::list_tickets(&mut transaction, &filter).await?;
    drop(transaction);
    let kept = ["status", "problem", "order", "since", "until"].map(|key| (key, params.get(key).unwrap_or("")));
    let mut body = String::from("<form class=\"filters\" id=\"filters\" method=\"get\" action=\"/tickets\"><label>status<select name=\"status\"><option value=\"\">any</option>");
    for choice in ["ok", "partial", "invalid"] {
        let selected = if params.get("status") == Some(choice) { " selected" } else { "" };
        let _ = write!(body, "<option{selected}>{choice}</option>");
    }
    body.push_str("</select></label>");
    for (name, label, hint) in [
        ("problem", "problem code", "bad_price"),
        ("order", "order id", ""),
        ("since", "since (RFC 3339)", "2026-12-01T00:00:00Z"),
        ("until", "until", ""),
    ] {
        let _ = write!(
            body,
            "<label>{label}<input name=\"{name}\" value=\"{}\" placeholder=\"{hint}\"></label>",
            escape_html_value(params.get(name).unwrap_or(""))
        );
    }
    body.push_str("<button>Filter</button> <a href=\"/tickets\">clear</a></form>");
    if listing.tickets.is_empty() {
        body.push_str("<p id=\"none\">No ticket matches.</p>");
    } else {
        body.push_str(
            "<table id=\"tickets\"><tr><th>received</th><th>status</th><th>order</th><th>total</th>\
             <th>problems</th><th>review</th></tr>",
        );
        for ticket in &listing.tickets {
            let codes = problem_codes(&ticket.problems);
            let review = match &ticket.review {
                Some(review) => format!("{} by {}", escape_html(&review.decision), escape_html(&review.reviewer)),
                None => String::new(),
            };
            let _ = write!(
                body,
                "<tr class=\"ticket\"><td><a href=\"/tickets/{id}\">{}</a></td><td class=\"status-{status}\">{status}</td>\
                 <td class=\"order\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{review}</td></tr>",
                html::time(ticket.received_at),
                escape_html(ticket.order_id.as_deref().unwrap_or("")),
                ticket.total.map(|total| total.to_string()).unwrap_or_default(),
                escape_html(&codes.join(", ")),
                id = ticket.id,
                status = escape_html(&ticket.status),
            );
        }
        body.push_str("</table>");
    }
    let mut kept_pairs: Vec<(&str, &str)> = kept.to_vec();
    if let Some(next) = &listing.next {
        kept_pairs.push(("after", next));
        let _ = write!(
            body,
            "<p><a id=\"next\" href=\"/tickets?{}\">Next page →</a></p>",
            escape_html(&query_string(&kept_pairs))
        );
        kept_pairs.pop();
    }
    let json = format!("/api/v1/tickets?{}", query_string(&kept_pairs));
    let _ =
        write!(body, "<p class=\"muted\">JSON: <a href=\"{0}\">{0}</a></p>", escape_html(json.trim_end_matches('?')));
    Ok(page(caller, "Tickets", &body))
}

/// The outcomes a form redirects with, as the ticket page says them.
const OUTCOMES: [(&str, &str); 5] = [
    ("accepted", "Review recorded: accepted."),
    ("rejected", "Review recorded: rejected."),
    ("reprocessed", "Reprocessed with today's parser: the ticket changed."),
    ("unchanged", "Reprocessed with today's parser: nothing changed."),
    ("corrected", "Correction stored as a new ticket (linked below)."),
];

/// `GET /tickets/{id}`.
async fn ticket_page(
    state: &ConsoleState,
    caller: &Caller,
    id: Uuid,
    params: &Params,
) -> Result<HttpResponse, ConsoleError> {
    let mut transaction = queries::read_only(&state.read_pool).await?;
    let ticket = queries::ticket(&mut transaction, id).await?.ok_or(ConsoleError::NotFound("ticket"))?;
    let raw = queries::raw_ticket(&mut transaction, id).await?.unwrap_or_default();
    drop(transaction);
    let mut body = String::new();
    if let Some((_, sentence)) = OUTCOMES.iter().find(|(done, _)| params.get("done") == Some(*done)) {
        let _ = write!(body, "<p class=\"outcome\" id=\"outcome\">{sentence}</p>");
    }
    body.push_str(&html::ticket_header(&ticket));
    // Problems by line; line 0 is the ticket as a whole.
    let mut by_line: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for problem in ticket.problems.as_array().into_iter().flatten() {
        let line = problem["line"].as_u64().unwrap_or(0) as u32;
        let code = problem["code"].as_str().unwrap_or("");
        let message = problem["message"].as_str().unwrap_or("");
        by_line.entry(line).or_default().push(format!("{code}: {message}"));
    }
    if let Some(whole) = by_line.get(&0) {
        body.push_str("<h2>Problems of the whole ticket</h2><ul id=\"ticket-problems\">");
        for message in whole {
            let _ = write!(body, "<li>{}</li>", escape_html(message));
        }
        body.push_str("</ul>");
    }
    let _ = write!(
        body,
        "<h2>Raw body</h2><p>{} bytes · <a id=\"download\" href=\"/api/v1/tickets/{id}/raw\" download>download the raw bytes</a></p>",
        ticket.raw_bytes
    );
    let text = html::readable_text(&raw);
    match text {
        Some(text) => body.push_str(&html::numbered_body(text, &by_line)),
        None => {
            body.push_str("<p class=\"muted\">Not UTF-8 text: shown as a hex dump.</p>");
            body.push_str(&html::hex_dump(&raw));
            let listed: Vec<String> = by_line
                .iter()
                .filter(|(line, _)| **line > 0)
                .flat_map(|(line, messages)| messages.iter().map(move |message| format!("line {line}: {message}")))
                .collect();
            if !listed.is_empty() {
                body.push_str("<ul id=\"line-problems\">");
                for message in listed {
                    let _ = write!(body, "<li>{}</li>", escape_html(&message));
                }
                body.push_str("</ul>");
            }
        }
    }
    body.push_str(&html::lines_table(&ticket));
    body.push_str(&html::reviews_table(&ticket));
    body.push_str(&html::ticket_forms(caller, &ticket, text));
    let title = format!(
        "Ticket {}",
        ticket.order_id.as_deref().map(|order| format!("order {order}")).unwrap_or_else(|| id.to_string())
    );
    Ok(page(caller, &title, &body))
}

/// `POST /tickets/{id}/review`: `decision` (`accepted`/`rejected`), `note`.
async fn review(state: &ConsoleState, caller: &Caller, id: Uuid, form: &Params) -> Result<&'static str, ConsoleError> {
    let decision = match form.get("decision") {
        Some("accepted") => Decision::Accepted,
        Some("rejected") => Decision::Rejected,
        _ => return Err(ConsoleError::BadRequest("decision: accepted or rejected".to_string())),
    };
    actions::record_review(&state.pool, id, &caller.name, decision, form.get("note").unwrap_or("")).await?;
    Ok(decision.as_str())
}

/// `POST /tickets/{id}/reprocess`.
async fn reprocess(state: &ConsoleState, id: Uuid) -> Result<&'static str, ConsoleError> {
    let outcome = actions::reprocess_ticket(&state.pool, id).await?;
    Ok(if outcome.changed { "reprocessed" } else { "unchanged" })
}

/// `POST /tickets/{id}/correction`: `raw`, the corrected body (a textarea
/// sends its line breaks as CRLF, which the parser takes as LF).
async fn correct(state: &ConsoleState, id: Uuid, form: &Params) -> Result<&'static str, ConsoleError> {
    let raw = form.get("raw").unwrap_or("");
    if raw.len() > state.settings.max_body_bytes {
        return Err(ConsoleError::TooLarge(state.settings.max_body_bytes));
    }
    actions::correct_ticket(&state.pool, id, Bytes::from(raw.to_string())).await?;
    Ok("corrected")
}

/// `GET /products?q=&after=`.
async fn product_list(state: &ConsoleState, caller: &Caller, params: &Params) -> Result<HttpResponse, ConsoleError> {
    let q = params.get("q").unwrap_or("");
    let filter = ProductFilter {
        q: Some(q.to_string()).filter(|q| !q.is_empty()),
        after: params.get("after").map(str::to_string),
        limit: queries::DEFAULT_LIMIT,
    };
    let mut transaction = queries::read_only(&state.read_pool).await?;
    let listing = queries::list_products(&mut transaction, &filter).await?;
    drop(transaction);
    let mut body = format!(
        "<form class=\"filters\" id=\"search\" method=\"get\" action=\"/products\"><label>product id or name\
         <input name=\"q\" value=\"{}\" autofocus></label><button>Search</button></form>",
        escape_html_value(q)
    );
    if listing.products.is_empty() {
        body.push_str("<p id=\"none\">No product matches.</p>");
    } else {
        body.push_str(
            "<table id=\"products\"><tr><th>product id</th><th>name</th><th>price</th><th>times seen</th>\
             <th>last seen</th></tr>",
        );
        for product in &listing.products {
            let _ = write!(
                body,
                "<tr class=\"product\"><td><a href=\"{}\">{}</a></td><td class=\"name\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                escape_html(&html::product_href(&product.product_id)),
                escape_html(&product.product_id),
                escape_html(&product.name),
                product.price,
                product.times_seen,
                html::time(product.last_seen_at)
            );
        }
        body.push_str("</table>");
    }
    if let Some(next) = &listing.next {
        let _ = write!(
            body,
            "<p><a id=\"next\" href=\"/products?{}\">Next page →</a></p>",
            escape_html(&query_string(&[("q", q), ("after", next)]))
        );
    }
    Ok(page(caller, "Products", &body))
}

/// `GET /products/{product_id}`.
async fn product_page(state: &ConsoleState, caller: &Caller, product_id: &str) -> Result<HttpResponse, ConsoleError> {
    let mut transaction = queries::read_only(&state.read_pool).await?;
    let detail = queries::product(&mut transaction, product_id).await?.ok_or(ConsoleError::NotFound("product"))?;
    drop(transaction);
    let product = &detail.product;
    let mut body = format!(
        "<table id=\"product\"><tr><th>product id</th><td><code>{}</code></td></tr>\
         <tr><th>name</th><td class=\"name\">{}</td></tr><tr><th>price</th><td>{}</td></tr>\
         <tr><th>seen</th><td>{} times, {} to {}</td></tr></table><h2>Price over time</h2>",
        escape_html(&product.product_id),
        escape_html(&product.name),
        product.price,
        product.times_seen,
        html::time(product.first_seen_at),
        html::time(product.last_seen_at)
    );
    body.push_str(&html::price_chart(&detail.history));
    let mut names: Vec<&str> = detail.history.iter().map(|version| version.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    body.push_str("<h2>Seen under the names</h2><ul id=\"names\">");
    for name in names {
        let _ = write!(body, "<li>{}</li>", escape_html(name));
    }
    body.push_str(
        "</ul><h2>History</h2><table id=\"history\"><tr><th>name</th><th>price</th><th>first seen</th>\
         <th>last seen</th><th>times</th></tr>",
    );
    for version in &detail.history {
        let _ = write!(
            body,
            "<tr><td class=\"name\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            escape_html(&version.name),
            version.price,
            html::time(version.first_seen_at),
            html::time(version.last_seen_at),
            version.times_seen
        );
    }
    body.push_str("</table>");
    Ok(page(caller, &format!("Product {}", product.product_id), &body))
}

fn page(caller: &Caller, title: &str, body: &str) -> HttpResponse {
    super::html_response(StatusCode::OK, &document(title, Some(&caller.name), body))
}

/// A refusal as a page, with its status.
fn error_page(caller: &Caller, error: &ConsoleError) -> HttpResponse {
    let body = format!(
        "<p class=\"error\" id=\"error\">{}</p><p><a href=\"/tickets\">Back to the tickets</a></p>",
        escape_html(&error.to_string())
    );
    let title = error.status().canonical_reason().unwrap_or("Error");
    let mut response = super::html_response(error.status(), &document(title, Some(&caller.name), &body));
    if let ConsoleError::MethodNotAllowed(allow) = error {
        response.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
    }
    response
}

fn see_other(location: &str) -> HttpResponse {
    let mut response = super::html_response(StatusCode::SEE_OTHER, "");
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

fn problem_codes(problems: &serde_json::Value) -> Vec<String> {
    let mut codes: Vec<String> = problems
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|problem| problem["code"].as_str().map(str::to_string))
        .collect();
    let mut distinct = Vec::with_capacity(codes.len());
    for code in codes.drain(..) {
        if !distinct.contains(&code) {
            distinct.push(code);
        }
    }
    distinct
}

fn time_param(params: &Params, name: &'static str) -> Result<Option<OffsetDateTime>, ConsoleError> {
    let Some(text) = params.get(name) else { return Ok(None) };
    queries::bounded_time(text).map(Some).ok_or_else(|| ConsoleError::BadRequest(queries::time_error(name)))
}

async fn read_form(body: Incoming, max: usize) -> Result<Params, ConsoleError> {
    let bytes = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => return Err(ConsoleError::TooLarge(max)),
        Err(error) => return Err(ConsoleError::BadRequest(format!("body could not be read: {error}"))),
    };
    Params::from_urlencoded(&bytes)
}

/// Query or form fields; an empty value is no value (a GET form sends its
/// empty fields).
struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    fn parse(query: Option<&str>) -> Result<Params, ConsoleError> {
        Params::from_urlencoded(query.unwrap_or("").as_bytes())
    }

    fn from_urlencoded(bytes: &[u8]) -> Result<Params, ConsoleError> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(bytes).into_owned().collect();
        for (key, value) in &pairs {
            super::storable_text(key, key)?;
            super::storable_text(key, value)?;
        }
        Ok(Params { pairs })
    }

    /// The last non-empty value of `name`.
    fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(key, value)| key == name && !value.is_empty()).map(|(_, value)| value.as_str())
    }
}
