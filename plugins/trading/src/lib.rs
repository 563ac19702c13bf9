//! Trading: per symbol (the key), one-minute bars (open, high, low, close,
//! volume) from trades, and a moving-average crossover signal over the bars'
//! closes. See README.md for the exact shapes.
//!
//! A trade adds to the bar of its minute (by event time) and, for the
//! minute's first trade, sets an event-time timer at the minute's last
//! millisecond. The timer fires once the watermark is past the minute, so
//! the bar comes out when its minute closes, even if the symbol never trades
//! again (at the end of a file input the watermark goes to +infinity). When
//! a bar closes, its close joins the last `long` closes; once there are that
//! many, the average of the last `short` closes is compared with the average
//! of all `long`: when the short average crosses above the long one the
//! operator emits a `buy` signal, when it crosses below a `sell`.

use eddy_sdk::{emit, timers, Config, Error, Event, Fired, Operator, Value};
use serde::{Deserialize, Serialize};

/// The bars of the symbol whose minute has not closed yet, oldest first
/// (more than one when trades arrive out of order across a minute's end).
const OPEN: Value<Vec<Bar>> = Value::new("open");
/// The closed bars' closes and the side of the last comparison.
const TREND: Value<Trend> = Value::new("trend");

/// The prefix of a bar's timer name; the rest is the minute's start.
const TIMER: &str = "bar ";

#[derive(Serialize, Deserialize, Clone)]
struct Bar {
    /// Start of the minute (event time, ms).
    minute: i64,
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    volume: u64,
    trades: u64,
    /// Event times of the trades that set `open` and `close`.
    open_ts: i64,
    close_ts: i64,
}

#[derive(Serialize, Deserialize, Default)]
struct Trend {
    /// Start of the last minute whose bar was emitted.
    closed_through: Option<i64>,
    /// The last `long` closes, oldest first.
    closes: Vec<f64>,
    /// Whether the short average was above the long one at the last bar
    /// where they differed (`None` until there are `long` closes).
    short_above: Option<bool>,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    bar_ms: i64,
    short: usize,
    long: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bar_ms: 60_000,
            short: 3,
            long: 6,
        }
    }
}

/// One input line.
#[derive(Deserialize)]
struct Trade {
    symbol: String,
    price: f64,
    qty: u64,
}

#[derive(Serialize)]
struct BarOut<'a> {
    symbol: &'a str,
    minute: i64,
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    volume: u64,
    trades: u64,
}

#[derive(Serialize)]
struct Signal<'a> {
    signal: &'a str,
    symbol: &'a str,
    minute: i64,
    close: f64,
    short_avg: f64,
    long_avg: f64,
}

struct Trading {
    bar_ms: i64,
    short: usize,
    long: usize,
}

/// `x` rounded to 4 decimals, for the averages a signal shows.
fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

impl Operator for Trading {
    fn init(config: Config) -> Result<Self, Error> {
        let Settings {
            bar_ms,
            short,
            long,
        } = config.parse()?;
        if bar_ms <= 0 {
            return Err(Error::msg(format!(
                "bar_ms must be above zero, not {bar_ms}"
            )));
        }
        if short == 0 || short >= long {
            return Err(Error::msg(format!(
                "short ({short}) must be at least 1 and below long ({long})"
            )));
        }
        Ok(Trading {
            bar_ms,
            short,
            long,
        })
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        let trade: Trade = event.json()?;
        let symbol = &trade.symbol;
        let Some(ts) = event.time else {
            return Err(Error::msg(format!(
                "trade of {symbol} has no time: the pipeline needs `time` in [source]"
            )));
        };
        if !(trade.price.is_finite() && trade.price > 0.0) {
            return Err(Error::msg(format!(
                "trade of {symbol} at {ts} has price {}: a price must be above zero",
                trade.price
            )));
        }
        if trade.qty == 0 {
            return Err(Error::msg(format!(
                "trade of {symbol} at {ts} has qty 0: a quantity must be above zero"
            )));
        }
        let minute = ts.div_euclid(self.bar_ms) * self.bar_ms;
        // Reachable only when the pipeline lets late trades through
        // (`allowed_lateness` or `late = "deliver"`): the default policy
        // dead-letters them before they get here.
        let closed_through = TREND.get()?.and_then(|t| t.closed_through);
        if closed_through.is_some_and(|closed| minute <= closed) {
            return Err(Error::msg(format!(
                "trade of {symbol} at {ts} is too late: the bar of minute {minute} already closed"
            )));
        }
        let mut open = OPEN.get()?.unwrap_or_default();
        let (price, qty) = (trade.price, trade.qty);
        match open.iter().position(|b| b.minute >= minute) {
            Some(i) if open[i].minute == minute => {
                let bar = &mut open[i];
                if ts < bar.open_ts {
                    bar.open = price;
                    bar.open_ts = ts;
                }
                if ts >= bar.close_ts {
                    bar.close = price;
                    bar.close_ts = ts;
                }
                bar.high = bar.high.max(price);
                bar.low = bar.low.min(price);
                bar.volume += qty;
                bar.trades += 1;
            }
            at => {
                let bar = Bar {
                    minute,
                    open: price,
                    high: price,
                    low: price,
                    close: price,
                    volume: qty,
                    trades: 1,
                    open_ts: ts,
                    close_ts: ts,
                };
                open.insert(at.unwrap_or(open.len()), bar);
                // Fires once the watermark is past the minute's last ms.
                timers::set(
                    &format!("{TIMER}{minute}"),
                    minute.saturating_add(self.bar_ms - 1),
                )?;
            }
        }
        OPEN.set(&open)
    }

    fn on_timer(&mut self, timer: Fired) -> Result<(), Error> {
        let symbol = timer.key;
        let minute = timer
            .name
            .strip_prefix(TIMER)
            .and_then(|m| m.parse::<i64>().ok())
            .ok_or_else(|| Error::msg(format!("unknown timer `{}`", timer.name)))?;
        let mut open = OPEN.get()?.unwrap_or_default();
        let Some(i) = open.iter().position(|b| b.minute == minute) else {
            return Err(Error::msg(format!(
                "the bar of minute {minute} of {symbol} closed with no trade in it"
            )));
        };
        let bar = open.remove(i);
        if open.is_empty() {
            OPEN.delete();
        } else {
            OPEN.set(&open)?;
        }
        emit(
            symbol,
            &BarOut {
                symbol,
                minute,
                open: bar.open,
                high: bar.high,
                low: bar.low,
                close: bar.close,
                volume: bar.volume,
                trades: bar.trades,
            },
        )?;

        let mut trend = TREND.get()?.unwrap_or_default();
        trend.closed_through = Some(minute);
        trend.closes.push(bar.close);
        if trend.closes.len() > self.long {
            trend.closes.remove(0);
        }
        if trend.closes.len() == self.long {
            let short_avg = mean(&trend.closes[self.long - self.short..]);
            let long_avg = mean(&trend.closes);
            // Equal averages keep the side: a crossing needs a strict change.
            if short_avg != long_avg {
                let above = short_avg > long_avg;
                if trend.short_above == Some(!above) {
                    let signal = Signal {
                        signal: if above { "buy" } else { "sell" },
                        symbol,
                        minute,
                        close: bar.close,
                        short_avg: round4(short_avg),
                        long_avg: round4(long_avg),
                    };
                    emit(symbol, &signal)?;
                }
                trend.short_above = Some(above);
            }
        }
        TREND.set(&trend)
    }
}

eddy_sdk::export_operator!(Trading);
