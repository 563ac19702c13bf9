//! Keyed counter: for every event, the key's running count and the sum of a
//! numeric field (`amount` unless the config says `field = "..."`).
//!
//! Emits `{"count": <events so far>, "sum": <sum so far>}` keyed like the
//! input. Events whose field is missing or not a number count with 0.

use std::fmt;

use eddy_sdk::serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use eddy_sdk::{emit, Config, Error, Event, Operator, Value};
use serde::{Deserialize, Serialize};

/// The key's totals, one state value so each event costs one read and one
/// write.
const TOTALS: Value<Totals> = Value::new("totals");

struct Counter {
    field: String,
}

#[derive(Serialize, Deserialize, Default)]
struct Totals {
    count: u64,
    sum: f64,
}

impl Operator for Counter {
    fn init(config: Config) -> Result<Self, Error> {
        let field = config
            .get::<String>("field")?
            .unwrap_or_else(|| "amount".to_string());
        Ok(Counter { field })
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        let amount = number_field(&event.value, &self.field)?;
        let mut t = TOTALS.get()?.unwrap_or_default();
        t.count += 1;
        t.sum += amount;
        TOTALS.set(&t)?;
        emit(&event.key, &t)
    }
}

eddy_sdk::export_operator!(Counter);

/// Reads one numeric top-level field of a JSON object without building the
/// whole document; 0 when it is missing or not a number.
fn number_field(json: &[u8], field: &str) -> Result<f64, Error> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let v = FieldSeed(field)
        .deserialize(&mut de)
        .map_err(|e| Error::msg(format!("payload is not a JSON object: {e}")))?;
    Ok(v)
}

struct FieldSeed<'f>(&'f str);

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = f64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<f64, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<f64, A::Error> {
        let mut found = 0.0;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == self.0 {
                let v: serde_json::Value = map.next_value()?;
                found = v.as_f64().unwrap_or(0.0);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}
