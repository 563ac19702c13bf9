//! State time to live (an operator's `ttl.NAME = { after, refresh }`): a
//! state name whose entries expire in event time.
//!
//! Each key's entry under a TTL'd name has a deadline: the event time of
//! its last write (or, with `refresh = "read"`, read) plus `after`. The
//! deadlines are a second [`TimerTable`] of the context, keyed by state
//! name, so they move with the state cache (after a trap, at a hot swap),
//! are undone with a failed call's writes (they are only set when a call
//! succeeds) and are written at checkpoints as rows of the `timers` table
//! named [`TTL_PREFIX`] + the state name (a user timer may not take such a
//! name).
//!
//! An entry expires once the watermark is past its deadline: at that
//! advance, before any timer fires and before any later event is handled,
//! its value, map and list are deleted from the cache, and the key's
//! record is rewritten (or deleted, when nothing is left) at the next
//! checkpoint. So an expired entry is never returned, and its storage is
//! reclaimed without waiting for a read. An entry written by an event
//! whose time is already that far behind the watermark (a late event
//! delivered) expires as soon as that event ends. The end of a file input
//! (the watermark +infinity) expires nothing: state outlives the run.

use smallvec::SmallVec;

use crate::config::{Refresh, TtlSpec};
use crate::state::{Name, TimerWrite};

use super::{OpCtx, TimerTable, RECORD_HEADER};

/// Name prefix of the rows of TTL deadlines in the `timers` table.
pub const TTL_PREFIX: &str = "\0ttl:";

/// The TTL of an operator's state names, and their deadlines.
pub(super) struct Ttl {
    specs: Vec<TtlSpec>,
    /// Per interned state name (by index): 0 when it has no TTL, else its
    /// spec's index + 1. Filled as names are interned.
    by_name: Vec<u16>,
    /// Specs whose entry the current call wrote (or read, with refresh on
    /// read).
    touched: SmallVec<[u16; 4]>,
    /// Whether some name refreshes on read.
    reads: bool,
    /// Deadlines, by key and state name.
    deadlines: TimerTable,
}

impl Ttl {
    /// Whether the key in `slot` has deadlines (pending or not yet
    /// written): then it stays cached.
    pub(super) fn holds(&self, slot: u32) -> bool {
        self.deadlines.holds(slot)
    }

    /// Whether the key in `slot` has deadline rows not yet written.
    pub(super) fn deadlines_unwritten(&self, slot: u32) -> bool {
        self.deadlines.unwritten(slot)
    }

    /// Forgets the deadlines of the key in `slot` (see
    /// [`super::timers::TimerTable::forget`]).
    pub(super) fn forget(&mut self, slot: u32, key: &compact_str::CompactString) {
        self.deadlines.forget(slot, key);
    }

    fn new(specs: &[TtlSpec]) -> Ttl {
        Ttl {
            specs: specs.to_vec(),
            by_name: Vec::new(),
            touched: SmallVec::new(),
            reads: specs.iter().any(|s| s.refresh == Refresh::Read),
            deadlines: TimerTable::default(),
        }
    }

    /// The spec of interned name `n`, if it has a TTL.
    fn spec(&mut self, names: &[Box<str>], n: Name) -> Option<u16> {
        let n = n as usize;
        while self.by_name.len() < names.len() {
            let name = &names[self.by_name.len()];
            let i = self.specs.iter().position(|s| *s.name == **name);
            self.by_name.push(i.map_or(0, |i| i as u16 + 1));
        }
        match self.by_name.get(n) {
            Some(&i) if i > 0 => Some(i - 1),
            _ => None,
        }
    }

    /// The spec of state name `name`, if it has a TTL.
    fn spec_named(&self, name: &str) -> Option<u16> {
        self.specs
            .iter()
            .position(|s| *s.name == *name)
            .map(|i| i as u16)
    }
}

impl OpCtx {
    /// Gives the operator's state names their time to live (from its
    /// pipeline table; none: no TTL, and no cost).
    pub fn set_ttl(&mut self, specs: &[TtlSpec]) {
        self.ttl = (!specs.is_empty()).then(|| Box::new(Ttl::new(specs)));
    }

    /// Sets the event time of the call about to run (`None`: the event has
    /// none): writes to TTL'd names are stamped with it.
    pub fn set_event_time(&mut self, time: Option<i64>) {
        self.event_time = time;
    }

    /// Whether this operator's events must go through the per-event path,
    /// where the host sees every state call: a late event being delivered,
    /// or TTL refreshed on read (a batch hands the guest its keys' values,
    /// so its reads are not seen).
    pub fn per_event_only(&self) -> bool {
        self.late || self.ttl.as_ref().is_some_and(|t| t.reads)
    }

    /// Notes a write of state name `n` by the current call.
    pub(super) fn ttl_wrote(&mut self, n: Name) {
        if let Some(t) = &mut self.ttl {
            if let Some(s) = t.spec(&self.names, n) {
                t.touched.push(s);
            }
        }
    }

    /// Notes a read of state name `n` by the current call (refreshes the
    /// entry's TTL when its name has `refresh = "read"`).
    pub(super) fn ttl_read(&mut self, n: Name) {
        if let Some(t) = &mut self.ttl {
            if !t.reads {
                return;
            }
            if let Some(s) = t.spec(&self.names, n) {
                if t.specs[s as usize].refresh == Refresh::Read {
                    t.touched.push(s);
                }
            }
        }
    }

    /// Notes that the current call cleared all of its key's state.
    pub(super) fn ttl_cleared(&mut self) {
        if let Some(t) = &mut self.ttl {
            t.touched.extend(0..t.specs.len() as u16);
        }
    }

    /// Ends the current call for TTL: with `ok`, each name it touched gets
    /// the deadline of its entry (its event time, or the watermark for a
    /// call without one, plus `after`), or none when the entry is gone; an
    /// entry already past its deadline expires now.
    pub(super) fn ttl_finish(&mut self, slot: u32, ok: bool) {
        let Some(t) = &mut self.ttl else { return };
        if t.touched.is_empty() {
            return;
        }
        let mut touched = std::mem::take(&mut t.touched);
        if ok {
            touched.sort_unstable();
            touched.dedup();
            let stamp = self.event_time.unwrap_or(self.watermark);
            let s = &self.slots[slot as usize];
            let mut expired: SmallVec<[u16; 4]> = SmallVec::new();
            for &i in &touched {
                let spec = &t.specs[i as usize];
                let n = super::index::lookup(&self.names, spec.name.as_bytes());
                let present = n.is_some_and(|n| s.entity.has(n));
                if present {
                    let after = i64::try_from(spec.after).unwrap_or(i64::MAX);
                    let at = stamp.saturating_add(after);
                    // A key holds one deadline per TTL'd name: never over
                    // the limit.
                    let _ = t.deadlines.set(slot, &s.key, &spec.name, at, usize::MAX);
                    if at < self.watermark && self.watermark != i64::MAX {
                        expired.push(i);
                    }
                } else {
                    t.deadlines.clear(slot, &s.key, &spec.name);
                }
            }
            t.deadlines.commit();
            for i in expired {
                self.expire(slot, i);
            }
        }
        touched.clear();
        if let Some(t) = &mut self.ttl {
            t.touched = touched;
        }
    }

    /// Expires the entries whose deadline the watermark `w` passed (none
    /// at the end of the input, `i64::MAX`); returns how many.
    pub fn expire_due(&mut self, w: i64) -> usize {
        let Some(t) = &mut self.ttl else { return 0 };
        if w == i64::MAX || t.deadlines.next().is_none_or(|next| next >= w) {
            return 0;
        }
        let due = t.deadlines.pop_due(w);
        let n = due.len();
        for (_, _, name, slot) in due {
            let spec = self.ttl.as_ref().and_then(|t| t.spec_named(&name));
            if let Some(i) = spec {
                self.expire(slot, i);
            }
        }
        n
    }

    /// Deletes the entry under TTL spec `i` of the key in `slot`: its
    /// value, map and list (outside any call: nothing to undo), to be
    /// written at the next checkpoint.
    fn expire(&mut self, slot: u32, i: u16) {
        let Some(t) = &self.ttl else { return };
        let Some(n) = super::index::lookup(&self.names, t.specs[i as usize].name.as_bytes()) else {
            return;
        };
        let s = &mut self.slots[slot as usize];
        let old = super::mem(s);
        if !s.entity.expire(n) {
            return;
        }
        s.size = if s.entity.is_empty() {
            RECORD_HEADER
        } else {
            let mut buf = Vec::new();
            s.entity.encode_tagged(s.generation, &self.names, &mut buf);
            buf.len() + s.entity.spilled_bytes() as usize
        };
        let new = super::mem(s);
        self.resized(old, new);
        self.mark_dirty(slot);
    }

    /// The TTL deadlines changed since the last call, as rows to write.
    pub(super) fn take_ttl_writes(&mut self, out: &mut Vec<TimerWrite>) {
        if let Some(t) = &mut self.ttl {
            let from = out.len();
            t.deadlines.take_writes(&self.name, out);
            for w in &mut out[from..] {
                w.name = format!("{TTL_PREFIX}{}", w.name).into();
            }
        }
    }

    /// Puts back the deadline `at` of the entry under state name `name` of
    /// `key`, from the checkpoint (a name no longer given a TTL is
    /// dropped, its row deleted at the next checkpoint).
    pub(super) fn restore_ttl(
        &mut self,
        key: &str,
        name: &str,
        at: i64,
    ) -> Result<(), crate::state::StoreError> {
        let slot = self.load(key)?;
        let key = self.slots[slot as usize].key.clone();
        // Without any TTL now, a table with no spec deletes the row.
        let t = self.ttl.get_or_insert_with(|| Box::new(Ttl::new(&[])));
        t.deadlines.restore(slot, &key, name, at);
        if t.spec_named(name).is_none() {
            t.deadlines.clear(slot, &key, name);
            t.deadlines.commit();
        }
        Ok(())
    }

    /// The number of pending TTL deadlines.
    pub fn ttl_pending(&self) -> usize {
        self.ttl.as_ref().map_or(0, |t| t.deadlines.len())
    }

    /// Whether a state name has a time to live, or an entry a deadline
    /// (read back from a checkpoint): then watermark advances may expire
    /// entries.
    pub fn has_ttl(&self) -> bool {
        self.ttl.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::operator::host::Emits;

    fn ctx(specs: &[(&str, u64, Refresh)]) -> OpCtx {
        let mut c = OpCtx::new("op".into(), None, Limits::default());
        let specs: Vec<TtlSpec> = specs
            .iter()
            .map(|&(name, after, refresh)| TtlSpec {
                name: name.into(),
                after,
                refresh,
            })
            .collect();
        c.set_ttl(&specs);
        c
    }

    /// Runs `f` as one call on `key` at event time `t`, kept when `ok`.
    fn call(c: &mut OpCtx, key: &str, t: i64, ok: bool, f: impl FnOnce(&mut OpCtx)) {
        c.set_event_time(Some(t));
        c.begin(key).unwrap();
        f(c);
        c.finish(ok, &mut Emits::default());
    }

    fn get(c: &mut OpCtx, key: &str, name: &str) -> Option<Vec<u8>> {
        c.begin(key).unwrap();
        let v = c.get(name).unwrap().map(<[u8]>::to_vec);
        c.finish(true, &mut Emits::default());
        v
    }

    fn advance(c: &mut OpCtx, w: i64) -> usize {
        c.set_watermark(w);
        c.expire_due(w)
    }

    /// The rows the next checkpoint writes, as (key, name, at).
    fn rows(c: &mut OpCtx) -> Vec<(String, String, Option<i64>)> {
        let mut out = Vec::new();
        c.take_timer_writes(&mut out);
        let mut v: Vec<_> = out
            .into_iter()
            .map(|w| (w.key.to_string(), w.name.to_string(), w.at))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_entry_lives_until_the_watermark_passes_its_last_write_plus_after() {
        let mut c = ctx(&[("v", 10, Refresh::Write)]);
        call(&mut c, "k", 5, true, |c| c.set("v", b"1").unwrap());
        call(&mut c, "k", 5, true, |c| c.set("other", b"x").unwrap());
        assert_eq!(rows(&mut c), vec![("k".into(), "\0ttl:v".into(), Some(15))]);
        assert_eq!(advance(&mut c, 15), 0, "at its deadline: kept");
        assert_eq!(get(&mut c, "k", "v"), Some(b"1".to_vec()));
        // A rewrite at 8 moves the deadline to 18.
        call(&mut c, "k", 8, true, |c| c.set("v", b"2").unwrap());
        assert_eq!(advance(&mut c, 16), 0);
        assert_eq!(get(&mut c, "k", "v"), Some(b"2".to_vec()));
        assert_eq!(advance(&mut c, 19), 1, "past it: expired");
        assert_eq!(get(&mut c, "k", "v"), None);
        assert_eq!(get(&mut c, "k", "other"), Some(b"x".to_vec()), "no TTL");
        assert_eq!(rows(&mut c), vec![("k".into(), "\0ttl:v".into(), None)]);
        // Its record is rewritten without it at the checkpoint.
        let mut writes = Vec::new();
        c.take_dirty(1, &mut writes);
        assert_eq!(writes.len(), 1);
        assert!(writes[0].record.is_some(), "`other` is left");
    }

    #[test]
    fn an_expired_key_with_nothing_left_is_deleted_and_maps_and_lists_expire_too() {
        let mut c = ctx(&[("m", 1, Refresh::Write), ("l", 1, Refresh::Write)]);
        call(&mut c, "k", 0, true, |c| {
            c.map_set("m", "f".into(), b"1".to_vec()).unwrap();
            c.list_push("l", b"a".to_vec()).unwrap();
        });
        let mut writes = Vec::new();
        c.take_dirty(1, &mut writes);
        assert_eq!(advance(&mut c, 2), 2);
        writes.clear();
        c.take_dirty(1, &mut writes);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].record, None, "the key's record is deleted");
        c.begin("k").unwrap();
        assert_eq!(c.map_len("m").unwrap(), 0);
        assert_eq!(c.list_len("l").unwrap(), 0);
        assert_eq!(c.key_state_size(), Some(RECORD_HEADER));
        c.finish(true, &mut Emits::default());
    }

    #[test]
    fn a_failed_call_sets_no_deadline_and_a_delete_clears_it() {
        let mut c = ctx(&[("v", 10, Refresh::Write)]);
        call(&mut c, "k", 5, false, |c| c.set("v", b"1").unwrap());
        assert_eq!(c.ttl_pending(), 0);
        assert_eq!(rows(&mut c), vec![]);
        call(&mut c, "k", 5, true, |c| c.set("v", b"1").unwrap());
        // A failed rewrite at 50 leaves the deadline at 15.
        call(&mut c, "k", 50, false, |c| c.set("v", b"2").unwrap());
        assert_eq!(advance(&mut c, 16), 1);
        call(&mut c, "k", 20, true, |c| c.set("v", b"3").unwrap());
        call(&mut c, "k", 21, true, |c| assert!(c.delete("v").unwrap()));
        assert_eq!(c.ttl_pending(), 0);
        call(&mut c, "k", 22, true, |c| c.set("v", b"4").unwrap());
        call(&mut c, "k", 23, true, |c| c.clear().unwrap());
        assert_eq!(c.ttl_pending(), 0);
    }

    #[test]
    fn refresh_on_read_renews_and_the_end_of_the_input_expires_nothing() {
        let mut c = ctx(&[("r", 10, Refresh::Read), ("w", 10, Refresh::Write)]);
        assert!(c.per_event_only(), "reads are only seen per event");
        call(&mut c, "k", 0, true, |c| {
            c.set("r", b"1").unwrap();
            c.set("w", b"1").unwrap();
        });
        call(&mut c, "k", 8, true, |c| {
            c.get("r").unwrap();
            c.get("w").unwrap();
        });
        assert_eq!(advance(&mut c, 11), 1, "only w expired");
        assert_eq!(get(&mut c, "k", "r"), Some(b"1".to_vec()));
        assert_eq!(advance(&mut c, i64::MAX), 0);
        assert_eq!(c.ttl_pending(), 1);
    }

    #[test]
    fn a_write_already_past_its_deadline_expires_when_its_call_ends() {
        let mut c = ctx(&[("v", 10, Refresh::Write)]);
        advance(&mut c, 100);
        call(&mut c, "k", 50, true, |c| c.set("v", b"1").unwrap());
        assert_eq!(get(&mut c, "k", "v"), None);
        // Without a time, a write is stamped with the watermark.
        c.set_event_time(None);
        c.begin("k").unwrap();
        c.set("v", b"2").unwrap();
        c.finish(true, &mut Emits::default());
        assert_eq!(get(&mut c, "k", "v"), Some(b"2".to_vec()));
        assert_eq!(advance(&mut c, 111), 1);
    }

    #[test]
    fn deadlines_come_back_from_a_checkpoint_and_user_timers_cannot_take_their_names() {
        let mut c = ctx(&[("v", 10, Refresh::Write)]);
        c.restore_timer("k", "\0ttl:v", 15).unwrap();
        c.restore_timer("k", "\0ttl:gone", 15).unwrap();
        assert_eq!(c.ttl_pending(), 1, "a name without TTL any more is dropped");
        let mut none = OpCtx::new("op".into(), None, Limits::default());
        none.restore_timer("k", "\0ttl:v", 15).unwrap();
        assert_eq!(none.ttl_pending(), 0);
        assert_eq!(
            rows(&mut none),
            vec![("k".into(), "\0ttl:v".into(), None)],
            "no TTL at all any more: the row is deleted"
        );
        assert_eq!(c.timers().len(), 0, "not a user timer");
        assert_eq!(rows(&mut c), vec![("k".into(), "\0ttl:gone".into(), None)]);
        c.set_timer_use(crate::operator::TimerUse::Allowed);
        c.begin("k").unwrap();
        let e = c.timer_set("\0ttl:v", 1).unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
        c.finish(false, &mut Emits::default());
    }
}
