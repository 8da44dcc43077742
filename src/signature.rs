//! Standard Webhooks signatures, checked when `signing_secrets` is set.
//!
//! A signed request carries `webhook-id`, `webhook-timestamp` (Unix
//! seconds) and `webhook-signature`: space-separated `v1,<base64>` entries,
//! each an HMAC-SHA256 of `{id}.{timestamp}.{body}` under one secret. A
//! secret is written `whsec_<base64 key>`. The request is accepted when any
//! entry matches any configured secret (so secrets can be rotated: configure
//! the new one beside the old, then drop the old) and the timestamp is within
//! the tolerance of our clock, which stops replays of old requests. The MAC
//! comparison is constant-time.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use hyper::header::HeaderMap;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// One secret of `signing_secrets`, decoded: `whsec_<base64 key>` (the
/// prefix may be left out). Read from and written as its text; never shown
/// by `Debug`.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Secret {
    text: String,
    key: Vec<u8>,
}

impl Secret {
    pub fn parse(text: &str) -> Result<Secret, String> {
        let encoded = text.strip_prefix("whsec_").unwrap_or(text);
        let key = STANDARD.decode(encoded).map_err(|error| format!("a secret is not base64: {error}"))?;
        if key.is_empty() {
            return Err("a secret is empty".to_string());
        }
        Ok(Secret { text: text.to_string(), key })
    }
}

impl TryFrom<String> for Secret {
    type Error = String;

    fn try_from(text: String) -> Result<Secret, String> {
        Secret::parse(&text)
    }
}

impl From<Secret> for String {
    fn from(secret: Secret) -> String {
        secret.text
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(***)")
    }
}

/// The decoded secrets and the accepted clock skew.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<Vec<u8>>,
    tolerance_s: i64,
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing webhook-id, webhook-timestamp or webhook-signature header")]
    MissingHeaders,
    #[error("webhook-timestamp is not a Unix time in seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is too far from the server's clock")]
    Expired,
    #[error("no signature matches")]
    Mismatch,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Verifier({} secrets, tolerance {} s)", self.keys.len(), self.tolerance_s)
    }
}

impl Verifier {
    /// `None` when no secret is configured (signatures are not checked).
    pub fn new(secrets: &[Secret], tolerance_s: u64) -> Option<Verifier> {
        if secrets.is_empty() {
            return None;
        }
        let keys = secrets.iter().map(|secret| secret.key.clone()).collect();
        Some(Verifier { keys, tolerance_s: i64::try_from(tolerance_s).unwrap_or(i64::MAX) })
    }

    /// Checks the request's signature headers against `body` at time `now`.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), SignatureError> {
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let (Some(id), Some(timestamp), Some(signatures)) =
            (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"))
        else {
            return Err(SignatureError::MissingHeaders);
        };
        let sent_at: i64 = timestamp.trim().parse().map_err(|_| SignatureError::BadTimestamp)?;
        if now.abs_diff(sent_at) > self.tolerance_s.unsigned_abs() {
            return Err(SignatureError::Expired);
        }
        let candidates: Vec<Vec<u8>> = signatures
            .split_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|encoded| STANDARD.decode(encoded).ok())
            .collect();
        for key in &self.keys {
            for candidate in &candidates {
                if let Ok(mut mac) = HmacSha256::new_from_slice(key) {
                    mac.update(id.as_bytes());
                    mac.update(b".");
                    mac.update(timestamp.as_bytes());
                    mac.update(b".");
                    mac.update(body);
                    if mac.verify_slice(candidate).is_ok() {
                        return Ok(());
                    }
                }
            }
        }
        Err(SignatureError::Mismatch)
    }
}

/// The `webhook-signature` value for `body`: what a producer sends.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap_or(secret)).ok()?;
    let mut mac = HmacSha256::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Some(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn headers(id: &str, timestamp: i64, signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", HeaderValue::from_str(id).expect("header"));
        headers.insert("webhook-timestamp", HeaderValue::from_str(&timestamp.to_string()).expect("header"));
        headers.insert("webhook-signature", HeaderValue::from_str(signature).expect("header"));
        headers
    }

    fn verifier(secrets: &[&str]) -> Verifier {
        let secrets: Vec<Secret> = secrets.iter().map(|secret| Secret::parse(secret).expect("valid secret")).collect();
        Verifier::new(&secrets, 300).expect("configured")
    }

    #[test]
    fn the_standard_webhooks_reference_signature_verifies() {
        // The example from the Standard Webhooks specification.
        let body = br#"{"test": 2432232314}"#;
        let signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let request = headers("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, signature);
        assert_eq!(verifier(&[SECRET]).verify(&request, body, 1614265330), Ok(()));
    }

    #[test]
    fn a_tampered_body_an_old_timestamp_or_a_missing_header_is_refused() {
        let body = b"Order: 1\n";
        let signature = sign(SECRET, "msg_1", 1_000_000, body).expect("sign");
        let verifier = verifier(&[SECRET]);
        assert_eq!(
            verifier.verify(&headers("msg_1", 1_000_000, &signature), b"Order: 2\n", 1_000_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verifier.verify(&headers("msg_1", 1_000_000, &signature), body, 1_000_301),
            Err(SignatureError::Expired)
        );
        assert_eq!(verifier.verify(&HeaderMap::new(), body, 1_000_000), Err(SignatureError::MissingHeaders));
    }

    #[test]
    fn any_of_several_secrets_verifies_during_a_rotation() {
        let old = "whsec_b2xkLXNlY3JldC1rZXktZm9yLXRlc3Rz";
        let body = b"Order: 1\n";
        let signed_with_old = sign(old, "msg_1", 1_000_000, body).expect("sign");
        let both = verifier(&[SECRET, old]);
        assert_eq!(
            both.verify(&headers("msg_1", 1_000_000, &format!("v1,AAAA {signed_with_old}")), body, 1_000_000),
            Ok(())
        );
        assert_eq!(
            verifier(&[SECRET]).verify(&headers("msg_1", 1_000_000, &signed_with_old), body, 1_000_000),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn no_secret_means_no_verification_and_a_bad_secret_is_refused_unshown() {
        assert!(Verifier::new(&[], 300).is_none());
        let error = Secret::parse("whsec_not base64!").unwrap_err();
        assert!(error.contains("not base64") && !error.contains("not base64!"), "{error}");
        assert_eq!(format!("{:?}", Secret::parse(SECRET).expect("valid")), "Secret(***)");
    }
}
