//! A key's committed state as JSON, for `GET /state/...` and `eddy state
//! get|scan`: what the last checkpoint made durable (a read transaction of
//! the state database sees exactly the last committed checkpoint).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::{record_json, Store};

/// Most keys one scan returns.
pub const MAX_SCAN: usize = 10_000;

/// Keys a scan returns when its request names no limit.
pub const DEFAULT_SCAN: usize = 100;

/// Why a state query has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The operator, key or name has no committed state (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The state could not be read (HTTP 500).
    #[error("{0}")]
    Failed(String),
}

/// One key of a scan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyState {
    /// The key.
    pub key: String,
    /// Its state: `{"values": .., "maps": .., "lists": ..}`.
    pub state: Value,
}

/// What a scan returns: keys in key order, and whether more follow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scan {
    /// The keys, in key order.
    pub keys: Vec<KeyState>,
    /// More keys matched than the limit.
    pub more: bool,
}

/// The committed state of `key` of `operator` (`{"values": .., "maps":
/// .., "lists": ..}`, values decoded as JSON when they are JSON), or with
/// `name` that one value, map or list.
pub fn state_get(
    store: &Store,
    operator: &str,
    key: &str,
    name: Option<&str>,
) -> Result<Value, QueryError> {
    let record = store
        .record(operator, key)
        .map_err(|e| QueryError::Failed(e.to_string()))?
        .ok_or_else(|| {
            QueryError::NotFound(format!(
                "operator {operator:?} has no committed state for key {key:?}"
            ))
        })?;
    let state = record_json(&record).map_err(|e| {
        QueryError::Failed(format!("the record of key {key:?} of {operator:?}: {e}"))
    })?;
    match name {
        None => Ok(state),
        Some(name) => ["values", "maps", "lists"]
            .iter()
            .find_map(|kind| state[kind].get(name).cloned())
            .ok_or_else(|| {
                QueryError::NotFound(format!(
                    "key {key:?} of operator {operator:?} has no value, map or list named {name:?} (it has: {})",
                    names(&state)
                ))
            }),
    }
}

/// Up to `limit` keys of `operator` that start with `prefix`, with their
/// committed state, in key order.
pub fn state_scan(
    store: &Store,
    operator: &str,
    prefix: &str,
    limit: usize,
) -> Result<Scan, QueryError> {
    let (keys, more) = store
        .scan_prefix(operator, prefix, limit)
        .map_err(|e| QueryError::Failed(e.to_string()))?;
    if keys.is_empty() && prefix.is_empty() {
        return Err(QueryError::NotFound(format!(
            "operator {operator:?} has no committed state"
        )));
    }
    let keys = keys
        .into_iter()
        .map(|(key, record)| {
            let state = record_json(&record).map_err(|e| {
                QueryError::Failed(format!("the record of key {key:?} of {operator:?}: {e}"))
            })?;
            Ok(KeyState { key, state })
        })
        .collect::<Result<_, QueryError>>()?;
    Ok(Scan { keys, more })
}

/// The names in a key's state view, for an error message.
fn names(state: &Value) -> String {
    let all: Vec<&str> = ["values", "maps", "lists"]
        .iter()
        .filter_map(|k| state[k].as_object())
        .flat_map(|o| o.keys().map(String::as_str))
        .collect();
    match all.is_empty() {
        true => "nothing".into(),
        false => all.join(", "),
    }
}
