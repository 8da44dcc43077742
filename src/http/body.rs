//! A request body read into the reception budget as it arrives: at most
//! `max_body_bytes` (after gzip decoding), within `body_read_timeout_ms`
//! and no slower than `body_min_bytes_per_s`.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, CONTENT_ENCODING, CONTENT_LENGTH, TRANSFER_ENCODING};

use super::Refused;
use crate::admission::Receiving;
use crate::config::Settings;

/// gzip adds a few bytes to incompressible data: leave room for them on the
/// encoded body, the decoded one is held to `max_body_bytes` exactly.
const GZIP_SLACK: usize = 1024;
/// A body may arrive at any pace during its first seconds; after that it
/// must have averaged `body_min_bytes_per_s`.
pub(super) const BODY_RATE_GRACE: Duration = Duration::from_secs(2);

/// Reads the whole body, gunzipping it when `Content-Encoding: gzip` says
/// so. Every byte received is held in the reception budget as it arrives;
/// the body must arrive within `body_read_timeout_ms`, and once
/// [`BODY_RATE_GRACE`] has passed, at `body_min_bytes_per_s` on average.
pub(super) async fn read_body(
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
pub(super) fn only_chunked_transfer_coding(headers: &HeaderMap) -> Result<(), Refused> {
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
