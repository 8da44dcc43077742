//! `database_url` as libpq reads it, host list included: parsed once, with
//! no I/O, into one sqlx connect option per host.
//!
//! sqlx 0.8 takes a single host. libpq, psql and every driver built on
//! libpq take a list, tried in order, and a `target_session_attrs` saying
//! which kind of server will do:
//!
//! ```text
//! postgres://user:secret@db1:5432,db2:5432,[::1]:5433/tickets?target_session_attrs=read-write
//! ```
//!
//! Each host may carry its own port (5432 when it has none, as in libpq);
//! user, password, database and the other parameters are shared.
//! `target_session_attrs` is kept here, not handed to sqlx:
//! - `any` (the default): the first host that accepts the connection;
//! - `read-write`: the first whose session accepts writes
//!   (`SHOW transaction_read_only` is `off`): a standby is skipped;
//! - `primary`: the first that is not in recovery
//!   (`SELECT pg_is_in_recovery()` is false).
//!
//! The other libpq values (`read-only`, `standby`, `prefer-standby`) and a
//! host list in the `host=` parameter are refused rather than half-honoured.
//! [`crate::store::connect`] walks the list; the pools follow the primary
//! with [`crate::store::lazy_pool`].

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

/// The kind of server a connection must reach (`target_session_attrs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    /// Any server that accepts the connection.
    Any,
    /// A session that accepts writes: not a standby, not read-only.
    ReadWrite,
    /// A server not in recovery.
    Primary,
}

impl SessionAttrs {
    fn parse(value: &str) -> Result<SessionAttrs, String> {
        match value {
            "any" => Ok(SessionAttrs::Any),
            "read-write" => Ok(SessionAttrs::ReadWrite),
            "primary" => Ok(SessionAttrs::Primary),
            other => Err(format!("target_session_attrs = {other:?} is not supported: use any, read-write or primary")),
        }
    }
}

/// One host of the list and the options to reach it.
#[derive(Debug, Clone)]
pub struct Host {
    /// `host:port` as written in the URL, for logs and errors.
    pub name: String,
    pub options: PgConnectOptions,
}

/// A parsed `database_url`: its hosts in the order they are tried, and the
/// kind of server wanted. Read from and written as the URL's text; `Debug`
/// hides its password; two are equal when their texts are.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DatabaseUrl {
    url: String,
    hosts: Vec<Host>,
    target: SessionAttrs,
}

impl TryFrom<String> for DatabaseUrl {
    type Error = String;

    fn try_from(url: String) -> Result<DatabaseUrl, String> {
        DatabaseUrl::parse(&url)
    }
}

impl From<DatabaseUrl> for String {
    fn from(url: DatabaseUrl) -> String {
        url.url
    }
}

impl PartialEq for DatabaseUrl {
    fn eq(&self, other: &DatabaseUrl) -> bool {
        self.url == other.url
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "DatabaseUrl({})", hide_password(&self.url))
    }
}

impl DatabaseUrl {
    /// Parses a `postgres://` or `postgresql://` URL, single- or multi-host.
    pub fn parse(url: &str) -> Result<DatabaseUrl, String> {
        let (scheme, after_scheme) = match url.split_once("://") {
            Some((scheme @ ("postgres" | "postgresql"), rest)) => (scheme, rest),
            _ => return Err("must start with postgres:// or postgresql://".to_string()),
        };
        let authority_end = after_scheme.find(['/', '?']).unwrap_or(after_scheme.len());
        let (authority, path_and_query) = after_scheme.split_at(authority_end);
        // The password may hold an '@' only percent-encoded, as in any URL;
        // the last '@' ends the credentials.
        let (credentials, host_list) = match authority.rsplit_once('@') {
            Some((credentials, hosts)) => (Some(credentials), hosts),
            None => (None, authority),
        };
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        let mut target = SessionAttrs::Any;
        let mut kept_parameters = Vec::new();
        for parameter in query.unwrap_or("").split('&').filter(|parameter| !parameter.is_empty()) {
            let (key, value) = parameter.split_once('=').unwrap_or((parameter, ""));
            match key {
                "target_session_attrs" => target = SessionAttrs::parse(value)?,
                "host" | "hostaddr" | "port" if value.contains(',') || value.contains("%2C") => {
                    return Err(format!("a host list in `{key}=` is not supported: list the hosts before the path, as in postgres://user@db1:5432,db2:5432/tickets"));
                }
                _ => kept_parameters.push(parameter),
            }
        }
        let rest = match kept_parameters.is_empty() {
            true => path.to_string(),
            false => format!("{path}?{}", kept_parameters.join("&")),
        };
        let credentials = credentials.map(|credentials| format!("{credentials}@")).unwrap_or_default();
        let mut hosts = Vec::new();
        for host in split_hosts(host_list)? {
            let single = format!("{scheme}://{credentials}{host}{rest}");
            let options = PgConnectOptions::from_str(&single).map_err(|error| match host.is_empty() {
                true => error.to_string(),
                false => format!("host {host}: {error}"),
            })?;
            // sqlx keeps an IPv6 address in its brackets, which a socket
            // address does not take.
            let bracketed = options.get_host().strip_prefix('[').and_then(|inner| inner.strip_suffix(']'));
            let options = match bracketed.map(str::to_string) {
                Some(address) => options.host(&address),
                None => options,
            };
            hosts.push(Host { name: host.to_string(), options });
        }
        Ok(DatabaseUrl { url: url.to_string(), hosts, target })
    }

    /// The URL as written (password included).
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The hosts, in the order they are tried (one, with an empty name,
    /// when the URL names none: sqlx's defaults then apply).
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn target(&self) -> SessionAttrs {
        self.target
    }

    /// The same URL with `change` applied to every host's options (an
    /// application name, a statement timeout).
    pub fn with_options(mut self, change: impl Fn(PgConnectOptions) -> PgConnectOptions) -> DatabaseUrl {
        for host in &mut self.hosts {
            host.options = change(host.options.clone());
        }
        self
    }
}

/// `db1:5432,db2,[::1]:5433` → `["db1:5432", "db2", "[::1]:5433"]`. An
/// empty list gives one empty host (a URL such as `postgres:///tickets`).
fn split_hosts(host_list: &str) -> Result<Vec<&str>, String> {
    if host_list.is_empty() {
        return Ok(vec![""]);
    }
    let mut hosts = Vec::new();
    for host in host_list.split(',') {
        if host.is_empty() {
            return Err(format!("empty host in the host list {host_list:?}"));
        }
        hosts.push(host);
    }
    Ok(hosts)
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for
/// showing a URL (`check-config`).
pub fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    // The last `@` before the query ends the credentials: a password may
    // hold an `@` of its own, unencoded.
    let before_query = rest.split('?').next().unwrap_or(rest);
    let Some(at) = before_query.rfind('@') else { return url.to_string() };
    let (credentials, host) = (&rest[..at], &rest[at + 1..]);
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shown_url_hides_its_password_only() {
        assert_eq!(hide_password("postgres://ingest:s3cr@t@db:5432/t"), "postgres://ingest:***@db:5432/t");
        assert_eq!(hide_password("postgres://ingest@db/t"), "postgres://ingest@db/t");
        assert_eq!(hide_password("not a url"), "not a url");
    }

    fn host_and_port(url: &DatabaseUrl) -> Vec<(String, u16)> {
        url.hosts().iter().map(|host| (host.options.get_host().to_string(), host.options.get_port())).collect()
    }

    #[test]
    fn a_single_host_url_is_one_host_with_everything_sqlx_reads() {
        let url =
            DatabaseUrl::parse("postgres://alice:s3cret@db.example:6432/tickets?application_name=x").expect("parses");
        assert_eq!(url.target(), SessionAttrs::Any);
        let [host] = url.hosts() else { panic!("one host: {:?}", url.hosts()) };
        assert_eq!(host.name, "db.example:6432");
        assert_eq!(host.options.get_host(), "db.example");
        assert_eq!(host.options.get_port(), 6432);
        assert_eq!(host.options.get_username(), "alice");
        assert_eq!(host.options.get_database(), Some("tickets"));
        assert_eq!(host.options.get_application_name(), Some("x"));
    }

    #[test]
    fn a_host_list_is_tried_in_order_each_with_its_port_or_5432() {
        let url =
            DatabaseUrl::parse("postgresql://app@10.0.0.1:5433,db2,[::1]:5434/tickets?target_session_attrs=read-write")
                .expect("parses");
        assert_eq!(url.target(), SessionAttrs::ReadWrite);
        assert_eq!(
            host_and_port(&url),
            [("10.0.0.1".to_string(), 5433), ("db2".to_string(), 5432), ("::1".to_string(), 5434)]
        );
        for host in url.hosts() {
            assert_eq!(host.options.get_username(), "app");
            assert_eq!(host.options.get_database(), Some("tickets"));
        }
    }

    #[test]
    fn every_host_shares_the_credentials_and_the_other_parameters() {
        let url = DatabaseUrl::parse(
            "postgres://u:p%40ss@h1:1,h2:2/db?target_session_attrs=primary&application_name=ingest&sslmode=disable",
        )
        .expect("parses");
        assert_eq!(url.target(), SessionAttrs::Primary);
        for host in url.hosts() {
            assert_eq!(host.options.get_username(), "u");
            assert_eq!(host.options.get_application_name(), Some("ingest"));
        }
        assert_eq!(host_and_port(&url), [("h1".to_string(), 1), ("h2".to_string(), 2)]);
    }

    #[test]
    fn no_path_and_no_credentials_are_fine() {
        let url = DatabaseUrl::parse("postgres://h1:7,h2:8?target_session_attrs=any").expect("parses");
        assert_eq!(url.target(), SessionAttrs::Any);
        assert_eq!(host_and_port(&url), [("h1".to_string(), 7), ("h2".to_string(), 8)]);
    }

    #[test]
    fn unsupported_forms_are_refused_with_a_reason() {
        let refused = [
            ("mysql://h/db", "postgres://"),
            ("postgres://h1,,h2/db", "empty host"),
            ("postgres://h1:x/db", "h1:x"),
            ("postgres://h1,h2:99999/db", "h2:99999"),
            ("postgres://h1/db?target_session_attrs=standby", "standby"),
            ("postgres://u@/db?host=h1,h2", "host list"),
        ];
        for (url, reason) in refused {
            let error = DatabaseUrl::parse(url).expect_err(url);
            assert!(error.contains(reason), "{url}: {error}");
        }
    }

    #[test]
    fn with_options_changes_every_host() {
        let url = DatabaseUrl::parse("postgres://u@h1:1,h2:2/db")
            .expect("parses")
            .with_options(|options| options.application_name("console"));
        for host in url.hosts() {
            assert_eq!(host.options.get_application_name(), Some("console"));
        }
    }
}
