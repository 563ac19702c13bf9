//! A key's stored state as JSON, for people and tools (`eddy state`).

use serde_json::{json, Map, Value};

use super::{CorruptRecord, Entity};

/// A stored value as JSON: the value itself when its bytes are JSON (what
/// the SDKs write), else `{"bytes": "<hex>"}`.
pub fn value_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        json!({ "bytes": hex })
    })
}

/// The spilled maps of a stored record, with their number of fields, in
/// name order: their fields are rows of their own, which
/// [`record_json`] leaves out.
pub fn spilled_maps(record: &[u8]) -> Result<Vec<(String, u64)>, CorruptRecord> {
    let mut names: Vec<String> = Vec::new();
    let e = Entity::decode(record, &mut |n| match names.iter().position(|t| t == n) {
        Some(i) => i as u32,
        None => {
            names.push(n.to_string());
            (names.len() - 1) as u32
        }
    })?;
    let mut out: Vec<(String, u64)> = e
        .x()
        .maps
        .iter()
        .filter(|(_, m)| m.spill().is_some())
        .map(|(n, m)| (names[*n as usize].clone(), m.len()))
        .collect();
    out.sort();
    Ok(out)
}

/// A stored record (see [`Entity::encode`]) as
/// `{"values": {name: value}, "maps": {name: {field: value}}, "lists": {name: [value]}}`,
/// each value shown by [`value_json`]; names in order. A spilled list,
/// whose items are rows of their own, is shown as
/// `{"spilled": {"start": <index of its oldest item>, "len": <items>}}`;
/// a spilled map, whose fields are rows of their own, as `{}` (the
/// caller reads its fields: see `spilled_maps`). Errors name what is
/// corrupt.
pub fn record_json(record: &[u8]) -> Result<Value, CorruptRecord> {
    let mut names: Vec<String> = Vec::new();
    let e = Entity::decode(record, &mut |n| match names.iter().position(|t| t == n) {
        Some(i) => i as u32,
        None => {
            names.push(n.to_string());
            (names.len() - 1) as u32
        }
    })?;
    let name = |n: u32| names[n as usize].clone();
    let mut values: Vec<(String, Value)> =
        e.values().map(|(n, v)| (name(n), value_json(v))).collect();
    values.sort_by(|a, b| a.0.cmp(&b.0));
    let mut maps: Vec<(String, Value)> = e
        .x()
        .maps
        .iter()
        .map(|(n, m)| {
            let fields: Map<String, Value> = m
                .fields()
                .iter()
                .map(|(f, v)| (f.clone(), value_json(v)))
                .collect();
            (name(*n), Value::Object(fields))
        })
        .collect();
    maps.sort_by(|a, b| a.0.cmp(&b.0));
    let mut lists: Vec<(String, Value)> = e
        .x()
        .lists
        .iter()
        .map(|(n, l)| {
            let shown = match l.spill() {
                None => Value::Array(l.items.iter().map(|v| value_json(v)).collect()),
                // Its items are rows of their own: the caller reads them
                // (see `crate::control`'s state queries).
                Some(s) => json!({ "spilled": { "start": s.start, "len": l.len() } }),
            };
            (name(*n), shown)
        })
        .collect();
    lists.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(json!({
        "values": Map::from_iter(values),
        "maps": Map::from_iter(maps),
        "lists": Map::from_iter(lists),
    }))
}
