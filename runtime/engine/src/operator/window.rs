//! Windows in the host: a [`WindowOperator`] assigns each event of a key to
//! its tumbling, hopping or session windows, keeps the key's accumulators, and when
//! the watermark reaches a window's end finishes it into one output. The
//! aggregate ([`Aggregate`]) only creates, folds, merges and finishes
//! accumulators (opaque bytes).
//!
//! Hopping windows (`size`, every `slide`) overlap; an event is not copied
//! into each of its windows: time is cut into panes of `gcd(size, slide)`,
//! each event folds into its one pane, and a window merges its panes when
//! it fires. A pane is dropped once the last window holding it has fired.
//! Tumbling windows are hopping windows with `slide == size` (one pane per
//! window). A session is one accumulator that grows with its events and
//! absorbs the sessions an event bridges (their timers cleared).
//!
//! It is built on what every operator has, so it inherits their
//! guarantees: pane accumulators are entries of a map in the key's state
//! (named [`WINDOW_STATE`], field: the pane's start), written in the
//! checkpoint with the rest of the state and undone with a failed event;
//! each window with data is a named timer of the key (its start, set at
//! `end - 1`, so it fires once the watermark is at or past `end`), so
//! windows fire in (end, key) order at the same place of the input with any
//! number of workers, exactly once across crashes and restarts, and at the
//! end of a file input. A window without events has no timer: it never
//! fires. A late event (under `late = "deliver"`) into windows that already
//! fired sets their timers again: they fire at the next advance with what
//! their panes still hold.

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
    /// Merges accumulator `other` into `into` (the panes of a hopping
    /// window, oldest first); an `Err` dead-letters the window's firing.
    fn merge(&self, into: &mut Vec<u8>, other: &[u8]) -> Result<(), String>;
    /// The payload to emit under the window's key (`None`: nothing); an
    /// `Err` dead-letters the window's firing, and its accumulator stays
    /// (it fires again, with what it holds, if the window gets another
    /// event).
    fn finish(&self, window: &WindowInfo<'_>, acc: &[u8]) -> Result<Option<Vec<u8>>, String>;
}

/// Windows of event time over an [`Aggregate`]: `[k * slide, k * slide +
/// size)` for every integer `k`.
pub struct WindowOperator<A> {
    ctx: OpCtx,
    agg: A,
    size: i64,
    slide: i64,
    /// The panes' length: `gcd(size, slide)`.
    pane: i64,
    /// Session windows with this inactivity gap (then `size`, `slide` and
    /// `pane` are unused).
    gap: Option<i64>,
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `t` rounded down to a multiple of `m`.
fn floor(t: i64, m: i64) -> i64 {
    t - t.rem_euclid(m)
}

impl<A: Aggregate> WindowOperator<A> {
    /// Tumbling windows of `size` (time-field units, at least 1) over `agg`.
    pub fn tumbling(ctx: OpCtx, agg: A, size: u64) -> Self {
        Self::hopping(ctx, agg, size, size)
    }

    /// Hopping windows of `size` starting every `slide` (time-field units,
    /// `1 <= slide <= size`; a larger slide is taken as `size`) over `agg`.
    pub fn hopping(ctx: OpCtx, agg: A, size: u64, slide: u64) -> Self {
        let size = i64::try_from(size).unwrap_or(i64::MAX).max(1);
        let slide = i64::try_from(slide).unwrap_or(i64::MAX).clamp(1, size);
        WindowOperator {
            ctx,
            agg,
            size,
            slide,
            pane: gcd(size, slide),
            gap: None,
        }
    }

    /// Session windows: a key's events closer than `gap` (time-field
    /// units, at least 1) to one another fall in one session, `[first
    /// event, last event + gap)`, which fires once the watermark reaches
    /// its end. An event that bridges two sessions merges them.
    pub fn session(ctx: OpCtx, agg: A, gap: u64) -> Self {
        let mut w = Self::tumbling(ctx, agg, 1);
        w.gap = Some(i64::try_from(gap).unwrap_or(i64::MAX).max(1));
        w
    }

    /// Adds an event at `t` to the key's sessions: the sessions that
    /// overlap `[t, t + gap)` (sorted and disjoint, so one pass finds them)
    /// merge with it into one. A session is a map field (its start) whose
    /// value is its end (8 bytes, little endian) then its accumulator, and
    /// a timer of that name at `end - 1`.
    fn add_to_session(
        &mut self,
        event: &EventRef<'_>,
        t: i64,
        gap: i64,
    ) -> Result<(), HandleError> {
        let (mut start, mut end) = (t, t.saturating_add(gap));
        let mut acc: Option<Vec<u8>> = None;
        let sessions = self.ctx.map_entries(WINDOW_STATE).map_err(refused)?;
        for (f, v) in sessions {
            let (Some(s), Some(e)) = (start_of_field(&f), session_end(&v)) else {
                continue;
            };
            if s >= t.saturating_add(gap) || e <= t {
                continue;
            }
            start = start.min(s);
            end = end.max(e);
            match &mut acc {
                None => acc = Some(v[8..].to_vec()),
                Some(a) => self.agg.merge(a, &v[8..]).map_err(HandleError::Failed)?,
            }
            self.ctx
                .map_delete_dropping(WINDOW_STATE, &f)
                .map_err(refused)?;
            self.ctx.timer_clear(&f).map_err(refused)?;
        }
        let mut acc = acc.unwrap_or_else(|| self.agg.create());
        self.agg.add(&mut acc, event).map_err(HandleError::Failed)?;
        let mut v = Vec::with_capacity(8 + acc.len());
        v.extend_from_slice(&end.to_le_bytes());
        v.extend_from_slice(&acc);
        let f = field(start);
        self.ctx
            .map_set(WINDOW_STATE, f.clone(), v)
            .map_err(refused)?;
        self.ctx.timer_set(&f, end - 1).map_err(refused)
    }

    /// Fires the session starting at `start`.
    fn fire_session(&mut self, key: &str, name: &str, start: i64) -> Result<(), HandleError> {
        let Some(v) = self
            .ctx
            .map_get(WINDOW_STATE, name)
            .map_err(refused)?
            .map(<[u8]>::to_vec)
        else {
            return Ok(());
        };
        let Some(end) = session_end(&v) else {
            return Err(HandleError::Failed(format!("session `{name}` is damaged")));
        };
        self.ctx
            .map_delete_dropping(WINDOW_STATE, name)
            .map_err(refused)?;
        let window = WindowInfo { key, start, end };
        if let Some(out) = self
            .agg
            .finish(&window, &v[8..])
            .map_err(HandleError::Failed)?
        {
            self.ctx.emit(key, &out).map_err(refused)?;
        }
        Ok(())
    }

    /// The end of the last window holding the pane starting at `p`.
    fn last_end(&self, p: i64) -> i64 {
        floor(p, self.slide).saturating_add(self.size)
    }
}

/// The map field of the window starting at `start`: 16 hex digits that
/// sort as the signed start does.
fn field(start: i64) -> String {
    format!("{:016x}", (start ^ i64::MIN) as u64)
}

/// The end of a session, from its map value.
fn session_end(v: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(v.get(..8)?.try_into().ok()?))
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
        if let Some(gap) = self.gap {
            return self.add_to_session(&event, t, gap);
        }
        let p = floor(t, self.pane);
        let f = field(p);
        let mut acc = match self.ctx.map_get(WINDOW_STATE, &f).map_err(refused)? {
            Some(b) => b.to_vec(),
            None => self.agg.create(),
        };
        self.agg
            .add(&mut acc, &event)
            .map_err(HandleError::Failed)?;
        self.ctx.map_set(WINDOW_STATE, f, acc).map_err(refused)?;
        // Every window holding the pane, latest first: starts `s` with
        // `s <= p < s + size`.
        let mut s = floor(p, self.slide);
        while s.saturating_add(self.size) > p {
            let name = field(s);
            if self.ctx.timer_get(&name).map_err(refused)?.is_none() {
                let end = s.saturating_add(self.size);
                self.ctx.timer_set(&name, end - 1).map_err(refused)?;
            }
            match s.checked_sub(self.slide) {
                Some(prev) => s = prev,
                None => break,
            }
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
        if self.gap.is_some() {
            return self.fire_session(timer.key, timer.name, start);
        }
        let end = start.saturating_add(self.size);
        // The window's panes, oldest first (fields sort as their starts).
        let panes: Vec<(i64, Vec<u8>)> = self
            .ctx
            .map_entries(WINDOW_STATE)
            .map_err(refused)?
            .into_iter()
            .filter_map(|(f, acc)| Some((start_of_field(&f)?, acc)))
            .filter(|&(p, _)| p >= start && p < end)
            .collect();
        let Some((_, first)) = panes.first() else {
            return Ok(());
        };
        let mut acc = first.clone();
        for (_, other) in &panes[1..] {
            self.agg
                .merge(&mut acc, other)
                .map_err(HandleError::Failed)?;
        }
        // Panes no later window holds are dropped.
        for &(p, _) in &panes {
            if self.last_end(p) <= end {
                self.ctx
                    .map_delete_dropping(WINDOW_STATE, &field(p))
                    .map_err(refused)?;
            }
        }
        let window = WindowInfo {
            key: timer.key,
            start,
            end,
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
        c.take_dirty(1, &mut writes);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].record, None, "the key's record is deleted");
    }
}
