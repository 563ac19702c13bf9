//! `eddy:operator/timers` (`wit/timers.wit`): named event-time timers of
//! the current key, and the watermark.
//!
//! Timers live in the operator's context ([`TimerTable`]), next to its
//! state cache, so they move with it to a replacement instance after a
//! trap and to a new version at a hot swap. A call's timer changes are
//! journaled like its state writes and undone with them when it fails.

use std::collections::BTreeSet;

use compact_str::CompactString;

use crate::operator::wasm::bindings::eddy::operator::timers;
use crate::state::TimerWrite;

use super::{trap, HostError, OpCtx};
use crate::state::StoreError;

/// A pending timer as it fires: (time, key, name), the firing order, and
/// the key's cache slot.
pub type Due = (i64, CompactString, CompactString, u32);

/// Whether the operator may set timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerUse {
    /// It may: its timers fire on its `on-timer` export.
    Allowed,
    /// It exports no `on-timer`, so its timers could never fire.
    NoHandler,
    /// It is not the first operator of its chain (timers there are not
    /// supported yet: their watermark is not aligned across workers).
    LaterStage,
}

/// The pending timers of one operator on one worker.
#[derive(Default)]
pub struct TimerTable {
    /// Every pending timer, in firing order: (time, key, name), then the
    /// key's slot. Key and name order is byte order, never the order keys
    /// were first seen, so the firing order does not depend on which
    /// worker holds a key.
    due: BTreeSet<Due>,
    /// Per cache slot with timers: its pending timers by name.
    by_slot: rustc_hash::FxHashMap<u32, Named>,
    /// The current call's changes, to undo on failure: (slot, key, name,
    /// time before).
    undo: Vec<(u32, CompactString, CompactString, Option<i64>)>,
    /// Timers set, cleared or fired since the last checkpoint barrier:
    /// (slot, key, name), and whether the timer was pending at that
    /// barrier (so has a row: every timer pending at a barrier is written
    /// then); their rows are written at the next checkpoint, except the
    /// deletion of a row that was never written (a timer set and fired
    /// between two barriers, a window's most often).
    dirty: rustc_hash::FxHashMap<(u32, CompactString, CompactString), bool>,
    /// The slots in `dirty`: their keys stay cached until the rows are
    /// taken (a slot's number must not pass to another key before).
    dirty_slots: rustc_hash::FxHashSet<u32>,
}

/// The pending timers of one key by name, sorted by name: a key holds
/// few, so a short vector, one allocation, searched in place.
#[derive(Default)]
struct Named(Vec<(CompactString, i64)>);

impl Named {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(name))
    }

    fn get(&self, name: &str) -> Option<i64> {
        self.find(name).ok().map(|i| self.0[i].1)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets `name` to `at`; the time it had.
    fn insert(&mut self, name: CompactString, at: i64) -> Option<i64> {
        match self.find(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, at)),
            Err(i) => {
                self.0.insert(i, (name, at));
                None
            }
        }
    }

    fn remove(&mut self, name: &str) -> Option<i64> {
        self.remove_entry(name).map(|(_, at)| at)
    }

    fn remove_entry(&mut self, name: &str) -> Option<(CompactString, i64)> {
        self.find(name).ok().map(|i| self.0.remove(i))
    }
}

impl TimerTable {
    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.due.len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }

    /// The time of the earliest pending timer.
    pub fn next(&self) -> Option<i64> {
        self.due.first().map(|d| d.0)
    }

    /// Sets timer `name` of the key in `slot` to `at`; the key may hold at
    /// most `limit` timers.
    pub(super) fn set(
        &mut self,
        slot: u32,
        key: &CompactString,
        name: &str,
        at: i64,
        limit: usize,
    ) -> Result<(), HostError> {
        let timers = self.by_slot.entry(slot).or_default();
        let old = timers.get(name);
        if old.is_none() && timers.len() >= limit {
            if timers.is_empty() {
                self.by_slot.remove(&slot);
            }
            return Err(HostError::TooManyTimers { limit });
        }
        let name = CompactString::from(name);
        if let Some(old) = old {
            self.due.remove(&(old, key.clone(), name.clone(), slot));
        }
        timers.insert(name.clone(), at);
        self.due.insert((at, key.clone(), name.clone(), slot));
        self.dirty
            .entry((slot, key.clone(), name.clone()))
            .or_insert(old.is_some());
        self.dirty_slots.insert(slot);
        self.undo.push((slot, key.clone(), name, old));
        Ok(())
    }

    /// Cancels timer `name` of the key in `slot`; whether one was pending.
    pub(super) fn clear(&mut self, slot: u32, key: &CompactString, name: &str) -> bool {
        let Some(timers) = self.by_slot.get_mut(&slot) else {
            return false;
        };
        let Some((name, old)) = timers.remove_entry(name) else {
            return false;
        };
        if timers.is_empty() {
            self.by_slot.remove(&slot);
        }
        self.due.remove(&(old, key.clone(), name.clone(), slot));
        self.dirty
            .entry((slot, key.clone(), name.clone()))
            .or_insert(true);
        self.dirty_slots.insert(slot);
        self.undo.push((slot, key.clone(), name, Some(old)));
        true
    }

    /// Whether the key in `slot` has pending timers, or timer rows not
    /// yet taken for a checkpoint: then it must stay cached.
    pub(super) fn holds(&self, slot: u32) -> bool {
        self.by_slot.contains_key(&slot) || self.dirty_slots.contains(&slot)
    }

    /// Whether the key in `slot` has timer rows not yet taken for a
    /// checkpoint.
    pub(super) fn unwritten(&self, slot: u32) -> bool {
        self.dirty_slots.contains(&slot)
    }

    /// Forgets the pending timers of the key in `slot` (its partition
    /// moved to another process, which fires them): not a change, nothing
    /// to undo or write.
    pub(super) fn forget(&mut self, slot: u32, key: &CompactString) {
        if let Some(timers) = self.by_slot.remove(&slot) {
            for (name, at) in timers.0 {
                self.due.remove(&(at, key.clone(), name, slot));
            }
        }
    }

    /// When timer `name` of the key in `slot` fires.
    pub fn get(&self, slot: u32, name: &str) -> Option<i64> {
        self.by_slot.get(&slot)?.get(name)
    }

    /// The pending timers of the key in `slot`, sorted by name.
    pub fn list(&self, slot: u32) -> Vec<(String, i64)> {
        self.by_slot.get(&slot).map_or_else(Vec::new, |t| {
            t.0.iter().map(|(n, at)| (n.to_string(), *at)).collect()
        })
    }

    /// Adds a timer read back from a checkpoint (not a change: nothing to
    /// undo or write).
    pub(super) fn restore(&mut self, slot: u32, key: &CompactString, name: &str, at: i64) {
        let name = CompactString::from(name);
        let timers = self.by_slot.entry(slot).or_default();
        if let Some(old) = timers.insert(name.clone(), at) {
            self.due.remove(&(old, key.clone(), name.clone(), slot));
        }
        self.due.insert((at, key.clone(), name, slot));
    }

    /// The timers changed since the last call, as rows to write for
    /// `operator`.
    pub(super) fn take_writes(
        &mut self,
        operator: &std::sync::Arc<str>,
        out: &mut Vec<TimerWrite>,
    ) {
        self.dirty_slots.clear();
        for ((slot, key, name), had_row) in self.dirty.drain() {
            let at = self.by_slot.get(&slot).and_then(|t| t.get(&name));
            if at.is_none() && !had_row {
                continue;
            }
            out.push(TimerWrite {
                operator: operator.clone(),
                key: key.as_str().into(),
                name: name.as_str().into(),
                at,
            });
        }
    }

    /// Keeps the current call's changes.
    pub(super) fn commit(&mut self) {
        self.undo.clear();
    }

    /// Undoes the current call's changes, newest first.
    pub(super) fn rollback(&mut self) {
        while let Some((slot, key, name, old)) = self.undo.pop() {
            let timers = self.by_slot.entry(slot).or_default();
            if let Some(now) = timers.remove(&name) {
                self.due.remove(&(now, key.clone(), name.clone(), slot));
            }
            if let Some(old) = old {
                timers.insert(name.clone(), old);
                self.due.insert((old, key, name, slot));
            } else if timers.is_empty() {
                self.by_slot.remove(&slot);
            }
        }
    }

    /// Takes the timers due at watermark `w`, in firing order: those at a
    /// time below `w`, and at `i64::MAX` (the end of the input) all of
    /// them. They are gone from the table, whatever their handler does.
    pub fn pop_due(&mut self, w: i64) -> Vec<Due> {
        let mut due = Vec::new();
        while let Some(first) = self.due.first() {
            if first.0 >= w && w != i64::MAX {
                break;
            }
            let d = self.due.pop_first().expect("not empty");
            self.dirty
                .entry((d.3, d.1.clone(), d.2.clone()))
                .or_insert(true);
            self.dirty_slots.insert(d.3);
            if let Some(timers) = self.by_slot.get_mut(&d.3) {
                timers.remove(&d.2);
                if timers.is_empty() {
                    self.by_slot.remove(&d.3);
                }
            }
            due.push(d);
        }
        due
    }
}

impl OpCtx {
    /// The watermark the operator sees (see [`OpCtx::set_watermark`]).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Sets the watermark of the operator's input: `timers.watermark`
    /// returns it from now on.
    pub fn set_watermark(&mut self, w: i64) {
        self.watermark = w;
    }

    /// Marks the events handled from now on as spanning watermark
    /// advances the worker passed over, or not (see
    /// [`Operator::handle_span`](crate::operator::Operator::handle_span)):
    /// meanwhile `timers.watermark` traps with
    /// [`HostError::WatermarkInSpan`], since no one watermark holds for
    /// all of them.
    pub fn set_spanning(&mut self, on: bool) {
        self.spanning = on;
    }

    /// Whether the events being handled span passed watermark advances.
    pub fn spanning(&self) -> bool {
        self.spanning
    }

    /// Whether the event being handled is late (see
    /// [`OpCtx::set_late`]): what `timers.late` returns.
    pub fn late(&self) -> bool {
        self.late
    }

    /// Flags the events handled from now on as late, or not: the worker
    /// sets it around a late event delivered under `[source.watermark]
    /// late = "deliver"`, which it hands over on its own (and a Wasm
    /// operator hands to `handle`, never to `handle-batch`).
    pub fn set_late(&mut self, late: bool) {
        self.late = late;
    }

    /// Sets whether the operator may set timers.
    pub fn set_timer_use(&mut self, use_: TimerUse) {
        self.timer_use = use_;
    }

    /// The pending timers.
    pub fn timers(&self) -> &TimerTable {
        &self.timers
    }

    /// The timers set, cleared or fired since the last call, as rows to
    /// write at a checkpoint.
    pub fn take_timer_writes(&mut self, out: &mut Vec<TimerWrite>) {
        self.timers.take_writes(&self.name, out);
        self.take_ttl_writes(out);
    }

    /// Puts back timer `name` of `key`, pending at `at` in the checkpoint
    /// the pipeline resumes from.
    pub fn restore_timer(&mut self, key: &str, name: &str, at: i64) -> Result<(), StoreError> {
        if let Some(state_name) = name.strip_prefix(super::TTL_PREFIX) {
            return self.restore_ttl(key, state_name, at);
        }
        let slot = self.load(key)?;
        let key = self.slots[slot as usize].key.clone();
        self.timers.restore(slot, &key, name, at);
        Ok(())
    }

    /// Takes the timers due at watermark `w` (see [`TimerTable::pop_due`]).
    pub fn pop_due(&mut self, w: i64) -> Vec<Due> {
        self.timers.pop_due(w)
    }

    /// `timers.set`: sets timer `name` of the current key to `at`.
    pub fn timer_set(&mut self, name: &str, at: i64) -> Result<(), HostError> {
        let i = self.current()?;
        match self.timer_use {
            TimerUse::Allowed => {}
            TimerUse::NoHandler => return Err(HostError::NoTimerHandler),
            TimerUse::LaterStage => return Err(HostError::TimersLaterStage),
        }
        self.check_name("timer name", name.as_bytes())?;
        if name.starts_with(super::TTL_PREFIX) {
            return Err(HostError::ReservedTimerName);
        }
        let key = &self.slots[i].key;
        self.timers
            .set(i as u32, key, name, at, self.limits.max_timers_per_key)
    }

    /// `timers.clear`: cancels timer `name` of the current key; whether
    /// one was pending.
    pub fn timer_clear(&mut self, name: &str) -> Result<bool, HostError> {
        let i = self.current()?;
        Ok(self.timers.clear(i as u32, &self.slots[i].key, name))
    }

    /// `timers.get`: when timer `name` of the current key fires.
    pub fn timer_get(&self, name: &str) -> Result<Option<i64>, HostError> {
        Ok(self.timers.get(self.current()? as u32, name))
    }

    /// `timers.list`: the current key's pending timers, sorted by name.
    pub fn timer_list(&self) -> Result<Vec<(String, i64)>, HostError> {
        Ok(self.timers.list(self.current()? as u32))
    }
}

impl timers::Host for OpCtx {
    fn watermark(&mut self) -> wasmtime::Result<i64> {
        if self.spanning {
            return Err(trap(HostError::WatermarkInSpan));
        }
        Ok(self.watermark)
    }
    fn late(&mut self) -> wasmtime::Result<bool> {
        Ok(self.late && self.current.is_some() && !self.migrating)
    }
    fn set(&mut self, name: String, at: i64) -> wasmtime::Result<()> {
        self.timer_set(&name, at).map_err(trap)
    }
    fn clear(&mut self, name: String) -> wasmtime::Result<bool> {
        self.timer_clear(&name).map_err(trap)
    }
    fn get(&mut self, name: String) -> wasmtime::Result<Option<i64>> {
        self.timer_get(&name).map_err(trap)
    }
    fn list(&mut self) -> wasmtime::Result<Vec<timers::Timer>> {
        Ok(self
            .timer_list()
            .map_err(trap)?
            .into_iter()
            .map(|(name, at)| timers::Timer { name, at })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::operator::host::Emits;

    fn ctx() -> OpCtx {
        let mut c = OpCtx::new("op".into(), None, Limits::default());
        c.set_timer_use(TimerUse::Allowed);
        c
    }

    /// Runs `f` as one call on `key`, kept when `ok`.
    fn call(c: &mut OpCtx, key: &str, ok: bool, f: impl FnOnce(&mut OpCtx)) {
        c.begin(key).unwrap();
        f(c);
        c.finish(ok, &mut Emits::default());
    }

    fn names(due: Vec<Due>) -> Vec<(i64, String, String)> {
        due.into_iter()
            .map(|(at, k, n, _)| (at, k.to_string(), n.to_string()))
            .collect()
    }

    #[test]
    fn fire_in_time_key_name_order_not_in_the_order_keys_came() {
        let mut c = ctx();
        // "z" gets the first cache slot, "a" the second.
        call(&mut c, "z", true, |c| c.timer_set("b", 5).unwrap());
        call(&mut c, "a", true, |c| {
            c.timer_set("b", 5).unwrap();
            c.timer_set("a", 5).unwrap();
            c.timer_set("c", 3).unwrap();
            c.timer_set("d", 9).unwrap();
        });
        assert_eq!(c.timers().len(), 5);
        assert_eq!(c.timers().next(), Some(3));
        assert!(c.pop_due(3).is_empty(), "due only below the watermark");
        let due = names(c.pop_due(6));
        let want = [(3, "a", "c"), (5, "a", "a"), (5, "a", "b"), (5, "z", "b")];
        let want: Vec<_> = want
            .iter()
            .map(|&(t, k, n)| (t, k.to_string(), n.to_string()))
            .collect();
        assert_eq!(due, want);
        assert_eq!(
            names(c.pop_due(i64::MAX)),
            vec![(9, "a".into(), "d".into())]
        );
        assert!(c.timers().is_empty());
        call(&mut c, "a", true, |c| {
            assert_eq!(c.timer_list().unwrap(), vec![])
        });
    }

    #[test]
    fn a_name_holds_one_time_and_a_failed_call_changes_nothing() {
        let mut c = ctx();
        call(&mut c, "k", true, |c| {
            c.timer_set("t", 10).unwrap();
            c.timer_set("u", 20).unwrap();
        });
        call(&mut c, "k", false, |c| {
            c.timer_set("t", 1).unwrap();
            c.timer_set("t", 2).unwrap();
            assert!(c.timer_clear("u").unwrap());
            assert!(!c.timer_clear("u").unwrap());
            c.timer_set("v", 3).unwrap();
            assert_eq!(c.timer_get("t").unwrap(), Some(2));
        });
        call(&mut c, "k", true, |c| {
            assert_eq!(
                c.timer_list().unwrap(),
                vec![("t".to_string(), 10), ("u".to_string(), 20)]
            );
            c.timer_set("t", 15).unwrap();
        });
        assert_eq!(c.timers().len(), 2);
        assert_eq!(
            names(c.pop_due(i64::MAX)),
            vec![(15, "k".into(), "t".into()), (20, "k".into(), "u".into())]
        );
    }

    /// Rows: a timer pending at a checkpoint has one; one set and
    /// consumed (fired, cleared, or undone) between two checkpoints never
    /// had one, so none is deleted.
    #[test]
    fn only_timers_pending_at_a_checkpoint_have_rows_to_delete() {
        let mut c = ctx();
        let rows = |c: &mut OpCtx| {
            let mut out = Vec::new();
            c.take_timer_writes(&mut out);
            let mut out: Vec<(String, String, Option<i64>)> = out
                .into_iter()
                .map(|w| (w.key.to_string(), w.name.to_string(), w.at))
                .collect();
            out.sort();
            out
        };
        call(&mut c, "k", true, |c| {
            c.timer_set("fired", 5).unwrap();
            c.timer_set("cleared", 50).unwrap();
            c.timer_set("kept", 60).unwrap();
        });
        call(&mut c, "k", false, |c| c.timer_set("undone", 7).unwrap());
        call(&mut c, "k", true, |c| {
            assert!(c.timer_clear("cleared").unwrap());
        });
        assert_eq!(c.pop_due(6).len(), 1);
        assert_eq!(rows(&mut c), vec![("k".into(), "kept".into(), Some(60))]);
        call(&mut c, "k", true, |c| {
            c.timer_set("kept", 70).unwrap();
            c.timer_set("fired", 8).unwrap();
        });
        assert_eq!(c.pop_due(9).len(), 1);
        assert_eq!(rows(&mut c), vec![("k".into(), "kept".into(), Some(70))]);
        assert_eq!(c.pop_due(i64::MAX).len(), 1);
        assert_eq!(rows(&mut c), vec![("k".into(), "kept".into(), None)]);
        assert_eq!(rows(&mut c), vec![]);
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let mut c = OpCtx::new(
            "op".into(),
            None,
            Limits {
                max_timers_per_key: 1,
                max_name: 4,
                ..Limits::default()
            },
        );
        assert!(matches!(c.timer_set("t", 1), Err(HostError::NoKey)));
        call(&mut c, "k", false, |c| {
            assert!(matches!(
                c.timer_set("t", 1),
                Err(HostError::NoTimerHandler)
            ));
            c.set_timer_use(TimerUse::LaterStage);
            assert!(matches!(
                c.timer_set("t", 1),
                Err(HostError::TimersLaterStage)
            ));
            c.set_timer_use(TimerUse::Allowed);
            c.timer_set("t", 1).unwrap();
            c.timer_set("t", 2).unwrap();
            let e = c.timer_set("u", 1).unwrap_err();
            assert!(e.to_string().contains("max_timers_per_key = 1"), "{e}");
            let e = c.timer_set("long!", 1).unwrap_err();
            assert!(e.to_string().contains("max_name_bytes = 4"), "{e}");
        });
        assert!(c.timers().is_empty());
    }
}
