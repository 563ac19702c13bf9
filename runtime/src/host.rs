//! The host side of the state interface: one [`OpCtx`] per operator per
//! worker, shared by Wasm and native operators, so both pay the same host
//! state path.
//!
//! The context caches every key it has touched ([`Entity`] per key) and
//! tracks which changed since the last checkpoint. Handling an event is
//! bracketed by [`OpCtx::begin`] and [`OpCtx::finish`]: in between, state
//! calls act on that event's key only, writes are journaled and emits
//! buffered, so a failed event is rolled back completely.

use std::hash::BuildHasher;
use std::sync::Arc;

use thiserror::Error;

use compact_str::CompactString;
use smallvec::SmallVec;

use crate::state::{Entity, Name, Undo};
use crate::store::{Reader, StateWrite, StoreError};

/// Per-operator limits enforced on host calls.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest single state value, map field or list item, in bytes.
    pub max_state_value: usize,
    /// Largest emitted payload, in bytes.
    pub max_emit: usize,
    /// CPU budget of one call into the operator (`init` or `handle`), in
    /// milliseconds of wall time; enforced at 10 ms granularity.
    pub max_call_ms: u64,
    /// Largest linear memory of one operator instance, in bytes.
    pub max_memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_state_value: 1 << 20,
            max_emit: 1 << 20,
            max_call_ms: 1000,
            max_memory: 256 << 20,
        }
    }
}

/// A host call that cannot be served; it traps the operator.
#[derive(Debug, Error)]
pub enum HostError {
    #[error("state or emit used outside `handle` (no key is being processed)")]
    NoKey,
    #[error("state value of {size} bytes exceeds the limit max_state_value = {limit} bytes")]
    StateTooLarge { size: usize, limit: usize },
    #[error("emitted value of {size} bytes exceeds the limit max_emit = {limit} bytes")]
    EmitTooLarge { size: usize, limit: usize },
    #[error("emit called from `migrate` (a migration may only rewrite state)")]
    EmitInMigrate,
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
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
}

/// What an operator emitted while handling one event, in order: keys
/// inline (short ones need no allocation), payloads in one buffer, both
/// reused from event to event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Emits {
    /// Key and payload range in `data`, per emitted event.
    items: Vec<(CompactString, u32, u32)>,
    data: Vec<u8>,
}

impl Emits {
    /// Adds an event emitted with `key` and payload `value`.
    pub fn push(&mut self, key: &str, value: &[u8]) {
        self.push_key(CompactString::from(key), value)
    }

    fn push_key(&mut self, key: CompactString, value: &[u8]) {
        let at = self.data.len() as u32;
        self.data.extend_from_slice(value);
        self.items.push((key, at, self.data.len() as u32));
    }

    /// Number of emitted events.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing was emitted.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The emitted events: key and payload, in emit order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> + '_ {
        self.items
            .iter()
            .map(|(k, a, b)| (k.as_str(), &self.data[*a as usize..*b as usize]))
    }

    /// Forgets every event (keeps the buffers).
    pub fn clear(&mut self) {
        self.items.clear();
        self.data.clear();
    }

    /// Moves the events of `other` after these.
    pub fn append(&mut self, other: &mut Emits) {
        if self.is_empty() {
            std::mem::swap(self, other);
            return;
        }
        for (k, v) in other.iter() {
            self.push(k, v);
        }
        other.clear();
    }
}

/// Host context of one operator on one worker.
pub struct OpCtx {
    /// Operator name: the state name space in the store.
    name: Arc<str>,
    /// Every key touched so far, as an index into `slots` (never evicted: a
    /// key absent here has not been written since start, so the store
    /// snapshot is accurate for it).
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
    /// The slot of the key being processed.
    current: Option<u32>,
    /// Undo journal of the current event.
    undo: Vec<Undo>,
    /// Emits of the current event.
    emits: Emits,
    limits: Limits,
    /// Generation of the operator version running now (0 for the first;
    /// each hot swap or rollback takes the next).
    generation: u32,
    /// A `migrate` call is running: emits are refused.
    migrating: bool,
    /// Some cached key may carry another generation than the running one
    /// (so may need migrating); while false, no slot is looked at for it.
    maybe_stale: bool,
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
            current: None,
            undo: Vec::new(),
            emits: Emits::default(),
            limits,
            generation: 0,
            migrating: false,
            maybe_stale: false,
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
        if ok {
            slot.generation = self.generation;
            if !slot.dirty {
                slot.dirty = true;
                self.dirty.push(i);
            }
            self.undo.clear();
        } else {
            slot.entity.undo(&mut self.undo);
        }
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
        debug_assert!(self.current.is_none());
        self.current = Some(self.load(key)?);
        Ok(())
    }

    /// Starts handling an event of the key in cache slot `slot` (from
    /// [`OpCtx::frame_values`]).
    pub fn begin_slot(&mut self, slot: u32) {
        debug_assert!(self.current.is_none());
        self.current = Some(slot);
    }

    /// Appends `key`'s single values to a batch frame: `u32` count, then
    /// per value a length-prefixed name and bytes (see `handle-batch`).
    /// Returns the key's cache slot, for [`OpCtx::begin_slot`].
    pub fn frame_values(&mut self, key: &str, out: &mut Vec<u8>) -> Result<u32, StoreError> {
        let slot = self.load(key)?;
        self.frame_slot_values(slot, out);
        Ok(slot)
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
            return Ok(i);
        }
        let (entity, generation) = match &self.reader {
            Some(r) => match r.get(&self.name, key)? {
                Some(rec) => Entity::decode_tagged(&rec, &mut |n| intern(&mut self.names, n))
                    .map_err(|e| StoreError::Corrupt {
                        operator: self.name.to_string(),
                        key: key.to_string(),
                        reason: e.to_string(),
                    })?,
                None => (Entity::default(), self.generation),
            },
            None => (Entity::default(), self.generation),
        };
        if generation != self.generation {
            self.maybe_stale = true;
        }
        let i = self.slots.len() as u32;
        self.slots.push(Slot {
            key: CompactString::from(key),
            entity,
            generation,
            dirty: false,
        });
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

    /// The cached key of slot `slot`.
    pub fn slot_key(&self, slot: u32) -> &str {
        &self.slots[slot as usize].key
    }

    /// Appends the single values of the key in cache slot `slot` to a batch
    /// frame (see [`OpCtx::frame_values`]).
    pub fn frame_slot_values(&self, slot: u32, out: &mut Vec<u8>) {
        let entity = &self.slots[slot as usize].entity;
        out.extend_from_slice(&(entity.values().count() as u32).to_le_bytes());
        for (name, bytes) in entity.values() {
            let name = self.names[name as usize].as_bytes();
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
    }

    /// Ends the current event. With `ok`, its writes stay and its emits are
    /// appended to `out`; otherwise both are discarded.
    pub fn finish(&mut self, ok: bool, out: &mut Emits) {
        let Some(i) = self.current.take() else { return };
        let slot = &mut self.slots[i as usize];
        if ok {
            if !self.undo.is_empty() {
                slot.generation = self.generation;
                if !slot.dirty {
                    slot.dirty = true;
                    self.dirty.push(i);
                }
            }
            self.undo.clear();
            out.append(&mut self.emits);
        } else {
            slot.entity.undo(&mut self.undo);
            self.emits.clear();
        }
    }

    /// Takes the changes since the last checkpoint as store writes, and
    /// renews the snapshot used for uncached keys.
    pub fn take_dirty(&mut self, reader: Option<Reader>, out: &mut Vec<StateWrite>) {
        for i in self.dirty.drain(..) {
            let slot = &mut self.slots[i as usize];
            slot.dirty = false;
            let record = if slot.entity.is_empty() {
                None
            } else {
                let mut buf = Vec::new();
                slot.entity
                    .encode_tagged(slot.generation, &self.names, &mut buf);
                Some(buf)
            };
            out.push(StateWrite {
                operator: self.name.clone(),
                key: slot.key.as_str().into(),
                record,
            });
        }
        if reader.is_some() {
            self.reader = reader;
        }
    }

    /// Number of keys cached.
    pub fn cached_keys(&self) -> usize {
        self.slots.len()
    }

    /// The key being processed.
    pub fn current_key(&self) -> Option<&str> {
        self.current.map(|i| self.slots[i as usize].key.as_str())
    }

    fn entity(&mut self) -> Result<&mut Entity, HostError> {
        let i = self.current.ok_or(HostError::NoKey)?;
        Ok(&mut self.slots[i as usize].entity)
    }

    fn check_emit(&self, size: usize) -> Result<(), HostError> {
        if size > self.limits.max_emit {
            return Err(HostError::EmitTooLarge {
                size,
                limit: self.limits.max_emit,
            });
        }
        Ok(())
    }

    fn check_size(&self, size: usize) -> Result<(), HostError> {
        if size > self.limits.max_state_value {
            return Err(HostError::StateTooLarge {
                size,
                limit: self.limits.max_state_value,
            });
        }
        Ok(())
    }

    // ---- the state interface -------------------------------------------------

    fn name_id(&mut self, name: &str) -> Name {
        intern(&mut self.names, name)
    }

    pub fn get(&mut self, name: &str) -> Result<Option<&[u8]>, HostError> {
        let name = self.name_id(name);
        Ok(self.entity()?.get(name))
    }

    pub fn set(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.check_size(value.len())?;
        let name = self.name_id(name);
        let slot = &mut self.slots[self.current.ok_or(HostError::NoKey)? as usize];
        slot.entity.set(name, value, &mut self.undo);
        Ok(())
    }

    /// Applies one event's outcome from an operator's batch result to the
    /// key in cache slot `slot`: its single-value writes (`None`: delete)
    /// and its emits, which go to `out`. All of it is checked first (sizes;
    /// UTF-8 of names and keys not seen before), so a refused event changes
    /// nothing and needs no undo journal.
    pub fn apply(
        &mut self,
        slot: u32,
        writes: &[(&[u8], Option<&[u8]>)],
        emits: &[(&[u8], &[u8])],
        out: &mut Emits,
    ) -> Result<(), HostError> {
        let mut names: SmallVec<[Name; 4]> = SmallVec::new();
        for (name, value) in writes {
            if let Some(v) = value {
                self.check_size(v.len())?;
            }
            names.push(intern_bytes(&mut self.names, name)?);
        }
        let current = &self.slots[slot as usize].key;
        let mut keys: SmallVec<[CompactString; 2]> = SmallVec::new();
        for (key, value) in emits {
            self.check_emit(value.len())?;
            keys.push(if *key == current.as_bytes() {
                current.clone()
            } else {
                CompactString::from(
                    std::str::from_utf8(key).map_err(|_| HostError::NotUtf8("emitted key"))?,
                )
            });
        }
        let s = &mut self.slots[slot as usize];
        for (&name, (_, value)) in names.iter().zip(writes) {
            match value {
                Some(v) => s.entity.put(name, v),
                None => s.entity.remove(name),
            }
        }
        if !writes.is_empty() {
            s.generation = self.generation;
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(slot);
            }
        }
        for (key, (_, value)) in keys.into_iter().zip(emits) {
            out.push_key(key, value);
        }
        Ok(())
    }

    pub fn delete(&mut self, name: &str) -> Result<bool, HostError> {
        let name = self.name_id(name);
        let slot = &mut self.slots[self.current.ok_or(HostError::NoKey)? as usize];
        Ok(slot.entity.delete(name, &mut self.undo))
    }

    pub fn map_get(&mut self, name: &str, field: &str) -> Result<Option<&[u8]>, HostError> {
        let name = self.name_id(name);
        Ok(self
            .entity()?
            .map(name)
            .and_then(|m| m.get(field))
            .map(|v| &v[..]))
    }

    pub fn map_set(&mut self, name: &str, field: String, value: Vec<u8>) -> Result<(), HostError> {
        self.check_size(value.len())?;
        let name = self.name_id(name);
        let slot = &mut self.slots[self.current.ok_or(HostError::NoKey)? as usize];
        slot.entity.map_set(name, field, value, &mut self.undo);
        Ok(())
    }

    pub fn map_delete(&mut self, name: &str, field: &str) -> Result<bool, HostError> {
        let name = self.name_id(name);
        let slot = &mut self.slots[self.current.ok_or(HostError::NoKey)? as usize];
        Ok(slot.entity.map_delete(name, field, &mut self.undo))
    }

    pub fn map_entries(&mut self, name: &str) -> Result<Vec<(String, Vec<u8>)>, HostError> {
        let name = self.name_id(name);
        Ok(self
            .entity()?
            .map(name)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    pub fn map_len(&mut self, name: &str) -> Result<u32, HostError> {
        let name = self.name_id(name);
        Ok(self.entity()?.map(name).map_or(0, |m| m.len() as u32))
    }

    pub fn list_push(&mut self, name: &str, item: Vec<u8>) -> Result<u32, HostError> {
        self.check_size(item.len())?;
        let name = self.name_id(name);
        let slot = &mut self.slots[self.current.ok_or(HostError::NoKey)? as usize];
        Ok(slot.entity.list_push(name, item, &mut self.undo) as u32)
    }

    pub fn list_len(&mut self, name: &str) -> Result<u32, HostError> {
        let name = self.name_id(name);
        Ok(self.entity()?.list(name).map_or(0, |l| l.len() as u32))
    }

    pub fn list_range(
        &mut self,
        name: &str,
        start: u32,
        end: u32,
    ) -> Result<Vec<Vec<u8>>, HostError> {
        let name = self.name_id(name);
        let Some(list) = self.entity()?.list(name) else {
            return Ok(Vec::new());
        };
        let end = (end as usize).min(list.len());
        let start = (start as usize).min(end);
        Ok(list.range(start..end).cloned().collect())
    }

    pub fn list_trim(&mut self, name: &str, keep: u32) -> Result<u32, HostError> {
        let name = self.name_id(name);
        let slot = &mut self.slots[self.current.ok_or(HostError::NoKey)? as usize];
        Ok(slot.entity.list_trim(name, keep as usize, &mut self.undo) as u32)
    }

    pub fn clear(&mut self) -> Result<(), HostError> {
        let slot = &mut self.slots[self.current.ok_or(HostError::NoKey)? as usize];
        slot.entity.clear(&mut self.undo);
        Ok(())
    }

    pub fn emit(&mut self, key: &str, value: &[u8]) -> Result<(), HostError> {
        if self.current.is_none() {
            return Err(HostError::NoKey);
        }
        if self.migrating {
            return Err(HostError::EmitInMigrate);
        }
        self.check_emit(value.len())?;
        self.emits.push(key, value);
        Ok(())
    }
}

/// `a == b`, for short strings (keys, names) without a call to `memcmp`:
/// two overlapping word compares up to 16 bytes.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let w8 = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().unwrap());
    let w4 = |s: &[u8], i: usize| u32::from_le_bytes(s[i..i + 4].try_into().unwrap());
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => w4(a, 0) == w4(b, 0) && w4(a, n - 4) == w4(b, n - 4),
        8..=16 => w8(a, 0) == w8(b, 0) && w8(a, n - 8) == w8(b, n - 8),
        _ => a == b,
    }
}

/// Asks the CPU to start loading the cache lines of `v`.
#[inline(always)]
fn prefetch<T>(v: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = v as *const T as *const i8;
        let mut off = 0;
        while off < std::mem::size_of::<T>() {
            // SAFETY: prefetching is a hint; it never faults, whatever
            // the address.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch(p.wrapping_add(off), _MM_HINT_T0);
            }
            off += 64;
        }
        // The last line, when `v` straddles one more.
        // SAFETY: as above.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch(p.wrapping_add(std::mem::size_of::<T>() - 1), _MM_HINT_T0);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Key -> cache slot: open addressing with linear probing over one array
/// of `u64` (hash tag in the high half, slot + 1 in the low half, 0 empty),
/// kept at most half full. Compact (8 bytes a key) and prefetchable, unlike
/// a general hash map.
struct Index {
    table: Vec<u64>,
    len: usize,
    hasher: foldhash::fast::RandomState,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            table: vec![0; 64],
            len: 0,
            hasher: Default::default(),
        }
    }
}

impl Index {
    #[inline]
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key.as_bytes())
    }

    #[inline]
    fn mask(&self) -> usize {
        self.table.len() - 1
    }

    #[inline]
    fn prefetch(&self, h: u64) {
        prefetch(&self.table[h as usize & self.mask()]);
    }

    /// The first slot whose hash tag matches `h` (most likely the key's).
    #[inline]
    fn candidate(&self, h: u64) -> Option<u32> {
        self.find(h, |_| true)
    }

    /// The slot whose key has hash `h` and satisfies `is`.
    #[inline]
    fn find(&self, h: u64, is: impl Fn(u32) -> bool) -> Option<u32> {
        let mask = self.mask();
        let tag = h >> 32;
        let mut pos = h as usize & mask;
        loop {
            let e = self.table[pos];
            if e == 0 {
                return None;
            }
            if e >> 32 == tag && is((e as u32) - 1) {
                return Some((e as u32) - 1);
            }
            pos = (pos + 1) & mask;
        }
    }

    /// Adds slot `slot` (not present) under hash `h`.
    fn insert(&mut self, h: u64, slot: u32, slots: &[Slot]) {
        if (self.len + 1) * 2 > self.table.len() {
            let grown = vec![0; self.table.len() * 2];
            let old = std::mem::replace(&mut self.table, grown);
            for e in old.into_iter().filter(|&e| e != 0) {
                let s = (e as u32) - 1;
                let h = self.hash(&slots[s as usize].key);
                self.put(h, s);
            }
        }
        self.put(h, slot);
        self.len += 1;
    }

    fn put(&mut self, h: u64, slot: u32) {
        let mask = self.mask();
        let mut pos = h as usize & mask;
        while self.table[pos] != 0 {
            pos = (pos + 1) & mask;
        }
        self.table[pos] = (h >> 32) << 32 | (slot as u64 + 1);
    }
}

/// The id of `name` in `names`, adding it when new. Operators use a
/// handful of names, so a scan of this small, hot table is the fastest map.
fn intern(names: &mut Vec<Box<str>>, name: &str) -> Name {
    match names.iter().position(|n| &**n == name) {
        Some(i) => i as Name,
        None => {
            names.push(name.into());
            (names.len() - 1) as Name
        }
    }
}

/// [`intern`] for a name given as bytes: a known name is found by its
/// bytes; a new one must be UTF-8.
fn intern_bytes(names: &mut Vec<Box<str>>, name: &[u8]) -> Result<Name, HostError> {
    match names.iter().position(|n| n.as_bytes() == name) {
        Some(i) => Ok(i as Name),
        None => Ok(intern(
            names,
            std::str::from_utf8(name).map_err(|_| HostError::NotUtf8("state name"))?,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_compares_every_byte_of_every_length() {
        for n in 0..40usize {
            let a: Vec<u8> = (0..n as u8).map(|i| b'a' + i % 26).collect();
            assert!(same(&a, &a.clone()));
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 1;
                assert!(!same(&a, &b), "length {n}, byte {i}");
            }
            assert!(!same(&a, &a[..n.saturating_sub(1)]) || n == 0);
        }
    }

    #[test]
    fn failed_event_leaves_no_trace_and_ok_event_is_dirty() {
        let mut ctx = OpCtx::new("op".into(), None, Limits::default());
        let mut out = Emits::default();
        ctx.begin("k").unwrap();
        ctx.set("n", b"1").unwrap();
        ctx.emit("k", b"1").unwrap();
        ctx.finish(true, &mut out);
        assert_eq!(out.len(), 1);

        ctx.begin("k").unwrap();
        ctx.set("n", b"2").unwrap();
        ctx.list_push("l", b"x".to_vec()).unwrap();
        ctx.emit("k", b"2").unwrap();
        ctx.finish(false, &mut out);
        assert_eq!(out.len(), 1, "emits of a failed event are dropped");

        ctx.begin("k").unwrap();
        assert_eq!(ctx.get("n").unwrap(), Some(&b"1"[..]));
        assert_eq!(ctx.list_len("l").unwrap(), 0);
        ctx.finish(true, &mut out);

        let mut writes = Vec::new();
        ctx.take_dirty(None, &mut writes);
        assert_eq!(writes.len(), 1);
        assert_eq!(&*writes[0].key, "k");
    }

    #[test]
    fn calls_outside_an_event_and_oversized_values_are_refused() {
        let mut ctx = OpCtx::new(
            "op".into(),
            None,
            Limits {
                max_state_value: 4,
                max_emit: 4,
                ..Limits::default()
            },
        );
        assert!(matches!(ctx.get("n"), Err(HostError::NoKey)));
        ctx.begin("k").unwrap();
        let err = ctx.set("n", &[0; 5]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "state value of 5 bytes exceeds the limit max_state_value = 4 bytes"
        );
        assert!(matches!(
            ctx.emit("k", &[0; 5]),
            Err(HostError::EmitTooLarge { .. })
        ));
    }
}
