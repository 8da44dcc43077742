//! The pieces of HTML the pages ([`super::pages`]) are made of: the layout,
//! times, a raw body shown by line or as a hex dump, a ticket's tables and
//! forms, and the price chart.
//!
//! Everything here is plain `format!`/`write!` into a `String`. A function
//! that takes `&str` content from a ticket or a request escapes it with
//! [`escape_html`] itself; a function that takes a `body`/`html` argument
//! takes it as HTML already built (and escaped) by its caller. No script
//! anywhere: the console's `Content-Security-Policy` runs none, and the
//! only inline CSS is [`STYLE`] (`style-src 'unsafe-inline'`).

use std::collections::BTreeMap;
use std::fmt::Write;

use rust_decimal::prelude::ToPrimitive;
use time::OffsetDateTime;

use super::actions::MAX_NOTE_CHARS;
use super::auth::{Caller, CSRF_FIELD};
use super::queries::{ProductVersion, TicketDetail};
use super::{escape_html, escape_html_value};

/// The one style sheet, inline: tables, forms, problem highlights.
const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:.6em 1.5em;display:flex;gap:1.5em;align-items:baseline}
header a{color:#cfe0ff;text-decoration:none}header strong{margin-right:1em}header .who{margin-left:auto;color:#aab}
main{padding:1em 1.5em;max-width:1200px}
h1{font-size:1.4em;margin:.3em 0 .6em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;margin:.3em 0}
th,td{border:1px solid #d8dce3;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eef0f4;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code,pre,.raw td{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
.raw td{border:0;padding:0 .6em;white-space:pre-wrap;word-break:break-all}
.raw td.no{color:#889;text-align:right;user-select:none}
.raw tr.bad{background:#fff0f0}.raw td.why{color:#a31515;font-family:system-ui,sans-serif}
.status-ok{color:#17693a}.status-partial{color:#9a5b00}.status-invalid{color:#a31515}
.outcome{background:#e7f6ec;border:1px solid #9bd3ae;padding:.5em .8em}
.error{background:#fdecec;border:1px solid #e4a1a1;padding:.5em .8em}
form.filters{display:flex;gap:.8em;flex-wrap:wrap;align-items:end;margin:.5em 0}
form.filters label{display:flex;flex-direction:column;font-size:.9em}
.actions{display:flex;gap:2em;flex-wrap:wrap}.actions form{background:#fff;border:1px solid #d8dce3;padding:.6em .8em}
textarea{font-family:ui-monospace,monospace}
.ctl{color:#b00020;font-size:.8em}
svg.chart{background:#fff;border:1px solid #d8dce3}
.muted{color:#667}
";

/// A whole page: the navigation, `title` (escaped) and `body` (HTML).
pub fn document(title: &str, user: Option<&str>, body: &str) -> String {
    let who = match user {
        Some(name) => format!("<span class=\"who\">{}</span>", escape_html(name)),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{title} · review desk</title>\
         <style>{STYLE}</style></head><body><header><strong>Review desk</strong>\
         <a href=\"/\">Overview</a><a href=\"/tickets\">Tickets</a><a href=\"/products\">Products</a>{who}</header>\
         <main><h1>{title}</h1>{body}</main></body></html>",
        title = escape_html(title),
    )
}

/// `2026-12-01 16:20:31 UTC`.
pub fn time(at: OffsetDateTime) -> String {
    let utc = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second()
    )
}

/// `&key=value` pairs percent-encoded for a link (escape the result for an
/// attribute).
pub fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        if !value.is_empty() {
            serializer.append_pair(key, value);
        }
    }
    serializer.finish()
}

/// Where a product's page is: `/products/{id}`, or `/products?id=` for
/// the ids `.` and `..`, which a browser would take for the directory
/// itself or its parent (in any encoding: `%2E` too).
pub fn product_href(product_id: &str) -> String {
    if product_id == "." || product_id == ".." {
        format!("/products?{}", query_string(&[("id", product_id)]))
    } else {
        format!("/products/{}", path_segment(product_id))
    }
}

/// A path segment percent-encoded (a product id may hold `/`, `?`, `#`).
pub fn path_segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// The physical lines of a text body, as the parser numbers them: CRLF,
/// LF and a lone CR each end a line; line 1 first.
pub fn physical_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'\n' => {
                lines.push(&text[start..at]);
                start = at + 1;
            }
            b'\r' => {
                lines.push(&text[start..at]);
                if bytes.get(at + 1) == Some(&b'\n') {
                    at += 1;
                }
                start = at + 1;
            }
            _ => {}
        }
        at += 1;
    }
    if start < bytes.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// Whether `raw` is shown as text: UTF-8 without control characters but
/// tab, CR and LF.
pub fn readable_text(raw: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(raw).ok()?;
    let binary = text.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\r' | '\n'));
    if binary {
        None
    } else {
        Some(text)
    }
}

/// The body as a table of numbered lines, each beside the problems found
/// on it (`problems`: line number → escaped-later messages).
pub fn numbered_body(text: &str, problems: &BTreeMap<u32, Vec<String>>) -> String {
    let mut html = String::from("<table class=\"raw\" id=\"raw\">");
    for (index, line) in physical_lines(text).iter().enumerate() {
        let number = index as u32 + 1;
        let (class, why) = match problems.get(&number) {
            Some(messages) => {
                (" class=\"bad\"", messages.iter().map(|message| escape_html(message)).collect::<Vec<_>>().join("<br>"))
            }
            None => ("", String::new()),
        };
        let _ = write!(
            html,
            "<tr id=\"L{number}\"{class}><td class=\"no\">{number}</td><td>{}</td><td class=\"why\">{why}</td></tr>",
            escape_html(line)
        );
    }
    html.push_str("</table>");
    html
}

/// `hexdump -C` style: offset, 16 bytes in hex, the printable ASCII.
pub fn hex_dump(raw: &[u8]) -> String {
    let mut dump = String::new();
    for (row, chunk) in raw.chunks(16).enumerate() {
        let _ = write!(dump, "{:08x}  ", row * 16);
        for index in 0..16 {
            match chunk.get(index) {
                Some(byte) => {
                    let _ = write!(dump, "{byte:02x} ");
                }
                None => dump.push_str("   "),
            }
            if index == 7 {
                dump.push(' ');
            }
        }
        dump.push_str(" |");
        for byte in chunk {
            dump.push(if byte.is_ascii_graphic() || *byte == b' ' { *byte as char } else { '.' });
        }
        dump.push_str("|\n");
    }
    format!("<pre id=\"hex\">{}</pre>", escape_html(&dump))
}

pub fn ticket_header(ticket: &TicketDetail) -> String {
    let optional = |value: Option<String>| value.map(|value| escape_html(&value)).unwrap_or_else(|| "—".to_string());
    let mut header = format!(
        "<table id=\"header\"><tr><th>id</th><td><code>{}</code></td></tr>\
         <tr><th>received</th><td>{}</td></tr><tr><th>status</th><td id=\"status\" class=\"status-{status}\">{status}</td></tr>\
         <tr><th>order</th><td id=\"order\">{}</td></tr><tr><th>VAT</th><td>{}</td></tr><tr><th>total</th><td>{}</td></tr>\
         <tr><th>idempotency key</th><td>{}</td></tr>",
        ticket.id,
        time(ticket.received_at),
        optional(ticket.order_id.clone()),
        optional(ticket.vat.map(|vat| vat.to_string())),
        optional(ticket.total.map(|total| total.to_string())),
        optional(ticket.idempotency_key.clone()),
        status = escape_html(&ticket.status),
    );
    if let Some(original) = ticket.corrects {
        let _ = write!(
            header,
            "<tr><th>corrects</th><td><a id=\"corrects\" href=\"/tickets/{original}\">{original}</a></td></tr>"
        );
    }
    if let Some(correction) = ticket.superseded_by {
        let _ = write!(
            header,
            "<tr><th>superseded by</th><td><a id=\"superseded-by\" href=\"/tickets/{correction}\">{correction}</a></td></tr>"
        );
    }
    header.push_str("</table>");
    header
}

pub fn lines_table(ticket: &TicketDetail) -> String {
    if ticket.lines.is_empty() {
        return "<h2>Product lines</h2><p class=\"muted\">None understood.</p>".to_string();
    }
    let mut table = String::from(
        "<h2>Product lines</h2><table id=\"lines\"><tr><th>line</th><th>product</th><th>name</th><th>price</th></tr>",
    );
    for line in &ticket.lines {
        let _ = write!(
            table,
            "<tr><td class=\"num\"><a href=\"#L{0}\">{0}</a></td><td><a href=\"{1}\">{2}</a></td>\
             <td class=\"name\">{3}</td><td class=\"num\">{4}</td></tr>",
            line.line_no,
            escape_html(&product_href(&line.product_id)),
            escape_html(&line.product_id),
            escape_html(&line.name),
            line.price
        );
    }
    table.push_str("</table>");
    table
}

pub fn reviews_table(ticket: &TicketDetail) -> String {
    if ticket.reviews.is_empty() {
        return "<h2>Reviews</h2><p class=\"muted\" id=\"reviews\">Not reviewed yet.</p>".to_string();
    }
    let mut table = String::from(
        "<h2>Reviews</h2><table id=\"reviews\"><tr><th>when</th><th>who</th><th>decision</th><th>note</th></tr>",
    );
    for review in &ticket.reviews {
        let _ = write!(
            table,
            "<tr><td>{}</td><td>{}</td><td class=\"decision\">{}</td><td class=\"note\">{}</td></tr>",
            time(review.reviewed_at),
            escape_html(&review.reviewer),
            escape_html(&review.decision),
            escape_html(&review.note)
        );
    }
    table.push_str("</table>");
    table
}

/// The review, reprocess and correction forms, each with the CSRF field.
pub fn ticket_forms(caller: &Caller, ticket: &TicketDetail, text: Option<&str>) -> String {
    let csrf = format!(
        "<input type=\"hidden\" name=\"{CSRF_FIELD}\" value=\"{}\">",
        escape_html(caller.csrf_token().unwrap_or(""))
    );
    let id = ticket.id;
    let mut forms = format!(
        "<h2>Act</h2><div class=\"actions\">\
         <form id=\"review\" method=\"post\" action=\"/tickets/{id}/review\">{csrf}<p><strong>Review</strong></p>\
         <p><label><input type=\"radio\" name=\"decision\" value=\"accepted\" checked> accept</label> \
         <label><input type=\"radio\" name=\"decision\" value=\"rejected\"> reject</label></p>\
         <p><label>Note<br><textarea name=\"note\" rows=\"3\" cols=\"40\" maxlength=\"{}\"></textarea></label></p>\
         <button>Record review</button></form>\
         <form id=\"reprocess\" method=\"post\" action=\"/tickets/{id}/reprocess\">{csrf}<p><strong>Reprocess</strong></p>\
         <p>Parse the stored bytes again with today's parser.</p><button>Reprocess</button></form>",
        MAX_NOTE_CHARS
    );
    match ticket.superseded_by {
        Some(correction) => {
            let _ = write!(forms, "<p>Already corrected by <a href=\"/tickets/{correction}\">{correction}</a>: correct that one instead.</p>");
        }
        None => {
            let _ = write!(
                forms,
                "<form id=\"correction\" method=\"post\" action=\"/tickets/{id}/correction\">{csrf}\
                 <p><strong>Correct</strong>: store this body as a new ticket correcting this one.</p>\
                 <textarea name=\"raw\" rows=\"10\" cols=\"60\">{}</textarea><br><button>Store correction</button></form>",
                escape_html_value(text.unwrap_or(""))
            );
        }
    }
    forms.push_str("</div>");
    forms
}

const CHART_WIDTH: f64 = 760.0;
const CHART_HEIGHT: f64 = 260.0;
/// Room for the axis labels: left, right, top, bottom.
const MARGIN: (f64, f64, f64, f64) = (70.0, 20.0, 20.0, 40.0);

/// The price history as an inline SVG: each history row is a horizontal
/// segment at its price from its first to its last sighting, and one point
/// (`circle.point`, its `<title>` a tooltip) at its last sighting; a step
/// line joins the rows in time. One row, or rows all at one price or one
/// instant, are drawn centred rather than divided by a zero range.
pub fn price_chart(history: &[ProductVersion]) -> String {
    if history.is_empty() {
        return "<p class=\"muted\">No history recorded.</p>".to_string();
    }
    let mut rows: Vec<&ProductVersion> = history.iter().collect();
    rows.sort_by_key(|row| (row.first_seen_at, row.last_seen_at));
    let seconds = |at: OffsetDateTime| at.unix_timestamp() as f64;
    let price = |row: &ProductVersion| row.price.to_f64().unwrap_or(0.0);
    let earliest = rows.iter().map(|row| seconds(row.first_seen_at)).fold(f64::INFINITY, f64::min);
    let latest = rows.iter().map(|row| seconds(row.last_seen_at)).fold(f64::NEG_INFINITY, f64::max);
    let lowest = rows.iter().map(|row| price(row)).fold(f64::INFINITY, f64::min);
    let highest = rows.iter().map(|row| price(row)).fold(f64::NEG_INFINITY, f64::max);
    let (left, right, top, bottom) = MARGIN;
    let plot_width = CHART_WIDTH - left - right;
    let plot_height = CHART_HEIGHT - top - bottom;
    let x = |at: f64| {
        if latest > earliest {
            left + (at - earliest) / (latest - earliest) * plot_width
        } else {
            left + plot_width / 2.0
        }
    };
    // Prices from 10 % below the lowest to 10 % above the highest; all
    // equal: that price in the middle.
    let padding = if highest > lowest { (highest - lowest) * 0.1 } else { highest.abs().max(1.0) * 0.5 };
    let (floor, ceiling) = (lowest - padding, highest + padding);
    let y = |value: f64| top + (ceiling - value) / (ceiling - floor) * plot_height;

    let mut svg = format!(
        "<svg class=\"chart\" id=\"price-chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{CHART_WIDTH}\" \
         height=\"{CHART_HEIGHT}\" viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" role=\"img\" \
         aria-label=\"price over time\"><title>Price over time</title>"
    );
    // Axes and their labels: the lowest and highest price, the first and
    // last sighting.
    let _ = write!(
        svg,
        "<g stroke=\"#99a\" stroke-width=\"1\"><line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{b}\"/>\
         <line x1=\"{left}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\"/></g>",
        b = top + plot_height,
        r = left + plot_width
    );
    let mut labels = vec![(lowest, y(lowest))];
    if highest > lowest {
        labels.push((highest, y(highest)));
    }
    for (value, at) in labels {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"12\" fill=\"#445\">{value:.2}</text>\
             <line x1=\"{left}\" y1=\"{at:.1}\" x2=\"{}\" y2=\"{at:.1}\" stroke=\"#eee\"/>",
            left - 6.0,
            at + 4.0,
            left + plot_width
        );
    }
    let first = rows.iter().map(|row| row.first_seen_at).min().unwrap_or(rows[0].first_seen_at);
    let last = rows.iter().map(|row| row.last_seen_at).max().unwrap_or(rows[0].last_seen_at);
    let _ = write!(
        svg,
        "<text x=\"{left}\" y=\"{}\" font-size=\"12\" fill=\"#445\">{}</text>",
        CHART_HEIGHT - 12.0,
        escape_html(&time(first))
    );
    if last > first {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"12\" fill=\"#445\">{}</text>",
            left + plot_width,
            CHART_HEIGHT - 12.0,
            escape_html(&time(last))
        );
    }
    // The step line through the rows in time.
    let mut steps = Vec::with_capacity(rows.len() * 2);
    for row in &rows {
        steps.push(format!("{:.1},{:.1}", x(seconds(row.first_seen_at)), y(price(row))));
        steps.push(format!("{:.1},{:.1}", x(seconds(row.last_seen_at)), y(price(row))));
    }
    let _ = write!(
        svg,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#9bb8e8\" stroke-width=\"1.5\" stroke-dasharray=\"4 3\"/>",
        steps.join(" ")
    );
    for row in &rows {
        let (from, to, at) = (x(seconds(row.first_seen_at)), x(seconds(row.last_seen_at)), y(price(row)));
        let _ = write!(
            svg,
            "<line class=\"seen\" x1=\"{from:.1}\" y1=\"{at:.1}\" x2=\"{to:.1}\" y2=\"{at:.1}\" stroke=\"#2a62c9\" \
             stroke-width=\"3\"/><circle class=\"point\" cx=\"{to:.1}\" cy=\"{at:.1}\" r=\"5\" fill=\"#2a62c9\">\
             <title>{}</title></circle>",
            escape_html(&format!(
                "{} at {}: {} to {}, seen {} times",
                row.name,
                row.price,
                time(row.first_seen_at),
                time(row.last_seen_at),
                row.times_seen
            ))
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn version(price: i64, first_days_ago: i64, last_days_ago: i64) -> ProductVersion {
        let now = OffsetDateTime::now_utc();
        ProductVersion {
            name: "Caf\u{e9} <b>".to_string(),
            price: Decimal::new(price, 2),
            first_seen_at: now - time::Duration::days(first_days_ago),
            last_seen_at: now - time::Duration::days(last_days_ago),
            times_seen: 3,
        }
    }

    #[test]
    fn lines_are_numbered_as_the_parser_numbers_them() {
        assert_eq!(physical_lines("a\r\nb\rc\n\nd"), ["a", "b", "c", "", "d"]);
        assert_eq!(physical_lines("a\n"), ["a"]);
        assert_eq!(physical_lines(""), Vec::<&str>::new());
    }

    #[test]
    fn binary_bodies_are_not_shown_as_text() {
        assert!(readable_text(b"Order: 1\r\n\tx").is_some());
        assert!(readable_text(b"Or\xffder").is_none());
        assert!(readable_text(b"Order\0").is_none());
        assert!(hex_dump(b"<a>\0").contains("3c 61 3e 00"));
        assert!(hex_dump(b"<a>\0").contains("|&lt;a&gt;.|"));
    }

    #[test]
    fn the_chart_has_one_point_per_row_whatever_the_ranges() {
        let one = price_chart(&[version(200, 3, 1)]);
        let equal = price_chart(&[version(200, 9, 5), version(200, 4, 1)]);
        let many = price_chart(&[version(150, 30, 20), version(200, 19, 2), version(180, 1, 0)]);
        let same_instant = price_chart(&[version(150, 0, 0)]);

        for (svg, points) in [(&one, 1), (&equal, 2), (&many, 3), (&same_instant, 1)] {
            assert_eq!(svg.matches("<circle class=\"point\"").count(), points, "{svg}");
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
            assert!(!svg.contains("<b>"), "names are escaped: {svg}");
        }
    }
}
