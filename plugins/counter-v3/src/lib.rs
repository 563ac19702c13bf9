//! The keyed counter, version 3: a new state format. Version 1 kept one
//! value `totals` = `{"count", "sum"}`; version 3 keeps `n` (events) and
//! `total` (sum) as two values, and its `migrate` converts the old format
//! on each key's first touch. Outputs are `{"n", "total", "version": 3}`.

use eddy_sdk::{emit, Config, Error, Event, Operator, Value};
use serde::{Deserialize, Serialize};

/// Version 1's state.
const TOTALS: Value<Totals> = Value::new("totals");
const N: Value<u64> = Value::new("n");
const TOTAL: Value<f64> = Value::new("total");

#[derive(Serialize, Deserialize)]
struct Totals {
    count: u64,
    sum: f64,
}

#[derive(Serialize)]
struct Out {
    n: u64,
    total: f64,
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

    fn migrate(&mut self, _previous: &str) -> Result<(), Error> {
        // Detect the old format from the state itself.
        if let Some(old) = TOTALS.get()? {
            N.set(&old.count)?;
            TOTAL.set(&old.sum)?;
            TOTALS.delete();
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        let payload: serde_json::Value = event.json()?;
        let amount = payload[&self.field].as_f64().unwrap_or(0.0);
        let n = N.get()?.unwrap_or(0) + 1;
        let total = TOTAL.get()?.unwrap_or(0.0) + amount;
        N.set(&n)?;
        TOTAL.set(&total)?;
        emit(
            event.key,
            &Out {
                n,
                total,
                version: 3,
            },
        )
    }
}

eddy_sdk::export_operator!(Counter);
