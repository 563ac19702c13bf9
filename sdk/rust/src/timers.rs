//! Named event-time timers of the current key, and the watermark
//! (`wit/timers.wit`).
//!
//! A timer belongs to the key being handled. A name holds one pending
//! time: a timeout is `timers::set("timeout", t)?`, and setting it again
//! replaces it. Once the watermark (the largest event time read so far
//! minus the pipeline's `max_out_of_order`) is past `t`, or the input has
//! ended, the host calls [`Operator::on_timer`](crate::Operator::on_timer)
//! with the key, the name and `t`. Timer changes, like state writes, take
//! effect only when the call that made them succeeds.
//!
//! ```no_run
//! use eddy_sdk::{emit, timers, Error, Event, Fired};
//! # struct Tracking;
//! # impl Tracking {
//! fn handle(&mut self, event: Event<'_>) -> Result<(), Error> {
//!     let t = event.time.ok_or("the event has no time")?;
//!     timers::set("timeout", t + 60_000) // an alert if no scan within a minute
//! }
//! fn on_timer(&mut self, timer: Fired<'_>) -> Result<(), Error> {
//!     emit(timer.key, &format!("no scan since {}", timer.at - 60_000))
//! }
//! # }
//! ```
//!
//! Timer calls are served on the per-event path: an operator that makes
//! them while the host hands it a batch is switched to it, as one that uses
//! map or list state is.

use crate::bindings::eddy::operator::timers as wit;
use crate::{batch, Error};

/// A timer that fired, as [`Operator::on_timer`](crate::Operator::on_timer)
/// receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fired<'a> {
    /// The key it belongs to: state, timer and emit calls act on it.
    pub key: &'a str,
    /// Its name.
    pub name: &'a str,
    /// The event time it was set for (the watermark is past it).
    pub at: i64,
}

/// Sets timer `name` of the current key to fire at event time `at`,
/// replacing the pending one of that name. A time the watermark already
/// passed fires at its next advance.
pub fn set(name: &str, at: i64) -> Result<(), Error> {
    if batch::active() {
        return Err(batch::stop_error());
    }
    wit::set(name, at);
    Ok(())
}

/// Cancels timer `name` of the current key; returns whether one was
/// pending.
pub fn clear(name: &str) -> bool {
    if batch::active() {
        batch::stop();
        return false;
    }
    wit::clear(name)
}

/// When timer `name` of the current key fires; `None` when none is
/// pending.
pub fn get(name: &str) -> Option<i64> {
    if batch::active() {
        batch::stop();
        return None;
    }
    wit::get(name)
}

/// Every pending timer of the current key as `(name, at)`, sorted by name.
pub fn list() -> Vec<(String, i64)> {
    if batch::active() {
        batch::stop();
        return Vec::new();
    }
    wit::list().into_iter().map(|t| (t.name, t.at)).collect()
}

/// The watermark: `i64::MIN` before the first event with a time (and when
/// the pipeline names no time field), `i64::MAX` once a file input ended.
pub fn watermark() -> i64 {
    if batch::active() {
        batch::stop();
        return i64::MIN;
    }
    wit::watermark()
}

/// Whether the event being handled is late: its time was below the
/// watermark minus the pipeline's `allowed_lateness` when it was read.
/// Only ever true under `[source.watermark] late = "deliver"` (the other
/// policies dead-letter or drop late events before any operator sees them),
/// in [`Operator::handle`](crate::Operator::handle) of the first operator.
/// The host hands a late event to `handle` on its own, never in a batch, so
/// this costs a batched operator nothing and never switches it to the
/// per-event path.
pub fn late() -> bool {
    if batch::active() {
        return false;
    }
    wit::late()
}
