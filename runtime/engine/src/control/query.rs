//! A key's committed state as JSON, for `GET /state/...` and `eddy state
//! get|scan`: what the last checkpoint made durable (a read transaction of
//! the state database sees exactly the last committed checkpoint).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::{record_json, spilled_maps, value_json, Reader, Store};

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
    let failed = |e: crate::state::StoreError| QueryError::Failed(e.to_string());
    let reader = store.reader().map_err(failed)?;
    let record = reader.get(operator, key).map_err(failed)?.ok_or_else(|| {
        QueryError::NotFound(format!(
            "operator {operator:?} has no committed state for key {key:?}"
        ))
    })?;
    let mut state = record_json(&record).map_err(|e| {
        QueryError::Failed(format!("the record of key {key:?} of {operator:?}: {e}"))
    })?;
    fill_spilled(&reader, operator, key, &record, &mut state).map_err(failed)?;
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
    let failed = |e: crate::state::StoreError| QueryError::Failed(e.to_string());
    let reader = store.reader().map_err(failed)?;
    let (keys, more) = reader
        .scan_prefix(operator, prefix, limit)
        .map_err(failed)?;
    if keys.is_empty() && prefix.is_empty() {
        return Err(QueryError::NotFound(format!(
            "operator {operator:?} has no committed state"
        )));
    }
    let keys = keys
        .into_iter()
        .map(|(key, record)| {
            let mut state = record_json(&record).map_err(|e| {
                QueryError::Failed(format!("the record of key {key:?} of {operator:?}: {e}"))
            })?;
            fill_spilled(&reader, operator, &key, &record, &mut state).map_err(failed)?;
            Ok(KeyState { key, state })
        })
        .collect::<Result<_, QueryError>>()?;
    Ok(Scan { keys, more })
}

/// Most items of a spilled list a query shows whole; a longer one is
/// shown as `{"len": N, "first": [..], "last": [..]}` with
/// [`SHOWN_ENDS`] items at each end.
pub const MAX_LIST_SHOWN: u64 = 10_000;

/// Items shown at each end of a list longer than [`MAX_LIST_SHOWN`].
pub const SHOWN_ENDS: u64 = 100;

/// Most fields of a spilled map a query shows whole; a bigger one is
/// shown as `{"len": N, "first": {..}}` with its first [`SHOWN_ENDS`]
/// fields.
pub const MAX_MAP_SHOWN: u64 = 10_000;

/// Replaces each spilled list and map of `state` (as [`record_json`]
/// shows `record`) by its items or fields, read from `reader` (the one
/// that read the record).
fn fill_spilled(
    reader: &Reader,
    operator: &str,
    key: &str,
    record: &[u8],
    state: &mut Value,
) -> Result<(), crate::state::StoreError> {
    // `record_json` decoded the same record: it is not corrupt.
    for (name, len) in spilled_maps(record).unwrap_or_default() {
        let shown = len.min(if len <= MAX_MAP_SHOWN {
            MAX_MAP_SHOWN
        } else {
            SHOWN_ENDS
        });
        let mut fields = serde_json::Map::new();
        reader.map_fields(operator, key, &name, "", &mut |f, v| {
            fields.insert(f.to_string(), value_json(v));
            (fields.len() as u64) < shown
        })?;
        let fields = Value::Object(fields);
        state["maps"][name.as_str()] = if len <= MAX_MAP_SHOWN {
            fields
        } else {
            serde_json::json!({ "len": len, "first": fields })
        };
    }
    let Some(lists) = state.get_mut("lists").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    for (name, list) in lists.iter_mut() {
        let Some(spilled) = list.get("spilled") else {
            continue;
        };
        let start = spilled["start"].as_u64().unwrap_or(0);
        let len = spilled["len"].as_u64().unwrap_or(0);
        let items = |from: u64, to: u64| -> Result<Value, crate::state::StoreError> {
            let mut out = Vec::new();
            reader.list_items(operator, key, name, from, to, &mut |i| {
                out.push(value_json(i))
            })?;
            Ok(Value::Array(out))
        };
        *list = if len <= MAX_LIST_SHOWN {
            items(start, start + len)?
        } else {
            serde_json::json!({
                "len": len,
                "first": items(start, start + SHOWN_ENDS)?,
                "last": items(start + len - SHOWN_ENDS, start + len)?,
            })
        };
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Checkpoint, Entity, StateWrite};

    /// Commits key `key` of operator `op` with map `m` of `n` fields
    /// (`f00000` = 0, ...), spilled as a barrier spills it.
    fn spilled_map(store: &Store, key: &str, n: u64) {
        let names: Vec<Box<str>> = vec!["m".into(), "v".into()];
        let mut e = Entity::default();
        let mut j = Vec::new();
        e.set(1, b"7", &mut j);
        for i in 0..n {
            e.map_set(
                0,
                format!("f{i:05}"),
                i.to_string().into_bytes(),
                None,
                &mut j,
            );
        }
        let mut maps = Vec::new();
        e.hand_over_maps(&names, &mut maps);
        assert_eq!(maps.len(), 1, "spilled");
        let mut record = Vec::new();
        e.encode(&names, &mut record);
        let cp = Checkpoint {
            seq: 1,
            writes: vec![StateWrite {
                operator: "op".into(),
                key: key.into(),
                record: Some(record),
                lists: Vec::new(),
                maps,
            }]
            .into(),
            ..Default::default()
        };
        store.commit(&cp).unwrap();
    }

    #[test]
    fn a_spilled_map_is_shown_whole_up_to_the_bound_then_by_its_first_fields() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        spilled_map(&store, "small", 600);
        let shown = state_get(&store, "op", "small", None).unwrap();
        let want: serde_json::Map<String, Value> =
            (0..600).map(|i| (format!("f{i:05}"), i.into())).collect();
        assert_eq!(shown["maps"]["m"], Value::Object(want.clone()));
        assert_eq!(shown["values"]["v"], 7);
        assert_eq!(
            state_get(&store, "op", "small", Some("m")).unwrap(),
            Value::Object(want)
        );
        let n = MAX_MAP_SHOWN + 1;
        spilled_map(&store, "big", n);
        let shown = state_get(&store, "op", "big", Some("m")).unwrap();
        assert_eq!(shown["len"], n);
        let first = shown["first"].as_object().unwrap();
        assert_eq!(first.len() as u64, SHOWN_ENDS);
        assert_eq!(first["f00000"], 0);
        assert_eq!(first["f00099"], 99);
        let scan = state_scan(&store, "op", "", 10).unwrap();
        assert_eq!(scan.keys.len(), 2);
        assert_eq!(scan.keys[0].state["maps"]["m"]["len"], n);
        assert_eq!(scan.keys[1].state["maps"]["m"]["f00599"], 599);
    }
}
