//! Windows in the host: a [`WindowOperator`] assigns each event of a key to
//! its tumbling window, keeps one accumulator per key and window, and when
//! the watermark reaches a window's end finishes it into one output and
//! drops it. The aggregate ([`Aggregate`]) only creates, folds and finishes
//! accumulators (opaque bytes).
//!
//! It is built on what every operator has, so it inherits their
//! guarantees: accumulators are entries of a map in the key's state (named
//! [`WINDOW_STATE`], field: the window's start), written in the checkpoint
//! with the rest of the state and undone with a failed event; the end of
//! each window with data is a named timer of the key (the start again, set
//! at `end - 1`, so it fires once the watermark is at or past `end`), so
//! windows fire in (end, key) order at the same place of the input with any
//! number of workers, exactly once across crashes and restarts, and at the
//! end of a file input. A window without events has no accumulator and no
//! timer: it never fires. A late event (under `late = "deliver"`) into a
//! window that already fired makes a new accumulator for it, which fires
//! at the next advance with just the late events.

use super::{EventRef, HandleError, OpCtx, Operator, TimerRef};

/// The map of a window operator's state that holds its accumulators.
pub const WINDOW_STATE: &str = "\0windows";

/// A window being finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowInfo<'a> {
    /// The key.
    pub key: &'a str,
    /// Its first time (inclusive).
    pub start: i64,
    /// Its end (exclusive).
    pub end: i64,
}

/// What a window operator computes per key and window.
pub trait Aggregate: Send {
    /// An empty accumulator.
    fn create(&self) -> Vec<u8>;
    /// Folds `event` into `acc`; an `Err` dead-letters the event (the
    /// accumulator is then left as it was).
    fn add(&self, acc: &mut Vec<u8>, event: &EventRef<'_>) -> Result<(), String>;
    /// The payload to emit under the window's key (`None`: nothing); an
    /// `Err` dead-letters the window's firing, and its accumulator stays
    /// (it fires again, with what it holds, if the window gets another
    /// event).
    fn finish(&self, window: &WindowInfo<'_>, acc: &[u8]) -> Result<Option<Vec<u8>>, String>;
}

/// A tumbling window over an [`Aggregate`]: windows `[k * size, (k + 1) *
/// size)` of event time.
pub struct WindowOperator<A> {
    ctx: OpCtx,
    agg: A,
    size: i64,
}

impl<A: Aggregate> WindowOperator<A> {
    /// Tumbling windows of `size` (time-field units, at least 1) over `agg`.
    pub fn tumbling(ctx: OpCtx, agg: A, size: u64) -> Self {
        WindowOperator {
            ctx,
            agg,
            size: i64::try_from(size).unwrap_or(i64::MAX).max(1),
        }
    }

    /// The start of the window holding time `t`.
    fn start_of(&self, t: i64) -> i64 {
        t - t.rem_euclid(self.size)
    }
}

/// The map field of the window starting at `start`: 16 hex digits that
/// sort as the signed start does.
fn field(start: i64) -> String {
    format!("{:016x}", (start ^ i64::MIN) as u64)
}

/// The start of the window of map field (or timer name) `f`.
fn start_of_field(f: &str) -> Option<i64> {
    let u = u64::from_str_radix(f, 16).ok()?;
    Some(u as i64 ^ i64::MIN)
}

fn refused(e: impl std::fmt::Display) -> HandleError {
    HandleError::Refused(e.to_string())
}

impl<A: Aggregate> Operator for WindowOperator<A> {
    fn ctx(&mut self) -> &mut OpCtx {
        &mut self.ctx
    }

    fn handles_timers(&self) -> bool {
        true
    }

    fn handle(&mut self, event: EventRef<'_>) -> Result<(), HandleError> {
        let t = event.time.ok_or_else(|| {
            HandleError::Failed(
                "the event has no time: a window operator needs the pipeline's time field".into(),
            )
        })?;
        let start = self.start_of(t);
        let f = field(start);
        let mut acc = match self.ctx.map_get(WINDOW_STATE, &f).map_err(refused)? {
            Some(b) => b.to_vec(),
            None => self.agg.create(),
        };
        self.agg
            .add(&mut acc, &event)
            .map_err(HandleError::Failed)?;
        self.ctx
            .map_set(WINDOW_STATE, f.clone(), acc)
            .map_err(refused)?;
        if self.ctx.timer_get(&f).map_err(refused)?.is_none() {
            let end = start.saturating_add(self.size);
            self.ctx.timer_set(&f, end - 1).map_err(refused)?;
        }
        Ok(())
    }

    fn on_timer(&mut self, timer: TimerRef<'_>) -> Result<(), HandleError> {
        let Some(start) = start_of_field(timer.name) else {
            return Err(HandleError::Failed(format!(
                "timer `{}` is not a window's",
                timer.name
            )));
        };
        let Some(acc) = self
            .ctx
            .map_get(WINDOW_STATE, timer.name)
            .map_err(refused)?
            .map(<[u8]>::to_vec)
        else {
            return Ok(());
        };
        self.ctx
            .map_delete_dropping(WINDOW_STATE, timer.name)
            .map_err(refused)?;
        let window = WindowInfo {
            key: timer.key,
            start,
            end: start.saturating_add(self.size),
        };
        if let Some(out) = self
            .agg
            .finish(&window, &acc)
            .map_err(HandleError::Failed)?
        {
            self.ctx.emit(timer.key, &out).map_err(refused)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_sort_as_the_starts_do_and_read_back() {
        let starts = [i64::MIN, -70, -10, 0, 10, 60_000, i64::MAX - 9];
        let fields: Vec<String> = starts.iter().map(|&s| field(s)).collect();
        let mut sorted = fields.clone();
        sorted.sort();
        assert_eq!(fields, sorted);
        for (s, f) in starts.iter().zip(&fields) {
            assert_eq!(start_of_field(f), Some(*s));
        }
        assert_eq!(start_of_field("not hex"), None);
    }

    #[test]
    fn dropping_the_last_field_drops_the_map_and_a_failed_call_puts_it_back() {
        use crate::config::Limits;
        use crate::operator::Emits;
        let mut c = OpCtx::new("op".into(), None, Limits::default());
        let empty = {
            c.begin("k").unwrap();
            let size = c.key_state_size().unwrap();
            c.map_set(WINDOW_STATE, "f".into(), b"1".to_vec()).unwrap();
            c.finish(true, &mut Emits::default());
            size
        };
        c.begin("k").unwrap();
        assert!(c.map_delete_dropping(WINDOW_STATE, "f").unwrap());
        assert_eq!(c.key_state_size(), Some(empty), "nothing left");
        c.finish(false, &mut Emits::default());
        c.begin("k").unwrap();
        assert_eq!(c.map_get(WINDOW_STATE, "f").unwrap(), Some(&b"1"[..]));
        assert!(c.map_delete_dropping(WINDOW_STATE, "f").unwrap());
        c.finish(true, &mut Emits::default());
        let mut writes = Vec::new();
        c.take_dirty(None, &mut writes);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].record, None, "the key's record is deleted");
    }
}
