//! Native Rust operators behind the same host state path as Wasm ones:
//! the baseline for measuring the cost of running operators as Wasm.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::host::OpCtx;
use crate::operator::{EventRef, HandleError, Operator};

/// The keyed counter of `plugins/counter`, written natively: per key, the
/// running count and the sum of a numeric field, emitted on every event.
pub struct NativeCounter {
    ctx: OpCtx,
    field: String,
}

impl NativeCounter {
    /// A counter summing `field`.
    pub fn new(ctx: OpCtx, field: &str) -> Self {
        NativeCounter {
            ctx,
            field: field.to_string(),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Totals {
    count: u64,
    sum: f64,
}

impl Operator for NativeCounter {
    fn ctx(&mut self) -> &mut OpCtx {
        &mut self.ctx
    }

    fn handle(&mut self, event: EventRef<'_>) -> Result<(), HandleError> {
        let fail = |e: &dyn fmt::Display| HandleError::Failed(e.to_string());
        let mut de = serde_json::Deserializer::from_slice(event.value);
        let amount = FieldSeed(&self.field)
            .deserialize(&mut de)
            .map_err(|e| fail(&e))?;
        let mut t: Totals = match self.ctx.get("totals").map_err(|e| fail(&e))? {
            Some(b) => serde_json::from_slice(b).map_err(|e| fail(&e))?,
            None => Totals::default(),
        };
        t.count += 1;
        t.sum += amount;
        let out = serde_json::to_vec(&t).map_err(|e| fail(&e))?;
        self.ctx.set("totals", out.clone()).map_err(|e| fail(&e))?;
        self.ctx
            .emit(event.key.to_string(), out)
            .map_err(|e| fail(&e))
    }
}

/// Reads one numeric top-level field of a JSON object; 0 when missing.
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
