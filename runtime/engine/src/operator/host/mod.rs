//! The host context of one operator on one worker ([`OpCtx`]), shared by
//! Wasm and native operators, so both pay the same host state path. The
//! WIT imports are implemented on it, one file per interface: [`state`]
//! (`eddy:operator/state`), [`output`] (`eddy:operator/output`), [`log`]
//! (`eddy:operator/log`) and [`timers`] (`eddy:operator/timers`).
//!
//! The context caches every key it has touched (an [`Entity`] per key) and
//! tracks which changed since the last checkpoint. Handling an event is
//! bracketed by [`OpCtx::begin`] and [`OpCtx::finish`]: in between, state
//! calls act on that event's key only, writes are journaled and emits
//! buffered, so a failed event is rolled back completely.
//!
//! Every host call and every batched result is held to the operator's
//! [`Limits`] ([`limits`]): sizes of values, names, map fields, emitted
//! keys and payloads, what one event emits, what the host holds for one
//! event, and the state one key holds (a byte count kept per key as it is
//! written, equal to the length of the key's stored record, so checking it
//! costs no recount). An event that breaks one fails as a whole.
//!
//! - [`index`]: key → cache slot, and the interned state names.
//! - [`cache`]: the memory the cached keys take, and the eviction of cold
//!   keys when it is over budget.
//! - [`apply`]: one event's outcome from a batched call, checked then
//!   applied.
//! - `ttl`: state time to live, the deadlines of TTL'd entries and their
//!   expiry at watermark advances.

use std::sync::Arc;

use compact_str::CompactString;

use crate::config::Limits;
use crate::state::{Entity, Name, Reader, StateWrite, StoreError, Undo, SPILL_BYTES, SPILL_ITEMS};

mod apply;
mod cache;
mod index;
mod limits;
mod log;
mod output;
mod state;
#[cfg(test)]
mod tests;
mod timers;
mod ttl;

pub use cache::CacheStats;
use index::{intern, prefetch, same, Index};
pub use limits::{cap_reason, HostError};
pub use output::Emits;
pub use timers::{TimerTable, TimerUse};
pub use ttl::TTL_PREFIX;

/// Turns a refused host call into the trap that carries it: kept as a
/// [`HostError`] so the event's dead letter names the refusal (see the
/// Wasm operator's fault handling).
fn trap(e: HostError) -> wasmtime::Error {
    wasmtime::Error::new(e)
}

/// Most distinct state names one operator may write (per worker): names
/// are interned for the operator's lifetime.
pub const MAX_STATE_NAMES: usize = 1024;

/// Sizes of a key's state as stored (see `Entity::encode_tagged`): the
/// record's fixed part (format, generation, three counts, checksum), and
/// the framing each value, map, map field, list and list item adds to its
/// bytes.
const RECORD_HEADER: usize = crate::state::RECORD_OVERHEAD;
const VALUE_ENTRY: usize = 8;
const MAP_ENTRY: usize = 8;
const FIELD_ENTRY: usize = 8;
const LIST_ENTRY: usize = 8;
const ITEM_ENTRY: usize = 4;

/// The size of a stored record as [`Limits::max_key_state`] counts it (a
/// format 1 record lacks the 4-byte version tag of format 2).
fn record_size(rec: &[u8]) -> usize {
    rec.len() + if rec.first() == Some(&1) { 4 } else { 0 }
}

/// The memory a cached key's state takes: its size as stored, less the
/// spilled list items and map fields that are only in rows, plus the marks
/// of a spilled map's deleted fields held until their rows' deletion is
/// visible.
fn mem(slot: &Slot) -> usize {
    slot.size.saturating_sub(slot.entity.row_bytes() as usize)
        + slot.entity.map_mark_bytes() as usize
}

/// A cached key: its state and whether it changed since the last checkpoint.
struct Slot {
    key: CompactString,
    entity: Entity,
    /// Generation of the operator version that last wrote (or migrated)
    /// this key's state: a key written by another version than the running
    /// one is migrated on first touch.
    generation: u32,
    /// Already listed in `OpCtx::dirty`.
    dirty: bool,
    /// Size of `entity` as stored (its record's length, plus the items of
    /// its spilled lists), kept up to date write by write for
    /// [`Limits::max_key_state`].
    size: usize,
    /// Number of the checkpoint that took this key's last changes (0:
    /// none since start): until that one is durable, the key's state in
    /// the store is older than this, so the key stays cached.
    written: u64,
    /// Touched since the eviction sweep last passed (its second chance).
    used: bool,
    /// The slot holds no key (evicted; listed in `OpCtx::free`).
    free: bool,
}

/// Host context of one operator on one worker.
pub struct OpCtx {
    /// Operator name: the state name space in the store.
    name: Arc<str>,
    /// The cached keys, as an index into `slots`. A key absent here has
    /// not been written since start, or was evicted once its last write
    /// was durable and `reader` sees it, so the store is accurate for it.
    index: Index,
    /// Scratch: key hashes of the batch being resolved.
    hashes: Vec<u64>,
    /// Scratch: each key's likely slot (`u32::MAX`: none).
    candidates: Vec<u32>,
    /// Interned state names ([`Name`] is an index here).
    names: Vec<Box<str>>,
    slots: Vec<Slot>,
    /// Slots changed since the last checkpoint.
    dirty: Vec<u32>,
    /// Committed state, for keys not yet cached.
    reader: Option<Reader>,
    /// The cache's bookkeeping: free slots, bytes, the eviction sweep,
    /// hit and miss counts.
    cache: cache::Cache,
    /// The slot of the key being processed.
    current: Option<u32>,
    /// Lines logged during the `handle-batch` call under way (`None`: no
    /// such call): dropped there; the batch is replayed per event (`log.rs`).
    pub(crate) batch_logs: Option<u32>,
    /// Undo journal of the current event.
    undo: Vec<Undo>,
    /// Emits of the current event.
    emits: Emits,
    /// Bytes of replaced state the undo journal holds for the current
    /// event (counted against [`Limits::max_memory`]).
    held: usize,
    /// Size of the current key's state when the event began.
    size_at_begin: usize,
    /// Memory of the current key's state when the event began (its size
    /// less the spilled items only in rows).
    mem_at_begin: usize,
    /// Slots whose spilled lists hold items handed over at a barrier:
    /// once the reader sees that checkpoint, the items leave memory
    /// ([`OpCtx::renew_reader`]).
    flushed: Vec<u32>,
    /// A field of a spilled map read from its row, for `map-get` to
    /// lend out.
    scratch: Vec<u8>,
    /// How many events of each (input line, key hash) drew random numbers
    /// so far, so that each event gets its own seed (see
    /// [`OpCtx::draw_index`]); cleared at each checkpoint barrier, which no
    /// line's events span.
    draws: rustc_hash::FxHashMap<(u64, u64), u32>,
    limits: Limits,
    /// Generation of the operator version running now (0 for the first;
    /// each hot swap or rollback takes the next).
    generation: u32,
    /// A `migrate` call is running: emits are refused.
    migrating: bool,
    /// Some cached key may carry another generation than the running one
    /// (so may need migrating); while false, no slot is looked at for it.
    maybe_stale: bool,
    /// Pending timers, by cache slot; changes of the current call are
    /// journaled and undone with its state writes.
    timers: TimerTable,
    /// The watermark of the operator's input (`timers.watermark`).
    watermark: i64,
    /// Whether the operator may set timers (set by the worker).
    timer_use: TimerUse,
    /// The event being handled is late (`timers.late`; set by the worker
    /// around a late event delivered under `late = "deliver"`).
    late: bool,
    /// The events being handled in one call stretch over watermark
    /// advances the worker passed ([`OpCtx::set_spanning`]): then
    /// `timers.watermark` traps, and the caller hands them over again,
    /// split at the advances.
    spanning: bool,
    /// The time to live of state names, and the entries' deadlines (`None`:
    /// no name has one).
    ttl: Option<Box<ttl::Ttl>>,
    /// Event time of the current call (TTL stamps).
    event_time: Option<i64>,
}

impl OpCtx {
    /// A context for operator `name`, loading uncached keys from `reader`.
    pub fn new(name: Arc<str>, reader: Option<Reader>, limits: Limits) -> OpCtx {
        OpCtx {
            name,
            index: Index::default(),
            hashes: Vec::new(),
            candidates: Vec::new(),
            names: Vec::new(),
            slots: Vec::new(),
            dirty: Vec::new(),
            reader,
            cache: cache::Cache::default(),
            current: None,
            batch_logs: None,
            undo: Vec::new(),
            emits: Emits::default(),
            held: 0,
            size_at_begin: 0,
            mem_at_begin: 0,
            flushed: Vec::new(),
            scratch: Vec::new(),
            draws: Default::default(),
            limits,
            generation: 0,
            migrating: false,
            maybe_stale: false,
            timers: TimerTable::default(),
            watermark: i64::MIN,
            timer_use: TimerUse::NoHandler,
            late: false,
            spanning: false,
            ttl: None,
            event_time: None,
        }
    }

    /// Moves the context out (to the store of a replacement instance),
    /// leaving an empty one with the same name and limits.
    pub fn take(&mut self) -> OpCtx {
        let empty = OpCtx::new(self.name.clone(), None, self.limits);
        std::mem::replace(self, empty)
    }

    /// Generation of the operator version this context serves.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Sets the generation of the running version (at start and at a swap).
    pub fn set_generation(&mut self, generation: u32) {
        if generation != self.generation && !self.slots.is_empty() {
            self.maybe_stale = true;
        }
        self.generation = generation;
    }

    /// Loads `key` and tells whether its state was written by another
    /// version than the running one: `Some(that generation)` when it must be
    /// migrated before this version handles it.
    pub fn stale(&mut self, key: &str) -> Result<Option<u32>, StoreError> {
        let i = self.load(key)?;
        if !self.maybe_stale {
            return Ok(None);
        }
        let slot = &self.slots[i as usize];
        Ok(
            (slot.generation != self.generation && !slot.entity.is_empty())
                .then_some(slot.generation),
        )
    }

    /// Whether the key in cache slot `slot` must be migrated (see
    /// [`OpCtx::stale`]).
    pub fn slot_stale(&self, slot: u32) -> bool {
        if !self.maybe_stale {
            return false;
        }
        let slot = &self.slots[slot as usize];
        slot.generation != self.generation && !slot.entity.is_empty()
    }

    /// Starts a migration of `key`: like [`OpCtx::begin`], with emits
    /// refused. End it with [`OpCtx::finish_migration`].
    pub fn begin_migration(&mut self, key: &str) -> Result<(), StoreError> {
        // Its writes to TTL'd names are stamped with the watermark.
        self.event_time = None;
        self.begin(key)?;
        self.migrating = true;
        Ok(())
    }

    /// Ends a migration: with `ok` its writes stay and the key is tagged
    /// with the running generation (and written at the next checkpoint);
    /// otherwise the writes are undone and the key keeps its old tag.
    pub fn finish_migration(&mut self, ok: bool) {
        self.migrating = false;
        let Some(i) = self.current.take() else { return };
        let slot = &mut self.slots[i as usize];
        self.emits.clear();
        self.held = 0;
        if ok {
            slot.generation = self.generation;
            let mem = mem(slot);
            self.resized(self.mem_at_begin, mem);
            self.mark_dirty(i);
            self.undo.clear();
            self.timers.commit();
        } else {
            slot.entity.undo(&mut self.undo);
            slot.size = self.size_at_begin;
            self.timers.rollback();
        }
        self.ttl_finish(i, ok);
    }

    /// The operator's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The operator's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Starts handling an event of `key`: loads its state.
    pub fn begin(&mut self, key: &str) -> Result<(), StoreError> {
        let slot = self.load(key)?;
        self.begin_slot(slot);
        Ok(())
    }

    /// Starts handling an event of the key in cache slot `slot` (from
    /// [`OpCtx::slots`]).
    pub fn begin_slot(&mut self, slot: u32) {
        debug_assert!(self.current.is_none());
        self.current = Some(slot);
        self.size_at_begin = self.slots[slot as usize].size;
        self.mem_at_begin = mem(&self.slots[slot as usize]);
        self.held = 0;
    }

    /// The cache slot of `key`, loading its state on first touch.
    fn load(&mut self, key: &str) -> Result<u32, StoreError> {
        let h = self.index.hash(key);
        self.load_hashed(key, h)
    }

    /// [`OpCtx::load`] with the key's hash already computed.
    fn load_hashed(&mut self, key: &str, h: u64) -> Result<u32, StoreError> {
        if let Some(i) = self.index.find(h, |i| {
            same(self.slots[i as usize].key.as_bytes(), key.as_bytes())
        }) {
            self.slots[i as usize].used = true;
            self.cache.stats.hits += 1;
            return Ok(i);
        }
        self.cache.stats.misses += 1;
        let ((entity, generation), size) = match &self.reader {
            Some(r) => match r.get(&self.name, key)? {
                Some(rec) => {
                    let (e, g) = Entity::decode_tagged(&rec, &mut |n| intern(&mut self.names, n))
                        .map_err(|e| StoreError::Corrupt {
                        operator: self.name.to_string(),
                        key: key.to_string(),
                        reason: e.to_string(),
                    })?;
                    // Spilled items count in the key's size, in rows.
                    let size = record_size(&rec) + e.spilled_bytes() as usize;
                    ((e, g), size)
                }
                None => ((Entity::default(), self.generation), RECORD_HEADER),
            },
            None => ((Entity::default(), self.generation), RECORD_HEADER),
        };
        if generation != self.generation {
            self.maybe_stale = true;
        }
        let slot = Slot {
            key: CompactString::from(key),
            entity,
            generation,
            dirty: false,
            size,
            written: 0,
            used: true,
            free: false,
        };
        self.cache.bytes += cache::cost(&slot);
        let i = match self.cache.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(h, i, &self.slots);
        Ok(i)
    }

    /// The cache slots of `keys`, in order (loading keys on first touch),
    /// appended to `out`. Resolving a whole batch at once lets the memory
    /// of every key be fetched in parallel: the keys of a batch are spread
    /// over a cache far larger than the CPU's.
    pub fn slots<'k>(
        &mut self,
        keys: impl Iterator<Item = &'k str> + Clone,
        out: &mut Vec<u32>,
    ) -> Result<(), StoreError> {
        let mut hashes = std::mem::take(&mut self.hashes);
        hashes.clear();
        for k in keys.clone() {
            let h = self.index.hash(k);
            self.index.prefetch(h);
            hashes.push(h);
        }
        // The candidate slot of each key (its memory starts loading), then
        // the checked lookups: the candidate's key, or a full lookup.
        let mut candidates = std::mem::take(&mut self.candidates);
        candidates.clear();
        for &h in &hashes {
            let c = self.index.candidate(h);
            if let Some(i) = c {
                prefetch(&self.slots[i as usize]);
            }
            candidates.push(c.unwrap_or(u32::MAX));
        }
        let mut result = Ok(());
        for ((k, &h), &c) in keys.zip(&hashes).zip(&candidates) {
            if c != u32::MAX && same(self.slots[c as usize].key.as_bytes(), k.as_bytes()) {
                self.slots[c as usize].used = true;
                self.cache.stats.hits += 1;
                out.push(c);
                continue;
            }
            match self.load_hashed(k, h) {
                Ok(i) => out.push(i),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.candidates = candidates;
        self.hashes = hashes;
        result
    }

    /// Starts loading the memory of map `name` of the keys in `slots`,
    /// level by level (see [`Entity::prefetch_map`]), so that reading it
    /// key after key waits less.
    pub fn prefetch_map(&self, slots: &[u32], name: &str) {
        let Some(name) = self.lookup(name) else {
            return;
        };
        for level in 0..3 {
            for &s in slots {
                if let Some(slot) = self.slots.get(s as usize) {
                    slot.entity.prefetch_map(name, level);
                }
            }
        }
    }

    /// Ends the current event. With `ok`, its writes stay and its emits are
    /// appended to `out`; otherwise both are discarded.
    pub fn finish(&mut self, ok: bool, out: &mut Emits) {
        let Some(i) = self.current.take() else { return };
        let slot = &mut self.slots[i as usize];
        self.held = 0;
        if ok {
            if !self.undo.is_empty() {
                slot.generation = self.generation;
                let mem = mem(slot);
                self.resized(self.mem_at_begin, mem);
                self.mark_dirty(i);
            }
            self.undo.clear();
            self.timers.commit();
            out.append(&mut self.emits);
        } else {
            slot.entity.undo(&mut self.undo);
            slot.size = self.size_at_begin;
            self.emits.clear();
            self.timers.rollback();
        }
        self.ttl_finish(i, ok);
    }

    /// Checks, before the current event is kept, that it did not grow its
    /// key's state past [`Limits::max_key_state`] (checked at the end, so
    /// that an event's outcome does not depend on the order of its writes,
    /// as on the batched path).
    pub fn check_event(&self) -> Result<(), HostError> {
        let Some(i) = self.current else {
            return Ok(());
        };
        let size = self.slots[i as usize].size;
        if size > self.limits.max_key_state && size > self.size_at_begin {
            return Err(HostError::KeyStateTooLarge {
                size,
                limit: self.limits.max_key_state,
            });
        }
        Ok(())
    }

    /// How many earlier events of input line `line` with the key hashed to
    /// `key` drew random numbers (this one is counted for the next).
    pub fn draw_index(&mut self, line: u64, key: u64) -> u32 {
        let n = self.draws.entry((line, key)).or_insert(u32::MAX);
        *n = n.wrapping_add(1);
        *n
    }

    /// The size of the current key's state as stored.
    pub fn key_state_size(&self) -> Option<usize> {
        self.current.map(|i| self.slots[i as usize].size)
    }

    /// Takes the changes since the last checkpoint as store writes, for
    /// checkpoint number `seq` (see [`crate::state::Checkpoint::seq`]).
    /// Renew the reader (see [`OpCtx::renew_reader`]) after it.
    pub fn take_dirty(&mut self, seq: u64, out: &mut Vec<StateWrite>) {
        self.draws.clear();
        self.cache.taken = seq;
        self.cache.pending_bytes = self.cache.dirty_bytes;
        self.cache.dirty_bytes = 0;
        let mut dirty = std::mem::take(&mut self.dirty);
        // Exactly one write a key: no vector grown twice its need.
        out.reserve_exact(dirty.len());
        for i in dirty.drain(..) {
            let (mut lists, mut maps) = (Vec::new(), Vec::new());
            let old = mem(&self.slots[i as usize]);
            let s = &self.slots[i as usize];
            // A key with nothing spilled whose whole state is under both
            // thresholds has no list or map to spill: skipped.
            if s.entity.has_spill()
                || ((s.entity.has_lists() || s.entity.has_maps())
                    && (s.size as u64 > SPILL_BYTES || s.entity.longest() > SPILL_ITEMS))
            {
                self.hand_over_rows(i, &mut lists, &mut maps);
            }
            let slot = &mut self.slots[i as usize];
            slot.dirty = false;
            slot.written = seq;
            let record = if slot.entity.is_empty() {
                None
            } else {
                // `size` is the record's exact length when nothing is
                // spilled: one allocation.
                let mut buf = Vec::with_capacity(slot.size - slot.entity.spilled_bytes() as usize);
                slot.entity
                    .encode_tagged(slot.generation, &self.names, &mut buf);
                Some(buf)
            };
            if !lists.is_empty() || !maps.is_empty() {
                // Spilling or bringing a list or map back changed the
                // record's length, and what is in memory.
                slot.size = record.as_ref().map_or(RECORD_HEADER, Vec::len)
                    + slot.entity.spilled_bytes() as usize;
                let new = mem(slot);
                self.cache.bytes = (self.cache.bytes + new).saturating_sub(old);
            }
            out.push(StateWrite {
                operator: self.name.clone(),
                key: slot.key.clone(),
                record,
                lists,
                maps,
            });
        }
        self.dirty = dirty;
    }

    /// Hands the lists and maps of the key in `slot` over at a barrier
    /// (see [`Entity::hand_over`] and [`Entity::hand_over_maps`]): first
    /// the small spilled lists and maps whose rows can come back in memory
    /// are read back (a read error only leaves them spilled).
    fn hand_over_rows(
        &mut self,
        slot: u32,
        out: &mut Vec<crate::state::ListRows>,
        maps: &mut Vec<crate::state::MapRows>,
    ) {
        let s = &mut self.slots[slot as usize];
        // With spilling off nothing new spills; a key whose lists or maps
        // spilled before (a state directory written with it on) still
        // hands its rows over, or their changes would never be written.
        if !self.limits.spill && !s.entity.has_spill() {
            return;
        }
        if let Some(r) = &self.reader {
            for (n, rows) in s.entity.unspill_candidates() {
                let mut items = Vec::new();
                let read = r.list_items(
                    &self.name,
                    &s.key,
                    &self.names[n as usize],
                    rows.start,
                    rows.end,
                    &mut |i| items.push(i.to_vec()),
                );
                if read.is_ok() {
                    s.entity.fill_front(n, items);
                }
            }
        }
        if let Some(r) = &self.reader {
            for n in s.entity.map_unspill_candidates() {
                let mut rows = Vec::new();
                let read = r.map_fields(
                    &self.name,
                    &s.key,
                    &self.names[n as usize],
                    "",
                    &mut |f, v| {
                        rows.push((f.to_string(), v.to_vec()));
                        true
                    },
                );
                if read.is_ok() {
                    s.entity.map_unspill(n, rows);
                }
            }
        }
        s.entity.hand_over(&self.names, out);
        s.entity.hand_over_maps(&self.names, maps);
        if s.entity.has_spill() {
            self.flushed.push(slot);
        }
    }

    /// The cached state of the key in cache slot `slot`.
    pub fn slot_entity(&self, slot: u32) -> &Entity {
        &self.slots[slot as usize].entity
    }

    /// The text of interned state name `name`.
    pub fn state_name(&self, name: Name) -> &str {
        &self.names[name as usize]
    }

    /// The key being processed.
    pub fn current_key(&self) -> Option<&str> {
        self.current.map(|i| self.slots[i as usize].key.as_str())
    }
}

#[cfg(test)]
mod big_lists;
#[cfg(test)]
mod big_maps;
