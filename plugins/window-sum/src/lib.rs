//! A window aggregate: per key and window, the number of events and the
//! sum of a numeric field (config `field`, default `amount`; a missing
//! field counts as 0, one that is not a number fails the event), emitted as `{"start": .., "end": ..,
//! "count": .., "sum": ..}`. The same output as the host's native
//! `WindowSum`, which `eddy bench window` compares it with.

use eddy_sdk::window::{Aggregate, Window, WindowEvent};
use eddy_sdk::{Config, Error};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

struct WindowSum {
    field: String,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Totals {
    count: u64,
    sum: f64,
}

#[derive(Serialize)]
struct Out {
    start: i64,
    end: i64,
    count: u64,
    sum: f64,
}

impl Aggregate for WindowSum {
    type Acc = Totals;
    type Output = Out;

    fn init(config: Config) -> Result<Self, Error> {
        let field = config
            .get::<String>("field")?
            .unwrap_or_else(|| "amount".into());
        Ok(WindowSum { field })
    }

    fn create(&self) -> Totals {
        Totals::default()
    }

    fn add(&self, acc: &mut Totals, event: WindowEvent<'_>) -> Result<(), Error> {
        let mut de = eddy_sdk::serde_json::Deserializer::from_slice(event.value);
        let amount = de
            .deserialize_map(Field(&self.field))
            .map_err(|e| Error::msg(format!("cannot read the payload: {e}")))?;
        acc.count += 1;
        acc.sum += amount;
        Ok(())
    }

    fn merge(&self, into: &mut Totals, other: Totals) -> Result<(), Error> {
        into.count += other.count;
        into.sum += other.sum;
        Ok(())
    }

    fn finish(&self, w: Window<'_>, acc: Totals) -> Result<Option<Out>, Error> {
        Ok(Some(Out {
            start: w.start,
            end: w.end,
            count: acc.count,
            sum: acc.sum,
        }))
    }
}

/// Reads one numeric top-level field of a JSON object; 0 when missing or
/// not a number.
struct Field<'f>(&'f str);

impl<'de> Visitor<'de> for Field<'_> {
    type Value = f64;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<f64, A::Error> {
        let mut found = 0.0;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == self.0 {
                found = match map.next_value::<eddy_sdk::serde_json::Value>()? {
                    eddy_sdk::serde_json::Value::Number(n) => n.as_f64().unwrap_or(0.0),
                    other => {
                        return Err(serde::de::Error::custom(format!(
                            "field `{}` is {other}, not a number",
                            self.0
                        )))
                    }
                };
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

eddy_sdk::export_window!(WindowSum);
