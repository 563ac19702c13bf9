//! Keyed counter: for every event, the key's running count and the sum of
//! its `amount` field, written the way the README teaches: a serde type for
//! the event, a typed state value, `emit` of a serializable value. No hand
//! tuning; what makes it fast is in the SDK and the host, where every
//! operator gets it.
//!
//! Emits `{"count": .., "sum": ..}` keyed like the input. An event without
//! `amount` counts with 0; one whose `amount` is not a number is refused
//! (dead-lettered with serde's reason) and leaves the totals unchanged.

use eddy_sdk::{emit, Config, Error, Event, Operator, Value};
use serde::{Deserialize, Serialize};

/// The key's totals.
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
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(Counter)
    }

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
