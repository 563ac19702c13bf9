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
//! A batch of events crosses into the aggregate in one call
//! ([`Aggregate::add_many`]): the host reads each (key, pane) accumulator
//! the batch touches once, the aggregate folds every event into its own,
//! and the host writes each back once, with the first event that touched
//! it; an event the aggregate failed is dead-lettered and left out of its
//! accumulator, and one the host refuses (a limit) is redone on the
//! per-event path with the rest of its accumulator's events. Session
//! windows take the per-event path (an event may merge sessions).
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
//!
//! A window's timer is set when its first pane is first written; a pane
//! already stored whose first window ends after the watermark has all its
//! windows' timers (they go only when they fire), so writing it again
//! looks none up. The operator tells the worker the earliest timer an
//! event can set ([`Operator::timer_bound`]), so a batch runs across the
//! watermark advances that fire no window.

use std::collections::HashMap;

use super::{handle_each, Done, Emits, EventRef, HandleError, OpCtx, Operator, RunError, TimerRef};
use crate::state::StoreError;

/// Up to this many panes a window, a firing looks its panes up one by one
/// rather than reading the whole map.
const FEW_PANES: i64 = 64;

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

/// What a window operator computes per key and window, over accumulators
/// it encodes as it likes (opaque bytes to the host).
pub trait Aggregate: Send {
    /// Folds `event` into `acc` (`None`: a new accumulator, started from
    /// the aggregate's empty one). An `Err` dead-letters the event and
    /// leaves `acc` as it was.
    fn add(&mut self, acc: &mut Option<Vec<u8>>, event: &EventRef<'_>) -> Result<(), HandleError>;

    /// Folds each of `events`, `(i, event)`, into `accs[i]`, in order, as
    /// [`Aggregate::add`] would one by one, pushing each event's outcome
    /// to `outcomes`. An `Err` fails the whole call (a trap): `accs` and
    /// `outcomes` are then as they were, and the host redoes the events
    /// one by one. The default calls [`Aggregate::add`] per event.
    fn add_many(
        &mut self,
        accs: &mut [Option<Vec<u8>>],
        events: &[(u32, EventRef<'_>)],
        outcomes: &mut Vec<Result<(), HandleError>>,
    ) -> Result<(), HandleError> {
        for (i, e) in events {
            outcomes.push(self.add(&mut accs[*i as usize], e));
        }
        Ok(())
    }

    /// Merges `accs` (at least two, oldest first: the sessions an event
    /// bridges) into one; an `Err` dead-letters that event.
    fn merge(&mut self, accs: &[&[u8]]) -> Result<Vec<u8>, HandleError>;

    /// The payload to emit under the window's key (`None`: nothing) from
    /// its accumulators (a hopping window's panes, oldest first; one
    /// otherwise), merged. An `Err` dead-letters the window's firing, and
    /// its accumulators stay (it fires again, with what they hold, if the
    /// window gets another event).
    fn finish(
        &mut self,
        window: &WindowInfo<'_>,
        accs: &[&[u8]],
    ) -> Result<Option<Vec<u8>>, HandleError>;

    /// Which version of the aggregate runs (a component's content hash),
    /// recorded in dead letters.
    fn version(&self) -> &str {
        "native"
    }
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
        let mut bridged: Vec<Vec<u8>> = Vec::new();
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
            bridged.push(v[8..].to_vec());
            self.ctx
                .map_delete_dropping(WINDOW_STATE, &f)
                .map_err(refused)?;
            self.ctx.timer_clear(&f).map_err(refused)?;
        }
        let mut acc = match bridged.len() {
            0 => None,
            1 => bridged.pop(),
            _ => {
                let parts: Vec<&[u8]> = bridged.iter().map(Vec::as_slice).collect();
                Some(self.agg.merge(&parts)?)
            }
        };
        self.agg.add(&mut acc, event)?;
        let acc = acc.unwrap_or_default();
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
        if let Some(out) = self.agg.finish(&window, &[&v[8..]])? {
            self.ctx.emit(key, &out).map_err(refused)?;
        }
        Ok(())
    }

    /// Finishes (and discards) the first window the current key holds,
    /// from its first pane or session: whether the aggregate reads what
    /// is stored.
    fn finish_first(&mut self, key: &str) -> Result<(), HandleError> {
        let entries = self.ctx.map_entries(WINDOW_STATE).map_err(refused)?;
        let Some((f, v)) = entries.first() else {
            return Ok(());
        };
        let damaged = || HandleError::Failed(format!("window state `{f}` is damaged"));
        let start = start_of_field(f).ok_or_else(damaged)?;
        let (window, acc) = match self.gap {
            Some(_) => {
                let end = session_end(v).ok_or_else(damaged)?;
                (WindowInfo { key, start, end }, &v[8..])
            }
            None => {
                let s = floor(start, self.slide);
                let end = s.saturating_add(self.size);
                (WindowInfo { key, start: s, end }, &v[..])
            }
        };
        self.agg.finish(&window, &[acc]).map(|_| ())
    }

    /// The end of the last window holding the pane starting at `p`.
    fn last_end(&self, p: i64) -> i64 {
        floor(p, self.slide).saturating_add(self.size)
    }

    /// The end of the first window holding the pane starting at `p`.
    fn first_end(&self, p: i64) -> Option<i64> {
        p.checked_sub(self.size)
            .map(|x| floor(x, self.slide))
            .and_then(|s| s.checked_add(self.slide))
            .and_then(|s| s.checked_add(self.size))
    }

    /// Sets the timer of every window holding the pane starting at `p`
    /// that has none yet (latest first: starts `s` with `s <= p < s +
    /// size`). `existed`: the pane was in the key's state before this
    /// event; then, if no window holding it can have fired yet (the first
    /// one ends after the watermark), every one of them got its timer
    /// when the pane was first written, and still has it (a window's
    /// timer goes only when it fires, or with the write that set it):
    /// nothing to look up.
    fn arm_windows(&mut self, p: i64, existed: bool) -> Result<(), HandleError> {
        if existed
            && self
                .first_end(p)
                .is_some_and(|end| end > self.ctx.watermark())
        {
            return Ok(());
        }
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

    /// The batched path of [`Operator::handle_many`] for tumbling and
    /// hopping windows (see the module docs): one [`Aggregate::add_many`]
    /// call for the batch.
    fn handle_batch(
        &mut self,
        events: &[EventRef<'_>],
        done: &mut Done<'_>,
    ) -> Result<(), RunError> {
        let mut slots = Vec::with_capacity(events.len());
        self.ctx.slots(events.iter().map(|e| e.key), &mut slots)?;
        self.ctx.prefetch_map(&slots, WINDOW_STATE);
        // Each (key slot, pane) the batch touches, once, with its
        // accumulator as it is; per event, the index of its own.
        let mut index: HashMap<(u32, i64), u32> = HashMap::with_capacity(events.len());
        let mut accs: Vec<Option<Vec<u8>>> = Vec::new();
        let mut panes: Vec<Pane> = Vec::new();
        let mut targets: Vec<Option<u32>> = Vec::with_capacity(events.len());
        let mut adds: Vec<(u32, EventRef<'_>)> = Vec::with_capacity(events.len());
        let mut scratch = Emits::default();
        for (e, &slot) in events.iter().zip(&slots) {
            let Some(t) = e.time else {
                targets.push(None);
                continue;
            };
            let p = floor(t, self.pane);
            let i = match index.get(&(slot, p)) {
                Some(&i) => i,
                None => {
                    self.ctx.begin_slot(slot);
                    let f = field(p);
                    let acc = self
                        .ctx
                        .map_get(WINDOW_STATE, &f)
                        .map(|a| a.map(<[u8]>::to_vec));
                    self.ctx.finish(true, &mut scratch);
                    let i = accs.len() as u32;
                    let acc = acc.map_err(|e| RunError::Stopped(e.to_string()))?;
                    panes.push(Pane {
                        start: p,
                        field: f,
                        existed: acc.is_some(),
                    });
                    accs.push(acc);
                    index.insert((slot, p), i);
                    i
                }
            };
            targets.push(Some(i));
            adds.push((i, *e));
        }
        let mut outcomes = Vec::with_capacity(adds.len());
        if self.agg.add_many(&mut accs, &adds, &mut outcomes).is_err() {
            // A trap: each event on its own.
            return handle_each(self, events, 0, done);
        }
        // Per accumulator: not yet written back, written back (by the
        // first event that kept it), or redone per event (the host refused
        // that write).
        const PENDING: u8 = 0;
        const WRITTEN: u8 = 1;
        const PER_EVENT: u8 = 2;
        let mut written = vec![PENDING; accs.len()];
        let mut outcomes = outcomes.into_iter();
        let mut emitted = Emits::default();
        for (i, (e, &slot)) in events.iter().zip(&slots).enumerate() {
            let outcome = match targets[i] {
                Some(_) => outcomes.next(),
                None => None,
            };
            if let Err(err) = self.ready(e.key)? {
                done(i, Err(err), &mut emitted);
                continue;
            }
            self.ctx.set_event_time(e.time);
            self.ctx.begin_slot(slot);
            let mut r = match (targets[i], outcome) {
                (Some(j), Some(outcome)) => {
                    let j = j as usize;
                    match (written[j], outcome) {
                        (PER_EVENT, _) => self.handle(*e),
                        (_, Err(err)) => Err(err),
                        (state, Ok(())) => {
                            let r = self.keep(&mut accs[j], &mut panes[j], state == PENDING);
                            if r.is_err() || self.ctx.check_event().is_err() {
                                // Redone with the rest of this accumulator's
                                // events, one by one, from what is stored.
                                self.ctx.finish(false, &mut emitted);
                                written[j] = PER_EVENT;
                                self.ctx.begin_slot(slot);
                                self.handle(*e)
                            } else {
                                written[j] = WRITTEN;
                                Ok(())
                            }
                        }
                    }
                }
                _ => self.handle(*e),
            };
            if r.is_ok() {
                if let Err(refused) = self.ctx.check_event() {
                    r = Err(HandleError::Refused(refused.to_string()));
                }
            }
            self.ctx.finish(r.is_ok(), &mut emitted);
            done(i, r, &mut emitted);
            emitted.clear();
        }
        Ok(())
    }

    /// Writes a pane's accumulator after a batch and sets its windows'
    /// timers, when `write` (this is the first event of the batch that
    /// kept it); a later event of the pane changes nothing more.
    fn keep(
        &mut self,
        acc: &mut Option<Vec<u8>>,
        pane: &mut Pane,
        write: bool,
    ) -> Result<(), HandleError> {
        if !write {
            // The first event that kept this pane set its windows' timers.
            return Ok(());
        }
        // Written once: moved, not copied (a refused write is redone per
        // event from what is stored).
        let acc = acc.take().unwrap_or_default();
        let f = std::mem::take(&mut pane.field);
        self.ctx.map_set(WINDOW_STATE, f, acc).map_err(refused)?;
        self.arm_windows(pane.start, pane.existed)
    }
}

/// A (key, pane) a batch touches: the pane's start, its map field (moved
/// out when the pane is written back), and whether it was in the key's
/// state before the batch.
struct Pane {
    start: i64,
    field: String,
    existed: bool,
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

    fn version(&self) -> &str {
        self.agg.version()
    }

    fn timer_bound(&self, event: &EventRef<'_>) -> Option<i64> {
        // Every window an event at `t` falls in ends after `t`; its timer
        // is at its end - 1.
        let t = event.time?;
        if let Some(gap) = self.gap {
            // A session that takes the event ends at `t + gap` or later.
            return Some(t.saturating_add(gap - 1));
        }
        // The earliest window holding the event's pane `p`: the first
        // start `s` (a multiple of `slide`) with `s + size > p`.
        let first_end = self.first_end(floor(t, self.pane));
        Some(first_end.map_or(t, |end| (end - 1).max(t)))
    }

    fn rehearse(&mut self, key: &str) -> Result<Result<(), HandleError>, StoreError> {
        self.ctx.begin(key)?;
        let r = self.finish_first(key);
        // Nothing of the trial is kept.
        self.ctx.finish(false, &mut Emits::default());
        Ok(r)
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
        let mut acc = self
            .ctx
            .map_get(WINDOW_STATE, &f)
            .map_err(refused)?
            .map(<[u8]>::to_vec);
        let existed = acc.is_some();
        self.agg.add(&mut acc, &event)?;
        self.ctx
            .map_set(WINDOW_STATE, f, acc.unwrap_or_default())
            .map_err(refused)?;
        self.arm_windows(p, existed)
    }

    fn handle_many(
        &mut self,
        events: &[EventRef<'_>],
        done: &mut Done<'_>,
    ) -> Result<(), RunError> {
        if self.gap.is_some() || events.len() < 2 {
            return handle_each(self, events, 0, done);
        }
        self.handle_batch(events, done)
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
        // The window's panes, oldest first: looked up one by one when the
        // window has few (a tumbling window has one), else from the whole
        // map (fields sort as their starts).
        let panes: Vec<(i64, Vec<u8>)> = if self.size / self.pane <= FEW_PANES {
            let mut panes = Vec::new();
            let mut p = start;
            while p < end {
                if let Some(acc) = self.ctx.map_get(WINDOW_STATE, &field(p)).map_err(refused)? {
                    panes.push((p, acc.to_vec()));
                }
                match p.checked_add(self.pane) {
                    Some(next) => p = next,
                    None => break,
                }
            }
            panes
        } else {
            self.ctx
                .map_entries(WINDOW_STATE)
                .map_err(refused)?
                .into_iter()
                .filter_map(|(f, acc)| Some((start_of_field(&f)?, acc)))
                .filter(|&(p, _)| p >= start && p < end)
                .collect()
        };
        if panes.is_empty() {
            return Ok(());
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
        let accs: Vec<&[u8]> = panes.iter().map(|(_, a)| a.as_slice()).collect();
        if let Some(out) = self.agg.finish(&window, &accs)? {
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

    /// The bound the worker passes advances with is the earliest timer
    /// handling the event sets (never later, or a window would fire late).
    #[test]
    fn timer_bound_is_the_earliest_timer_an_event_sets() {
        use crate::config::Limits;
        use crate::operator::{Emits, TimerUse, WindowSum};
        let event = |t| EventRef {
            key: "k",
            value: b"{}",
            time: Some(t),
            line: 0,
        };
        let ctx = || {
            let mut c = OpCtx::new("op".into(), None, Limits::default());
            c.set_timer_use(TimerUse::Allowed);
            c
        };
        let agg = || WindowSum::new("amount");
        for (size, slide) in [(10u64, 10u64), (12, 3), (20, 5), (10, 4), (7, 7), (1, 1)] {
            for t in -50i64..50 {
                let mut w = WindowOperator::hopping(ctx(), agg(), size, slide);
                w.ctx.begin("k").unwrap();
                w.handle(event(t)).unwrap();
                w.ctx.finish(true, &mut Emits::default());
                assert_eq!(
                    w.timer_bound(&event(t)),
                    w.ctx.timers().next(),
                    "size {size} slide {slide} t {t}"
                );
            }
        }
        let mut w = WindowOperator::session(ctx(), agg(), 5);
        w.ctx.begin("k").unwrap();
        w.handle(event(3)).unwrap();
        w.ctx.finish(true, &mut Emits::default());
        assert_eq!(w.timer_bound(&event(3)), w.ctx.timers().next());
        let w = WindowOperator::tumbling(ctx(), agg(), 10);
        let none = EventRef {
            time: None,
            ..event(0)
        };
        assert_eq!(w.timer_bound(&none), None);
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
