//! Native Rust operators behind the same host state path as Wasm ones:
//! the baseline for measuring the cost of running operators as Wasm.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::window::{Aggregate, WindowInfo};
use super::OpCtx;
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
        self.ctx.set("totals", &out).map_err(|e| fail(&e))?;
        self.ctx.emit(event.key, &out).map_err(|e| fail(&e))
    }
}

/// The aggregate of a window: the count of its events and the sum of a
/// numeric field, emitted as `{"start": .., "end": .., "count": ..,
/// "sum": ..}` (the native baseline of a window operator).
pub struct WindowSum {
    field: String,
}

impl WindowSum {
    /// Counts events and sums `field`.
    pub fn new(field: &str) -> Self {
        WindowSum {
            field: field.to_string(),
        }
    }
}

impl WindowSum {
    fn totals(acc: &[u8]) -> Result<Totals, HandleError> {
        serde_json::from_slice(acc).map_err(|e| HandleError::Failed(e.to_string()))
    }
}

impl Aggregate for WindowSum {
    fn add(&mut self, acc: &mut Option<Vec<u8>>, event: &EventRef<'_>) -> Result<(), HandleError> {
        let mut de = serde_json::Deserializer::from_slice(event.value);
        let amount = FieldSeed(&self.field)
            .deserialize(&mut de)
            .map_err(|e| HandleError::Failed(e.to_string()))?;
        let mut t = match acc {
            None => Totals::default(),
            Some(a) => Self::totals(a)?,
        };
        t.count += 1;
        t.sum += amount;
        let a = acc.get_or_insert_with(Vec::new);
        a.clear();
        serde_json::to_writer(&mut *a, &t).map_err(|e| HandleError::Failed(e.to_string()))
    }

    fn merge(&mut self, accs: &[&[u8]]) -> Result<Vec<u8>, HandleError> {
        let mut all = Totals::default();
        for a in accs {
            let t = Self::totals(a)?;
            all.count += t.count;
            all.sum += t.sum;
        }
        serde_json::to_vec(&all).map_err(|e| HandleError::Failed(e.to_string()))
    }

    fn finish(
        &mut self,
        w: &WindowInfo<'_>,
        accs: &[&[u8]],
    ) -> Result<Option<Vec<u8>>, HandleError> {
        let mut t = Totals::default();
        for a in accs {
            let p = Self::totals(a)?;
            t.count += p.count;
            t.sum += p.sum;
        }
        #[derive(serde::Serialize)]
        struct Out {
            start: i64,
            end: i64,
            count: u64,
            sum: f64,
        }
        let out = Out {
            start: w.start,
            end: w.end,
            count: t.count,
            sum: t.sum,
        };
        serde_json::to_vec(&out)
            .map(Some)
            .map_err(|e| HandleError::Failed(e.to_string()))
    }
}

/// Reads one numeric top-level field of a JSON object; 0 when missing.
/// (The same code as `plugins/counter`, which cannot depend on the runtime:
/// the baseline must do the same work as the component.)
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
        while let Some(key) = map.next_key::<crate::source::FieldName<'de>>()? {
            if key.0 == self.0 {
                found = map.next_value::<NumberOrZero>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A JSON value read as a number: 0 for anything that is not a number.
struct NumberOrZero(f64);

impl<'de> serde::Deserialize<'de> for NumberOrZero {
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
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
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
