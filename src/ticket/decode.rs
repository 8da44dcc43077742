//! Bytes to text: BOM sniffing, UTF-8, UTF-16, the Windows-1252 fallback,
//! NUL padding and binary junk detection.

use std::borrow::Cow;

use encoding_rs::{UTF_16BE, UTF_16LE, WINDOWS_1252};

use super::Problems;

/// Magic numbers of formats sent by mistake (a gzip body without its
/// `Content-Encoding`, an image or PDF of the receipt …).
const MAGIC_NUMBERS: [(&[u8], &str); 8] = [
    (b"\x1f\x8b", "gzip"),
    (b"PK\x03\x04", "zip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x89PNG", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"%PDF-", "PDF"),
    (b"\x7fELF", "ELF"),
];

/// Decodes the body to text, or says why there is no text (`None`, with the
/// problem recorded). Borrows when the body is UTF-8, as almost all are.
pub(super) fn decode<'a>(raw: &'a [u8], problems: &mut Problems) -> Option<Cow<'a, str>> {
    if raw.is_empty() {
        problems.whole("empty", "the body is empty (0 bytes)".to_owned());
        return None;
    }
    if let Some((_, format)) = MAGIC_NUMBERS.iter().find(|(magic, _)| raw.starts_with(magic)) {
        problems.whole("binary", format!("the body starts with the {format} magic number: not a text ticket"));
        return None;
    }
    let mut text = decode_text(raw, problems);
    let padding = strip_nul_padding(&mut text);
    let reason = problems.list.len();
    if text.trim().is_empty() {
        if padding > 0 {
            problems.whole("binary", format!("the body is only NUL bytes and whitespace ({} bytes)", raw.len()));
        } else {
            problems.whole("empty", format!("the body is only whitespace ({} bytes)", raw.len()));
        }
        problems.list.drain(..reason);
        return None;
    }
    if let Some(message) = binary_text(&text) {
        // Only the reason: "decoded as Windows-1252" is noise about junk.
        problems.list.clear();
        problems.whole("binary", message);
        return None;
    }
    if padding > 0 {
        problems.whole("nul_padding", format!("the body ends with {padding} NUL bytes of padding; they were ignored"));
    }
    Some(text)
}

/// BOM sniffing, then UTF-8, then the Windows-1252 fallback.
fn decode_text<'a>(raw: &'a [u8], problems: &mut Problems) -> Cow<'a, str> {
    if let Some(body) = raw.strip_prefix(b"\xef\xbb\xbf") {
        return utf8_or_legacy(body, problems);
    }
    for (bom, encoding, name) in [(b"\xff\xfe", UTF_16LE, "UTF-16LE"), (b"\xfe\xff", UTF_16BE, "UTF-16BE")] {
        if let Some(body) = raw.strip_prefix(bom) {
            let (text, had_errors) = encoding.decode_without_bom_handling(body);
            let lossy = if had_errors { "; invalid sequences were replaced by U+FFFD" } else { "" };
            problems.whole("utf16_encoding", format!("the body is {name} (with a byte-order mark), not UTF-8{lossy}"));
            return text;
        }
    }
    utf8_or_legacy(raw, problems)
}

fn utf8_or_legacy<'a>(raw: &'a [u8], problems: &mut Problems) -> Cow<'a, str> {
    match std::str::from_utf8(raw) {
        Ok(text) => Cow::Borrowed(text),
        Err(error) => {
            problems.whole(
                "legacy_encoding",
                format!(
                    "the body is not valid UTF-8 (first invalid byte at offset {}); decoded as Windows-1252",
                    error.valid_up_to()
                ),
            );
            WINDOWS_1252.decode_without_bom_handling(raw).0
        }
    }
}

/// Drops trailing NULs (and the whitespace around them); returns how many
/// NULs there were.
fn strip_nul_padding(text: &mut Cow<'_, str>) -> usize {
    let kept = text.trim_end_matches(|c: char| c == '\0' || c.is_whitespace()).len();
    let nuls = text.get(kept..).map_or(0, |tail| tail.bytes().filter(|&b| b == 0).count());
    if nuls > 0 {
        match text {
            Cow::Borrowed(s) => *s = s.get(..kept).unwrap_or(s),
            Cow::Owned(s) => s.truncate(kept),
        }
    }
    nuls
}

/// `Some(message)` when the text is mostly not text. Counts bytes: control
/// characters are ASCII, and chars are the bytes that start a character.
fn binary_text(text: &str) -> Option<String> {
    let (mut controls, mut chars) = (0usize, 0usize);
    for b in text.bytes() {
        chars += usize::from(b & 0xC0 != 0x80);
        controls += usize::from((b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0C)) || b == 0x7F);
    }
    // 5 %: a NUL in one product name of a short ticket is ~1 %, random bytes ~11 %.
    (controls.saturating_mul(20) > chars).then(|| {
        format!(
            "the body looks binary: {controls} of {chars} characters are control characters \
             (UTF-16 is only read with a byte-order mark)"
        )
    })
}
