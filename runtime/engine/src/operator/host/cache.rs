//! The state cache's memory: what the cached keys cost, and the eviction
//! of cold keys when a worker is over its budget (`[state] cache_bytes`).
//!
//! A key may leave the cache only when the store holds what the cache
//! does, and the context's reader sees it:
//!
//! - it is not dirty (its changes were handed over at a checkpoint
//!   barrier), and the checkpoint that took them is durable
//!   ([`crate::state::Store::durable_seq`]) and older than the reader
//!   ([`OpCtx::renew_reader`]);
//! - it has no pending timers or TTL deadlines, and no timer rows not yet
//!   taken (those refer to its slot).
//!
//! Such a key is read back from the store on its next event, exactly as on
//! its first. Eviction runs between batches, never while a batch holds
//! slot numbers. The sweep is CLOCK (second chance): a key touched since
//! the sweep last passed is spared once, so hot keys stay.

use compact_str::CompactString;

use crate::state::{Entity, Reader};

use super::{OpCtx, Slot};

/// Memory a cached key costs besides its state's bytes: its slot, its
/// index entries (the index is at most half full, 8 bytes an entry) and
/// the allocator's rounding.
pub(super) const SLOT_COST: usize = std::mem::size_of::<Slot>() + 16 + 16;

/// A cached key's memory, as counted against the budget: [`SLOT_COST`],
/// the key's bytes when they do not fit inline, and its state's size as
/// stored (close to what its values, maps and lists take in memory) less
/// the items of spilled lists and fields of spilled maps that are only in
/// rows, plus the marks of deleted fields of spilled maps still held.
pub(super) fn cost(slot: &Slot) -> usize {
    let key = if slot.key.is_heap_allocated() {
        slot.key.capacity()
    } else {
        0
    };
    SLOT_COST + key + super::mem(slot)
}

/// The cache's bookkeeping, in [`OpCtx`].
#[derive(Default)]
pub(super) struct Cache {
    /// Slots without a key, reused first.
    pub(super) free: Vec<u32>,
    /// Memory of the cached keys ([`cost`] summed).
    pub(super) bytes: usize,
    /// Part of `bytes` changed since the last barrier.
    pub(super) dirty_bytes: usize,
    /// Memory of the keys handed over at the last barrier, until its
    /// checkpoint is durable (the encoded copy waits in the committer).
    pub(super) pending_bytes: usize,
    /// Number of the last checkpoint barrier.
    pub(super) taken: u64,
    /// The reader sees every checkpoint up to this number.
    pub(super) seen: u64,
    /// Where the eviction sweep resumes.
    hand: usize,
    /// Counters since start.
    pub(super) stats: CacheStats,
}

/// What a state cache did since start, and holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups of a key that was cached.
    pub hits: u64,
    /// Lookups of a key that was not: read from the store (or new).
    pub misses: u64,
    /// Keys evicted.
    pub evictions: u64,
    /// Keys cached now.
    pub keys: u64,
    /// Their memory, as counted against the budget.
    pub bytes: u64,
}

impl OpCtx {
    /// The memory the cached keys take, as counted against the budget,
    /// plus that of the state handed over at the last barrier until it is
    /// durable.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes + self.cache.pending_bytes
    }

    /// The memory of the keys changed since the last barrier (they cannot
    /// be evicted before the next checkpoint).
    pub fn dirty_bytes(&self) -> usize {
        self.cache.dirty_bytes
    }

    /// The cache's counters.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            keys: (self.slots.len() - self.cache.free.len()) as u64,
            bytes: self.cache.bytes as u64,
            ..self.cache.stats
        }
    }

    /// Number of the checkpoint the reader sees up to (see
    /// [`OpCtx::renew_reader`]).
    pub fn reader_seq(&self) -> u64 {
        self.cache.seen
    }

    /// Replaces the reader of committed state by `reader`, which sees
    /// every checkpoint up to number `durable` (read from
    /// [`crate::state::Store::durable_seq`] before `reader` was made):
    /// keys whose changes those checkpoints took may now be evicted.
    pub fn renew_reader(&mut self, reader: Reader, durable: u64) {
        self.reader = Some(reader);
        self.cache.seen = durable;
        if durable >= self.cache.taken {
            self.cache.pending_bytes = 0;
        }
        // Spilled items handed over at a checkpoint the reader now sees
        // leave memory: the reader serves them.
        let mut flushed = std::mem::take(&mut self.flushed);
        flushed.retain(|&i| {
            let s = &mut self.slots[i as usize];
            if s.written > durable {
                return true;
            }
            let freed = s.entity.drop_flushed() as usize;
            self.cache.bytes = self.cache.bytes.saturating_sub(freed);
            false
        });
        self.flushed = flushed;
    }

    /// Lets go of the reader of committed state, so that the state
    /// database can be compacted (which needs no read open). Until
    /// [`OpCtx::renew_reader`] gives it a new one, no key may be loaded:
    /// call it between batches, and renew before the next.
    pub fn drop_reader(&mut self) {
        self.reader = None;
    }

    /// Evicts cold keys until about `want` bytes are freed (or no key
    /// can go); returns the bytes freed. Call it between batches only.
    pub fn evict(&mut self, want: usize) -> usize {
        let n = self.slots.len();
        let mut freed = 0;
        // Two turns at most: the first may only clear second chances.
        let mut steps = 0;
        while freed < want && steps < 2 * n {
            steps += 1;
            let i = self.cache.hand;
            self.cache.hand = if i + 1 >= n { 0 } else { i + 1 };
            let s = &mut self.slots[i];
            if s.free {
                continue;
            }
            if s.used {
                s.used = false;
                continue;
            }
            if s.dirty || s.written > self.cache.seen || self.holds(i as u32) {
                continue;
            }
            freed += self.drop_slot(i as u32);
        }
        freed
    }

    /// Drops every cached key `drop` selects, with its pending timers and
    /// TTL deadlines (their partition moved to another process, which has
    /// them from the changelog); returns how many of those could not go
    /// (changed since the last checkpoint, or not yet seen committed).
    /// Call it between batches only.
    pub fn release(&mut self, drop: &dyn Fn(&str) -> bool) -> usize {
        let mut kept = 0;
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.free || !drop(&s.key) {
                continue;
            }
            let slot = i as u32;
            let unwritten = self.timers.unwritten(slot)
                || self
                    .ttl
                    .as_ref()
                    .is_some_and(|t| t.deadlines_unwritten(slot));
            if s.dirty || s.written > self.cache.seen || unwritten {
                kept += 1;
                continue;
            }
            let key = s.key.clone();
            self.timers.forget(slot, &key);
            if let Some(t) = &mut self.ttl {
                t.forget(slot, &key);
            }
            self.drop_slot(slot);
        }
        kept
    }

    /// Whether the key in `slot` has timers or TTL deadlines.
    fn holds(&self, slot: u32) -> bool {
        self.timers.holds(slot) || self.ttl.as_ref().is_some_and(|t| t.holds(slot))
    }

    /// Takes the key out of `slot` (clean, durable, no timers).
    fn drop_slot(&mut self, slot: u32) -> usize {
        let s = &self.slots[slot as usize];
        let h = self.index.hash(&s.key);
        self.index.remove(h, slot, &self.slots);
        let s = &mut self.slots[slot as usize];
        let c = cost(s);
        s.key = CompactString::default();
        s.entity = Entity::default();
        s.free = true;
        s.size = 0;
        self.cache.free.push(slot);
        self.cache.bytes = self.cache.bytes.saturating_sub(c);
        self.cache.stats.evictions += 1;
        c
    }

    /// Counts a cached key's state grown (or shrunk) from `old` bytes to
    /// `new`.
    pub(super) fn resized(&mut self, old: usize, new: usize) {
        self.cache.bytes = (self.cache.bytes + new).saturating_sub(old);
    }

    /// Lists the key in `slot` as changed since the last barrier.
    pub(super) fn mark_dirty(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if !s.dirty {
            s.dirty = true;
            self.dirty.push(slot);
            self.cache.dirty_bytes += cost(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::operator::Emits;
    use crate::state::{Checkpoint, Store};

    /// One event of `key` that reads its `n` and, with `add`, adds 1 to
    /// it; returns the `n` it read.
    fn event(ctx: &mut OpCtx, key: &str, add: bool) -> u64 {
        ctx.begin(key).unwrap();
        let n = ctx
            .get("n")
            .unwrap()
            .map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
        if add {
            ctx.set("n", &(n + 1).to_le_bytes()).unwrap();
        }
        ctx.finish(true, &mut Emits::default());
        n
    }

    /// Adds 1 to the `n` of `key` (a counter event).
    fn count(ctx: &mut OpCtx, key: &str) {
        event(ctx, key, true);
    }

    /// The `n` of `key` (an event that only reads).
    fn n_of(ctx: &mut OpCtx, key: &str) -> u64 {
        event(ctx, key, false)
    }

    /// Hands the changes over as checkpoint `seq` and commits it
    /// (`durable`: the commit happened) or not, then renews the reader as
    /// a worker does.
    fn checkpoint(ctx: &mut OpCtx, store: &Store, seq: u64, durable: bool) {
        let mut cp = Checkpoint {
            seq,
            // Every other one not flushed to disk (as the checkpoints a
            // cache over budget asks for): visible to readers all the same.
            durable: seq.is_multiple_of(2),
            ..Default::default()
        };
        ctx.take_dirty(seq, cp.writes.part());
        if durable {
            store.commit(&cp).unwrap();
        }
        ctx.renew_reader(store.reader().unwrap(), store.durable_seq());
    }

    #[test]
    fn evicted_keys_come_back_with_their_committed_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let mut ctx = OpCtx::new(
            "op".into(),
            Some(store.reader().unwrap()),
            Limits::default(),
        );
        let keys: Vec<String> = (0..2000).map(|i| format!("key-{i}")).collect();
        let mut want = vec![0u64; keys.len()];
        let mut seq = 0;
        for round in 0..5usize {
            for (i, k) in keys.iter().enumerate() {
                // Every key once, some twice: counts differ per key.
                for _ in 0..1 + (i + round) % 3 {
                    count(&mut ctx, k);
                    want[i] += 1;
                }
            }
            // Nothing dirty or not yet durable may go.
            assert_eq!(ctx.evict(usize::MAX), 0, "round {round}: dirty keys stay");
            seq += 1;
            checkpoint(&mut ctx, &store, seq, true);
            let before = ctx.cache_stats();
            let freed = ctx.evict(ctx.cache.bytes / 2);
            let after = ctx.cache_stats();
            assert!(freed >= before.bytes as usize / 2, "round {round}");
            assert_eq!(before.bytes - after.bytes, freed as u64);
            assert!(after.keys < before.keys);
            assert_eq!(after.evictions - before.evictions, before.keys - after.keys);
        }
        // Every key, cached or evicted, has exactly its count.
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(n_of(&mut ctx, k), want[i], "{k}");
        }
        let s = ctx.cache_stats();
        assert!(s.misses > keys.len() as u64, "evicted keys were read back");
        // The count of cached bytes is what the cached keys cost.
        let recount: usize = ctx.slots.iter().filter(|s| !s.free).map(cost).sum();
        assert_eq!(recount, ctx.cache.bytes);
    }

    #[test]
    fn a_key_whose_checkpoint_is_not_durable_stays_cached() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let mut ctx = OpCtx::new(
            "op".into(),
            Some(store.reader().unwrap()),
            Limits::default(),
        );
        count(&mut ctx, "a");
        count(&mut ctx, "a");
        // Handed over, but its commit has not happened: the store still
        // has nothing for `a`, so `a` must not go.
        checkpoint(&mut ctx, &store, 1, false);
        assert_eq!(ctx.evict(usize::MAX), 0);
        assert_eq!(n_of(&mut ctx, "a"), 2);
        // A key only read (never written) may go at any time.
        n_of(&mut ctx, "b");
        ctx.evict(usize::MAX);
        ctx.evict(usize::MAX);
        assert_eq!(ctx.cache_stats().keys, 1, "only `a` is left");
    }

    #[test]
    fn keys_with_timers_stay_cached() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let mut ctx = OpCtx::new(
            "op".into(),
            Some(store.reader().unwrap()),
            Limits::default(),
        );
        ctx.set_timer_use(crate::operator::TimerUse::Allowed);
        for k in ["a", "b"] {
            count(&mut ctx, k);
        }
        ctx.begin("a").unwrap();
        ctx.timer_set("t", 10).unwrap();
        ctx.finish(true, &mut Emits::default());
        checkpoint(&mut ctx, &store, 1, true);
        let mut rows = Vec::new();
        ctx.take_timer_writes(&mut rows);
        assert_eq!(rows.len(), 1, "the pending timer's row");
        ctx.evict(usize::MAX);
        ctx.evict(usize::MAX);
        assert_eq!(ctx.cache_stats().keys, 1);
        assert_eq!(ctx.timers().get(0, "t"), Some(10));
        // Once it fired and its row is taken, it may go too.
        assert_eq!(ctx.pop_due(11).len(), 1);
        ctx.evict(usize::MAX);
        assert_eq!(ctx.cache_stats().keys, 1, "its timer row is not taken yet");
        let mut rows = Vec::new();
        ctx.take_timer_writes(&mut rows);
        assert_eq!(rows.len(), 1, "its row's deletion");
        ctx.evict(usize::MAX);
        assert_eq!(ctx.cache_stats().keys, 0);
    }

    #[test]
    fn the_index_finds_every_key_after_any_removals() {
        // Many keys in a small table, removed in an order that makes long
        // runs shift back: every key left is still found, and no removed
        // one is.
        let mut ctx = OpCtx::new("op".into(), None, Limits::default());
        let keys: Vec<String> = (0..5000).map(|i| format!("{i:x}")).collect();
        for k in &keys {
            n_of(&mut ctx, k);
        }
        let mut gone = std::collections::HashSet::new();
        for (i, k) in keys.iter().enumerate().filter(|(i, _)| i % 3 != 1) {
            let h = ctx.index.hash(k);
            let slot = ctx
                .index
                .find(h, |s| ctx.slots[s as usize].key == *k)
                .unwrap();
            if i % 2 == 0 {
                ctx.drop_slot(slot);
                gone.insert(k.clone());
            }
        }
        for k in &keys {
            let h = ctx.index.hash(k);
            let found = ctx.index.find(h, |s| ctx.slots[s as usize].key == *k);
            assert_eq!(found.is_some(), !gone.contains(k), "{k}");
        }
        // Freed slots are reused.
        let before = ctx.slots.len();
        for k in gone.iter().take(100) {
            n_of(&mut ctx, k);
        }
        assert_eq!(ctx.slots.len(), before);
    }
}
