//! Forecast: online learning per key (a sensor, a product). An
//! exponential-smoothing forecaster predicts each key's next value, measures
//! its own error as the actual values arrive, and adapts its smoothing
//! factor to that error. See README.md for the exact shapes.
//!
//! The rule is Trigg and Leach's adaptive response rate. Per key, on each
//! value `x` (in input order), with `f` the standing forecast:
//!
//! 1. The error is `e = x - f`. Two running means of it, each weighting the
//!    newest error by `beta` (`m = m + beta * (v - m)`): the mean absolute
//!    error `mae` of `|e|`, and the bias of `e` itself.
//! 2. After `warmup` errors, `alpha = |bias| / mae`, kept within
//!    `[min_alpha, max_alpha]`. When the errors grow on one side (the level
//!    shifted or drifts, and the forecast lags it), the bias catches up with
//!    the mean absolute error and `alpha` rises toward `max_alpha`: the
//!    forecast follows the data faster. When the errors are noise around
//!    the level, their signs cancel in the bias and `alpha` falls toward
//!    `min_alpha`: the forecast smooths the noise out. Before `warmup`
//!    errors, `alpha` keeps its configured start value.
//! 3. The new forecast is `f + alpha * e`, with the `alpha` just computed.
//!
//! The first value of a key only sets the level (there is no forecast to
//! measure yet). Numbers are emitted rounded to 4 decimals; the state keeps
//! them whole.

use eddy_sdk::{emit, Config, Error, Event, Operator, Value};
use serde::{Deserialize, Serialize};

/// The key's model: level, smoothing factor and recent errors.
const MODEL: Value<Model> = Value::new("model");

#[derive(Serialize, Deserialize)]
struct Model {
    /// The smoothed level: the forecast of the next value.
    level: f64,
    alpha: f64,
    /// Running mean absolute error.
    mae: f64,
    /// Running mean (signed) error.
    bias: f64,
    /// How many errors were measured.
    errors: u64,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    alpha: f64,
    min_alpha: f64,
    max_alpha: f64,
    beta: f64,
    warmup: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            alpha: 0.3,
            min_alpha: 0.1,
            max_alpha: 0.9,
            beta: 0.2,
            warmup: 3,
        }
    }
}

/// One input line: an actual value of the key (other fields are ignored).
#[derive(Deserialize)]
struct Observation {
    value: f64,
}

#[derive(Serialize)]
struct Prediction {
    /// Event time of the value, when the pipeline has a time field.
    ts: Option<i64>,
    /// The value that arrived.
    actual: f64,
    /// What the model had forecast for it (`null` for the key's first).
    predicted: Option<f64>,
    /// `actual - predicted`.
    error: Option<f64>,
    /// Running mean absolute error, this error included.
    mae: Option<f64>,
    /// Running mean error, this error included.
    bias: Option<f64>,
    /// The smoothing factor after this value.
    alpha: f64,
    /// The forecast of the key's next value.
    forecast: f64,
}

struct Forecast {
    settings: Settings,
}

/// `x` rounded to 4 decimals, for output.
fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

impl Operator for Forecast {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        let unit = |x: f64| x > 0.0 && x <= 1.0;
        if !(unit(s.min_alpha)
            && s.min_alpha <= s.alpha
            && s.alpha <= s.max_alpha
            && unit(s.max_alpha))
        {
            return Err(Error::msg(format!(
                "need 0 < min_alpha <= alpha <= max_alpha <= 1, got min_alpha {}, alpha {} and max_alpha {}",
                s.min_alpha, s.alpha, s.max_alpha
            )));
        }
        if !unit(s.beta) {
            return Err(Error::msg(format!(
                "beta must be above 0 and at most 1, not {}",
                s.beta
            )));
        }
        if s.warmup == 0 {
            return Err(Error::msg("warmup must be 1 or more"));
        }
        Ok(Forecast { settings: s })
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        let Observation { value: x } = event.json()?;
        let s = &self.settings;
        let Some(mut model) = MODEL.get()? else {
            let model = Model {
                level: x,
                alpha: s.alpha,
                mae: 0.0,
                bias: 0.0,
                errors: 0,
            };
            MODEL.set(&model)?;
            let out = Prediction {
                ts: event.time,
                actual: x,
                predicted: None,
                error: None,
                mae: None,
                bias: None,
                alpha: model.alpha,
                forecast: round4(x),
            };
            return emit(event.key, &out);
        };

        let predicted = model.level;
        let error = x - predicted;
        if model.errors == 0 {
            model.mae = error.abs();
            model.bias = error;
        } else {
            model.mae += s.beta * (error.abs() - model.mae);
            model.bias += s.beta * (error - model.bias);
        }
        model.errors += 1;
        if model.errors >= s.warmup {
            // A zero mae means every error was zero: nothing to follow.
            let tracking = if model.mae > 0.0 {
                model.bias.abs() / model.mae
            } else {
                0.0
            };
            model.alpha = tracking.clamp(s.min_alpha, s.max_alpha);
        }
        model.level = predicted + model.alpha * error;
        MODEL.set(&model)?;

        let out = Prediction {
            ts: event.time,
            actual: x,
            predicted: Some(round4(predicted)),
            error: Some(round4(error)),
            mae: Some(round4(model.mae)),
            bias: Some(round4(model.bias)),
            alpha: round4(model.alpha),
            forecast: round4(model.level),
        };
        emit(event.key, &out)
    }
}

eddy_sdk::export_operator!(Forecast);
