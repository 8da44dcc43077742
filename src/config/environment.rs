//! The `TICKET_INGEST_<KEY>` layer (see the module docs of
//! [`crate::config`], The environment layer): which variables are keys,
//! how their values are read, and the key meant by a misspelled one.

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use super::{defaults_by_key, ConfigError, ENV_PREFIX, SCRIPT_VARIABLES};

/// The `TICKET_INGEST_<KEY>` layer (module docs, The environment layer).
pub(super) struct EnvironmentLayer {
    /// Values by key, parsed.
    pub(super) values: Dict,
}

impl EnvironmentLayer {
    /// Takes the `TICKET_INGEST_*` variables of `environment`; refuses those
    /// that name no key (all of them named in one error).
    pub(super) fn read(environment: &[(String, String)]) -> Result<EnvironmentLayer, ConfigError> {
        let defaults = defaults_by_key();
        let mut values = Dict::new();
        let mut unknown = Vec::new();
        for (name, text) in environment {
            let Some(key) = key_of_variable(name) else { continue };
            match defaults.get(&key) {
                Some(default) if default.is_array() => {
                    let list =
                        list_value(text).map_err(|reason| ConfigError::NotAList { variable: name.clone(), reason })?;
                    values.insert(key, list);
                }
                Some(_) => {
                    values.insert(key, parse_value(text));
                }
                None if SCRIPT_VARIABLES.iter().any(|script_variable| script_variable.eq_ignore_ascii_case(name)) => {}
                None => unknown.push(describe_unknown_variable(name, &defaults)),
            }
        }
        if !unknown.is_empty() {
            unknown.sort();
            return Err(ConfigError::UnknownVariables { unknown });
        }
        Ok(EnvironmentLayer { values })
    }
}

impl Provider for EnvironmentLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("the environment")
            .interpolater(|_: &Profile, path: &[&str]| format!("{ENV_PREFIX}{}", path.join(".").to_ascii_uppercase()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// `TICKET_INGEST_BATCH_MAX_TICKETS` → `batch_max_tickets`; `None` for a
/// variable without the prefix. Case is ignored, as figment's `Env` does.
fn key_of_variable(name: &str) -> Option<String> {
    let prefix = name.get(..ENV_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(ENV_PREFIX) {
        return None;
    }
    Some(name[ENV_PREFIX.len()..].trim().to_ascii_lowercase())
}

/// A value as figment's `Env` parses it: `4`, `true`, `"text"`, `[1, 2]`…
fn parse_value(text: &str) -> Value {
    match text.parse::<Value>() {
        Ok(value) => value,
        Err(never) => match never {},
    }
}

/// The value of a list-valued key: `[a, b]` as figment parses it, else one
/// item or items separated by commas, as text, trimmed (empty items are
/// dropped). The error completes "environment variable X …".
fn list_value(text: &str) -> Result<Value, &'static str> {
    let text = text.trim();
    if text.is_empty() {
        return Err("is empty: write [] for an empty list");
    }
    if text.starts_with('[') {
        return match parse_value(text) {
            list @ Value::Array(..) => Ok(list),
            _ => Err("starts with `[` but is no list such as [a, b] (value not shown: it may be a secret)"),
        };
    }
    let items: Vec<&str> = text.split(',').map(str::trim).filter(|item| !item.is_empty()).collect();
    Ok(Value::from(items))
}

/// `TICKET_INGEST_BATCH_MAX_TICKTS (did you mean
/// TICKET_INGEST_BATCH_MAX_TICKETS?)`: the nearest variable within three
/// edits, if any.
fn describe_unknown_variable(name: &str, defaults: &serde_json::Map<String, serde_json::Value>) -> String {
    let key_variables = defaults.keys().map(|key| format!("{ENV_PREFIX}{}", key.to_ascii_uppercase()));
    let candidates = key_variables.chain(SCRIPT_VARIABLES.iter().map(|variable| variable.to_string()));
    let upper_name = name.to_ascii_uppercase();
    let mut nearest: Option<(usize, String)> = None;
    for candidate in candidates {
        let distance = edit_distance(&upper_name, &candidate);
        if distance <= 3 && nearest.as_ref().map_or(true, |(best, _)| distance < *best) {
            nearest = Some((distance, candidate));
        }
    }
    match nearest {
        Some((_, candidate)) => format!("{name} (did you mean {candidate}?)"),
        None => name.to_string(),
    }
}

/// Levenshtein distance: insertions, deletions and substitutions of one
/// character each count one.
fn edit_distance(from: &str, to: &str) -> usize {
    let to: Vec<char> = to.chars().collect();
    let mut previous_row: Vec<usize> = (0..=to.len()).collect();
    for (i, from_char) in from.chars().enumerate() {
        let mut row = vec![i + 1; to.len() + 1];
        for (j, to_char) in to.iter().enumerate() {
            let substitution = previous_row[j] + usize::from(from_char != *to_char);
            row[j + 1] = substitution.min(previous_row[j + 1] + 1).min(row[j] + 1);
        }
        previous_row = row;
    }
    previous_row[to.len()]
}
