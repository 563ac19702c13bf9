//! {{name}}: for every event, the key's running count of events and the
//! sum of their `amount` (0 when absent), emitted as
//! `{"count": .., "sum": ..}` keyed like the input. An `amount` that is not
//! a number dead-letters the event.

use eddy_sdk::{emit, Config, Error, Event, Operator, Value};
use serde::{Deserialize, Serialize};

/// The key's totals: one state value per key.
const TOTALS: Value<Totals> = Value::new("totals");

/// An input event: only `amount` is read.
#[derive(Deserialize)]
struct Purchase {
    #[serde(default)]
    amount: f64,
}

#[derive(Serialize, Deserialize, Default)]
struct Totals {
    count: u64,
    sum: f64,
}

struct Counter;

impl Operator for Counter {
    /// Once per instance, with the pipeline's `config` for this operator.
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(Counter)
    }

    /// Once per event; the state calls act on `event.key`'s state.
    fn handle(&mut self, event: Event) -> Result<(), Error> {
        let purchase: Purchase = event.json()?;
        let mut totals = TOTALS.get()?.unwrap_or_default();
        totals.count += 1;
        totals.sum += purchase.amount;
        TOTALS.set(&totals)?;
        emit(event.key, &totals)?;
        Ok(())
    }
}

eddy_sdk::export_operator!(Counter);
