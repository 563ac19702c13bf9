//! Card fraud alerts over a hopping window: the pipeline declares the
//! operator `window = { kind = "hopping", size = 60000, slide = 10000 }`
//! (the last minute of each card, every 10 seconds), the host keeps the
//! windows, and this aggregate sums each window's spend (in cents, so sums
//! are exact) and counts its transactions. A window over `max_spend`
//! (config, default 1000.00) or with more than `max_count` transactions
//! (default 5) emits an alert naming why:
//! `{"card": .., "start": .., "end": .., "count": .., "spend": .., "alerts": ["spend", "velocity"]}`;
//! other windows emit nothing. A transaction without an `amount` fails
//! (dead-lettered, left out of its windows).

use eddy_sdk::window::{Aggregate, Window, WindowEvent};
use eddy_sdk::{Config, Error};
use serde::{Deserialize, Serialize};

struct Fraud {
    max_spend_cents: i64,
    max_count: u64,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Totals {
    count: u64,
    cents: i64,
}

#[derive(Deserialize)]
struct Payment {
    amount: f64,
}

#[derive(Serialize)]
struct Alert<'a> {
    card: &'a str,
    start: i64,
    end: i64,
    count: u64,
    spend: f64,
    alerts: Vec<&'static str>,
}

impl Aggregate for Fraud {
    type Acc = Totals;
    type Output = eddy_sdk::serde_json::Value;

    fn init(config: Config) -> Result<Self, Error> {
        let max_spend = config.get::<f64>("max_spend")?.unwrap_or(1000.0);
        Ok(Fraud {
            max_spend_cents: (max_spend * 100.0).round() as i64,
            max_count: config.get::<u64>("max_count")?.unwrap_or(5),
        })
    }

    fn create(&self) -> Totals {
        Totals::default()
    }

    fn add(&self, acc: &mut Totals, event: WindowEvent<'_>) -> Result<(), Error> {
        let p: Payment = event.json()?;
        acc.count += 1;
        acc.cents += (p.amount * 100.0).round() as i64;
        Ok(())
    }

    fn merge(&self, into: &mut Totals, other: Totals) -> Result<(), Error> {
        into.count += other.count;
        into.cents += other.cents;
        Ok(())
    }

    fn finish(&self, w: Window<'_>, acc: Totals) -> Result<Option<Self::Output>, Error> {
        let mut alerts = Vec::new();
        if acc.cents > self.max_spend_cents {
            alerts.push("spend");
        }
        if acc.count > self.max_count {
            alerts.push("velocity");
        }
        if alerts.is_empty() {
            return Ok(None);
        }
        let alert = Alert {
            card: w.key,
            start: w.start,
            end: w.end,
            count: acc.count,
            spend: acc.cents as f64 / 100.0,
            alerts,
        };
        eddy_sdk::serde_json::to_value(alert)
            .map(Some)
            .map_err(|e| Error::msg(e.to_string()))
    }
}

eddy_sdk::export_window!(Fraud);
