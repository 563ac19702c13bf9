//! Keyed counter: for every event, the key's running count and the sum of a
//! numeric field (`amount` unless the config says `field = "..."`).
//!
//! Emits `{"count": <events so far>, "sum": <sum so far>}` keyed like the
//! input. Events whose field is missing or not a number count with 0.

use std::fmt;

use eddy_sdk::serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use eddy_sdk::{emit_raw, Config, Error, Event, Operator, Value};
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
        // One encoding for both the state and the emitted event.
        let json = serde_json::to_vec(&t).map_err(|e| Error::msg(format!("cannot encode totals: {e}")))?;
        emit_raw(&event.key, &json);
        TOTALS.set_json(json);
        Ok(())
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
        while let Some(key) = map.next_key::<FieldName<'de>>()? {
            if key.0 == self.0 {
                found = map.next_value::<NumberOrZero>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A field name, borrowed from the input unless it has escapes.
struct FieldName<'de>(std::borrow::Cow<'de, str>);

impl<'de> eddy_sdk::serde::Deserialize<'de> for FieldName<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FieldName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(FieldName(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FieldName(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON value read as a number: 0 for anything that is not a number.
struct NumberOrZero(f64);

impl<'de> eddy_sdk::serde::Deserialize<'de> for NumberOrZero {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NumberOrZero;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(NumberOrZero(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(NumberOrZero(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(NumberOrZero(v as f64))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(NumberOrZero(0.0))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(NumberOrZero(0.0))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(NumberOrZero(0.0))
            }
            fn visit_seq<A: eddy_sdk::serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<Self::Value, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(NumberOrZero(0.0))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(NumberOrZero(0.0))
            }
        }
        d.deserialize_any(V)
    }
}
