//! The values of keys that are more than a number or a string, parsed when
//! the configuration is read, so that each consumer takes them as they are
//! used: the ack mode, the console's address, the admin tokens.
//! (`database_url` parses into a [`crate::database_url::DatabaseUrl`] and
//! `signing_secrets` into [`crate::signature::Secret`]s the same way.)

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// When a request is answered `202`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// After the ticket is in the write-ahead log, `fdatasync`ed.
    Wal,
    /// After the ticket's batch committed in PostgreSQL.
    Commit,
    /// After the ticket is in the in-memory queue (lost on a crash, not on
    /// an orderly shutdown).
    Memory,
}

/// Whether a record stays in the write-ahead log, once its ticket is
/// committed on the primary, until the standbys have flushed that commit
/// too (`wal_hold_for_standbys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldForStandbys {
    /// Released as soon as the primary committed it.
    Off,
    /// Held until `wal_standbys_flushed` standbys flushed its commit;
    /// released at once while fewer than that are connected.
    Auto,
    /// Held until `wal_standbys_flushed` standbys flushed its commit, also
    /// while fewer are connected: the log fills, then refuses (`503`).
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Shortest secret accepted in `admin_tokens`.
pub const MIN_ADMIN_SECRET_CHARS: usize = 16;

/// One entry of `admin_tokens`: `name:secret`, or a bare `secret` named
/// `token-` and the first 8 hex digits of its SHA-256 (which names it for
/// good without showing it). `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    /// Who a review made with it is recorded as: ASCII letters, digits and
    /// `-_.@`.
    pub name: String,
    /// At least [`MIN_ADMIN_SECRET_CHARS`] characters.
    pub secret: String,
    /// As written, so that the configuration reads back the same.
    entry: String,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "AdminToken({}:***)", self.name)
    }
}

/// `admin_tokens`: names unique, in the configured order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct AdminTokens(Vec<AdminToken>);

impl AdminTokens {
    /// Parses the entries; the error names an entry by its position (and
    /// its name, once known), never by its secret.
    pub fn parse(entries: &[String]) -> Result<AdminTokens, String> {
        let mut tokens: Vec<AdminToken> = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let position = index + 1;
            let trimmed = entry.trim();
            let (name, secret) = match trimmed.split_once(':') {
                Some((name, secret)) => (name.trim().to_string(), secret.trim()),
                None => (format!("token-{}", &hex_sha256(trimmed)[..8]), trimmed),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
                return Err(format!("token {position}: a name is ASCII letters, digits and -_.@ (name:secret)"));
            }
            if secret.chars().count() < MIN_ADMIN_SECRET_CHARS {
                return Err(format!(
                    "token {position} ({name}): a secret has at least {MIN_ADMIN_SECRET_CHARS} characters"
                ));
            }
            if tokens.iter().any(|token| token.name == name) {
                return Err(format!("token {position}: the name {name} is given twice"));
            }
            tokens.push(AdminToken { name, secret: secret.to_string(), entry: entry.clone() });
        }
        Ok(AdminTokens(tokens))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &AdminToken> {
        self.0.iter()
    }
}

impl TryFrom<Vec<String>> for AdminTokens {
    type Error = String;

    fn try_from(entries: Vec<String>) -> Result<AdminTokens, String> {
        AdminTokens::parse(&entries)
    }
}

impl From<AdminTokens> for Vec<String> {
    fn from(tokens: AdminTokens) -> Vec<String> {
        tokens.0.into_iter().map(|token| token.entry).collect()
    }
}

fn hex_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// An address, or none: written as `host:port`, or empty (`admin_listen`).
pub(crate) mod optional_address {
    use super::*;

    pub fn serialize<S: Serializer>(address: &Option<SocketAddr>, serializer: S) -> Result<S::Ok, S::Error> {
        match address {
            Some(address) => serializer.collect_str(address),
            None => serializer.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(deserializer)?;
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            serde::de::Error::custom("must be an address such as 127.0.0.1:9099, or empty to run no console")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-secret-of-alice-0123456789";

    #[test]
    fn a_named_token_is_known_by_its_name_and_a_bare_one_by_its_digest() {
        let tokens = AdminTokens::parse(&[format!("alice:{SECRET}"), "plain-secret-of-bob-1234".to_string()])
            .expect("valid tokens");
        let names: Vec<&str> = tokens.iter().map(|token| token.name.as_str()).collect();
        assert_eq!(names[0], "alice");
        assert!(names[1].starts_with("token-") && names[1].len() == "token-".len() + 8, "{names:?}");
        assert!(!format!("{tokens:?}").contains(SECRET), "Debug hides the secrets");
    }

    #[test]
    fn short_secrets_and_twice_given_names_are_refused_without_showing_the_secret() {
        let short = AdminTokens::parse(&["alice:short".to_string()]).expect_err("refused");
        let twice = AdminTokens::parse(&[format!("a:{SECRET}"), format!("a:{SECRET}x")]).expect_err("refused");
        assert!(short.contains("token 1 (alice)") && !short.contains("short"), "{short}");
        assert!(twice.contains("token 2") && !twice.contains(SECRET), "{twice}");
    }

    #[test]
    fn tokens_read_back_as_written() {
        let entries = vec![format!("alice:{SECRET}"), " plain-secret-of-bob-1234".to_string()];
        let tokens = AdminTokens::parse(&entries).expect("valid");
        assert_eq!(Vec::<String>::from(tokens), entries);
    }
}
