//! The keyed counter, version 2: the same state as version 1 (`totals`:
//! `{"count", "sum"}`), and outputs tagged `"version": 2`, so a test can
//! tell which version handled each event. Used to test hot swap.

use eddy_sdk::{emit, Config, Error, Event, Operator, Value};
use serde::{Deserialize, Serialize};

const TOTALS: Value<Totals> = Value::new("totals");

#[derive(Serialize, Deserialize, Default)]
struct Totals {
    count: u64,
    sum: f64,
}

#[derive(Serialize)]
struct Out {
    count: u64,
    sum: f64,
    version: u32,
}

struct Counter {
    field: String,
}

impl Operator for Counter {
    fn init(config: Config) -> Result<Self, Error> {
        let field = config
            .get::<String>("field")?
            .unwrap_or_else(|| "amount".to_string());
        Ok(Counter { field })
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        let payload: serde_json::Value = event.json()?;
        let amount = payload[&self.field].as_f64().unwrap_or(0.0);
        let mut t = TOTALS.get()?.unwrap_or_default();
        t.count += 1;
        t.sum += amount;
        TOTALS.set(&t)?;
        emit(
            event.key,
            &Out {
                count: t.count,
                sum: t.sum,
                version: 2,
            },
        )
    }
}

eddy_sdk::export_operator!(Counter);
