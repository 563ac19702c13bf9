//! Card fraud alerts over a sliding window of event time.
//!
//! Per card (the key), keeps the card's transactions of the last `window_ms`
//! milliseconds and emits an alert when the window's total spend exceeds
//! `max_spend` (reason `"spend"`) or its number of transactions exceeds
//! `max_count` (reason `"velocity"`). Transactions inside the limits emit
//! nothing. See README.md for the exact shapes.

use eddy_sdk::{emit, Config, Error, Event, List, Operator, Value};
use serde::{Deserialize, Serialize};

/// The card's recent transactions, oldest first.
const WINDOW: List<Entry> = List::new("window");
/// The card's lifetime spend.
const TOTAL_SPEND: Value<f64> = Value::new("total_spend");

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    window_ms: i64,
    max_spend: f64,
    max_count: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            window_ms: 60_000,
            max_spend: 1000.0,
            max_count: 5,
        }
    }
}

/// One input line. Other fields (such as `merchant`) are ignored.
#[derive(Deserialize)]
struct Transaction {
    card: String,
    amount: f64,
    ts: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    ts: i64,
    amount: f64,
}

#[derive(Serialize)]
struct Alert<'a> {
    card: &'a str,
    reason: &'static str,
    window_spend: f64,
    window_count: u32,
    total_spend: f64,
    ts: i64,
}

struct Fraud {
    settings: Settings,
}

impl Operator for Fraud {
    fn init(config: Config) -> Result<Self, Error> {
        let settings: Settings = config.parse()?;
        if settings.window_ms <= 0 {
            return Err(Error::msg("window_ms must be positive"));
        }
        if settings.max_spend < 0.0 {
            return Err(Error::msg("max_spend must be zero or more"));
        }
        Ok(Fraud { settings })
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        let txn: Transaction = event.json()?;
        let ts = event.time.or(txn.ts).ok_or_else(|| {
            Error::msg(format!(
                "transaction of card {} has no time: no pipeline time and no `ts` field",
                txn.card
            ))
        })?;

        let total_spend = TOTAL_SPEND.get()?.unwrap_or(0.0) + txn.amount;
        TOTAL_SPEND.set(&total_spend)?;

        WINDOW.push(&Entry {
            ts,
            amount: txn.amount,
        })?;
        let entries = WINDOW.all()?;
        let start = ts.saturating_sub(self.settings.window_ms);
        // The list is append-only, so drop the oldest entries that fell out
        // of the window. A late (out-of-order) transaction can leave an old
        // entry behind newer ones; the filter below skips it and a later
        // trim drops it.
        let stale = entries.iter().take_while(|e| e.ts < start).count();
        WINDOW.trim((entries.len() - stale) as u32);

        let in_window = entries[stale..]
            .iter()
            .filter(|e| (start..=ts).contains(&e.ts));
        let (window_count, window_spend) =
            in_window.fold((0u32, 0.0), |(n, sum), e| (n + 1, sum + e.amount));

        let reason = if window_spend > self.settings.max_spend {
            "spend"
        } else if window_count > self.settings.max_count {
            "velocity"
        } else {
            return Ok(());
        };
        let alert = Alert {
            card: &txn.card,
            reason,
            window_spend: cents(window_spend),
            window_count,
            total_spend: cents(total_spend),
            ts,
        };
        emit(event.key, &alert)
    }
}

eddy_sdk::export_operator!(Fraud);

/// Rounds an amount to cents, so sums print as `1034.5`, not `1034.4999999`.
fn cents(amount: f64) -> f64 {
    (amount * 100.0).round() / 100.0
}
