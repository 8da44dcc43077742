//! Who may use the review desk, and how a browser proves it.
//!
//! # Tokens
//! `admin_tokens` lists `name:secret` or bare `secret` entries, parsed
//! with the configuration ([`AdminTokens`]). The name is who a review is
//! recorded as. Presented secrets are compared by their SHA-256 digests, in
//! time independent of where they differ.
//!
//! # Two ways in
//! - **API clients** send `Authorization: Bearer <secret>` with every
//!   request. No cookie is involved, so no CSRF token either: a browser
//!   never adds that header to a request another site makes it send.
//! - **Browsers** open `GET /login?token=<secret>&next=/tickets` (the link
//!   `scripts/run.sh` prints, as Jupyter does), which sets the session cookie
//!   [`SESSION_COOKIE`] (`HttpOnly`, `SameSite=Strict`, `Path=/`, valid
//!   [`SESSION_LIFETIME`]) and redirects with `303` to `next` — a local
//!   path only: anything else (`//host`, `https://…`, `/\host`) redirects
//!   to `/`, so the link cannot be turned into an open redirect.
//!
//! # The session cookie
//! `<name>:<expires, unix seconds>:<base64url HMAC-SHA256(secret,
//! "session:<name>:<expires>")>`: stateless, so that several consoles (or
//! a restarted one) accept it, and void as soon as its token leaves
//! `admin_tokens`.
//!
//! # CSRF
//! `SameSite=Strict` already keeps the cookie off cross-site requests; on
//! top of that every POST authenticated by the cookie must carry the CSRF
//! token of its session — in the `X-CSRF-Token` header (API) or a
//! `csrf_token` form field (pages) — else `403`. The token is
//! base64url HMAC-SHA256(secret, `"csrf:" + cookie value`): derived from the
//! session, so nothing is stored, and a page embeds
//! [`Caller::csrf_token`] in each form.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use hyper::header::{HeaderMap, AUTHORIZATION, COOKIE};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::ConsoleError;
use crate::config::AdminTokens;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "ticket_ingest_session";
/// How long a browser session lasts after `/login`.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The header an API client authenticated by the cookie sends the CSRF
/// token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The form field a page sends the CSRF token in.
pub const CSRF_FIELD: &str = "csrf_token";

type HmacSha256 = Hmac<Sha256>;

/// One configured token.
struct Token {
    /// Who a review made with it is recorded as.
    name: String,
    secret: String,
    /// SHA-256 of `secret`, what presented secrets are compared with.
    digest: [u8; 32],
}

/// The tokens of `admin_tokens`, parsed.
pub struct Tokens {
    tokens: Vec<Token>,
}

impl Tokens {
    /// The tokens of `admin_tokens`, with the digests presented secrets
    /// are compared with.
    pub fn new(configured: &AdminTokens) -> Tokens {
        let tokens = configured
            .iter()
            .map(|token| Token {
                name: token.name.clone(),
                secret: token.secret.clone(),
                digest: digest(&token.secret),
            })
            .collect();
        Tokens { tokens }
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The names of the tokens, in the configured order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tokens.iter().map(|token| token.name.as_str())
    }

    /// The token whose secret is `presented`, comparing every digest in full.
    fn by_secret(&self, presented: &str) -> Option<&Token> {
        let presented = digest(presented.trim());
        let mut found = None;
        for token in &self.tokens {
            let difference = token.digest.iter().zip(presented.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 {
                found = Some(token);
            }
        }
        found
    }

    fn by_name(&self, name: &str) -> Option<&Token> {
        self.tokens.iter().find(|token| token.name == name)
    }

    /// Who sent these headers: a Bearer token, else a valid session cookie.
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<Caller> {
        if let Some(value) = headers.get(AUTHORIZATION).and_then(|value| value.to_str().ok()) {
            let (scheme, secret) = value.trim().split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return None;
            }
            let token = self.by_secret(secret)?;
            return Some(Caller { name: token.name.clone(), csrf: None });
        }
        let session = session_cookie(headers)?;
        let token = self.verify_session(session, OffsetDateTime::now_utc())?;
        Some(Caller { name: token.name.clone(), csrf: Some(sign(&token.secret, &format!("csrf:{session}"))) })
    }

    /// The cookie value of a new session for the token of `secret`, or
    /// `None` when no token has that secret.
    pub fn open_session(&self, secret: &str, now: OffsetDateTime) -> Option<String> {
        let token = self.by_secret(secret)?;
        let expires = now.unix_timestamp() + SESSION_LIFETIME.as_secs() as i64;
        let signed = format!("session:{}:{expires}", token.name);
        Some(format!("{}:{expires}:{}", token.name, sign(&token.secret, &signed)))
    }

    fn verify_session(&self, session: &str, now: OffsetDateTime) -> Option<&Token> {
        let mut parts = session.splitn(3, ':');
        let (name, expires, signature) = (parts.next()?, parts.next()?, parts.next()?);
        let token = self.by_name(name)?;
        let expires_at: i64 = expires.parse().ok()?;
        if expires_at <= now.unix_timestamp() {
            return None;
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let mut mac = HmacSha256::new_from_slice(token.secret.as_bytes()).ok()?;
        mac.update(format!("session:{name}:{expires}").as_bytes());
        mac.verify_slice(&signature).ok()?;
        Some(token)
    }
}

/// Someone the console let in.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The name of their token: who their reviews are recorded as.
    pub name: String,
    /// The CSRF token of their session; `None` for a Bearer client.
    csrf: Option<String>,
}

impl Caller {
    /// What a form must send back in [`CSRF_FIELD`]; `None` for a Bearer
    /// client, which needs none.
    pub fn csrf_token(&self) -> Option<&str> {
        self.csrf.as_deref()
    }

    /// A POST by this caller may go on: a Bearer client, or a session whose
    /// CSRF token is `presented`.
    pub fn check_csrf(&self, presented: Option<&str>) -> Result<(), ConsoleError> {
        let Some(expected) = &self.csrf else { return Ok(()) };
        let Some(presented) = presented else { return Err(ConsoleError::CsrfRefused) };
        let same = expected.len() == presented.len()
            && expected.bytes().zip(presented.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if same {
            Ok(())
        } else {
            Err(ConsoleError::CsrfRefused)
        }
    }
}

/// `next` itself when it is a path on this host, else `/`: no `//host`,
/// no `/\host` (browsers read it as `//`), no scheme, no control
/// characters.
pub fn local_path(next: &str) -> &str {
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && next.chars().all(|c| c.is_ascii_graphic());
    if local {
        next
    } else {
        "/"
    }
}

/// The `Set-Cookie` value that opens `session`.
pub fn session_set_cookie(session: &str) -> String {
    format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_LIFETIME.as_secs())
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    for value in headers.get_all(COOKIE) {
        let Ok(cookies) = value.to_str() else { continue };
        for cookie in cookies.split(';') {
            if let Some((name, value)) = cookie.trim().split_once('=') {
                if name == SESSION_COOKIE {
                    return Some(value);
                }
            }
        }
    }
    None
}

fn sign(secret: &str, message: &str) -> String {
    match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(message.as_bytes());
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length: unreachable.
        Err(_) => String::new(),
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-alice";

    fn tokens() -> Tokens {
        let configured = AdminTokens::parse(&[format!("alice:{SECRET}"), "plain-secret-of-bob-1234".to_string()]);
        Tokens::new(&configured.expect("valid tokens"))
    }

    #[test]
    fn a_session_is_valid_until_it_expires_and_only_with_its_signature() {
        let tokens = tokens();
        let now = OffsetDateTime::now_utc();
        let session = tokens.open_session(SECRET, now).expect("known secret");
        assert_eq!(tokens.verify_session(&session, now).map(|token| token.name.as_str()), Some("alice"));
        let later = now + SESSION_LIFETIME + Duration::from_secs(1);
        assert!(tokens.verify_session(&session, later).is_none());
        let forged = session.replacen("alice", "token-x", 1);
        assert!(tokens.verify_session(&forged, now).is_none());
        assert!(tokens.open_session("wrong-secret-0123456789", now).is_none());
    }

    #[test]
    fn only_local_paths_are_redirected_to() {
        assert_eq!(local_path("/tickets?status=invalid"), "/tickets?status=invalid");
        for foreign in ["//evil.example", "https://evil.example", "/\\evil.example", "tickets", "/a b", ""] {
            assert_eq!(local_path(foreign), "/", "{foreign}");
        }
    }
}
