//! The host side of the state interface: one [`OpCtx`] per operator per
//! worker, shared by Wasm and native operators, so both pay the same host
//! state path.
//!
//! The context caches every key it has touched ([`Entity`] per key) and
//! tracks which changed since the last checkpoint. Handling an event is
//! bracketed by [`OpCtx::begin`] and [`OpCtx::finish`]: in between, state
//! calls act on that event's key only, writes are journaled and emits
//! buffered, so a failed event is rolled back completely.
//!
//! Every host call and every batched result is held to the operator's
//! [`Limits`]: sizes of values, names, map fields, emitted keys and
//! payloads, what one event emits, what the host holds for one event, and
//! the state one key holds (a byte count kept per key as it is written,
//! equal to the length of the key's stored record, so checking it costs no
//! recount). An event that breaks one fails as a whole.

use std::hash::BuildHasher;
use std::sync::Arc;

use thiserror::Error;

use compact_str::CompactString;
use smallvec::SmallVec;

use crate::state::{Entity, Name, Undo};
use crate::store::{Reader, StateWrite, StoreError};

/// Per-operator limits enforced on host calls. Each is named in the
/// pipeline file's `[[operator]]` table by the field given here, and an
/// event that breaks one is dead-lettered with an error naming that field.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest single state value, map field value or list item, in bytes
    /// (`max_state_value_bytes`).
    pub max_state_value: usize,
    /// Largest emitted payload, in bytes (`max_emit_bytes`).
    pub max_emit: usize,
    /// CPU budget of one call into the operator (`init` or `handle`), in
    /// milliseconds of wall time; enforced at 10 ms granularity
    /// (`max_call_ms`).
    pub max_call_ms: u64,
    /// Largest linear memory of one operator instance, in bytes; what the
    /// host holds for one event (its emits, and the state it replaced,
    /// kept to undo it) counts against it too (`max_memory_bytes`).
    pub max_memory: usize,
    /// Longest state name or map field, in bytes (`max_name_bytes`).
    pub max_name: usize,
    /// Longest emitted key, in bytes (`max_emit_key_bytes`).
    pub max_emit_key: usize,
    /// Most bytes one event may emit, keys and payloads together
    /// (`max_emit_bytes_per_event`).
    pub max_emit_per_event: usize,
    /// Most state one key may hold, in bytes as stored: names, values, map
    /// fields and list items with their length prefixes
    /// (`max_key_state_bytes`). An event that grows a key past it fails.
    pub max_key_state: usize,
    /// Longest error reason (or log line) kept from an operator; longer
    /// ones are truncated with a note of how much was cut
    /// (`max_reason_bytes`).
    pub max_reason: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_state_value: 1 << 20,
            max_emit: 1 << 20,
            max_call_ms: 1000,
            max_memory: 256 << 20,
            max_name: 4 << 10,
            max_emit_key: 4 << 10,
            max_emit_per_event: 16 << 20,
            max_key_state: 64 << 20,
            max_reason: 16 << 10,
        }
    }
}

/// `text` cut to at most `max` bytes (at a character boundary), with a note
/// of how many bytes were cut.
pub fn cap_reason(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}... [{} more bytes cut: max_reason_bytes = {max}]",
        &text[..end],
        text.len() - end
    )
}

/// [`cap_reason`] for bytes that should be UTF-8 (invalid sequences are
/// replaced); copies at most `max` bytes.
pub fn cap_reason_bytes(bytes: &[u8], max: usize) -> String {
    if bytes.len() <= max {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let head = String::from_utf8_lossy(&bytes[..max]);
    // A character cut in two shows as one replacement character.
    format!(
        "{head}... [{} more bytes cut: max_reason_bytes = {max}]",
        bytes.len() - max
    )
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
    #[error("{what} of {size} bytes exceeds the limit max_name_bytes = {limit} bytes")]
    NameTooLong {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("a new state name would make more than {limit} distinct state names for this operator (names are per operator, like columns: keep per-item data in a map or list, not in names of its own)")]
    TooManyNames { limit: usize },
    #[error("emitted key of {size} bytes exceeds the limit max_emit_key_bytes = {limit} bytes")]
    KeyTooLong { size: usize, limit: usize },
    #[error("the event emitted {size} bytes (keys and payloads), over the limit max_emit_bytes_per_event = {limit} bytes")]
    EventEmitsTooLarge { size: usize, limit: usize },
    #[error("the event grew the state of its key to {size} bytes, over the limit max_key_state_bytes = {limit} bytes")]
    KeyStateTooLarge { size: usize, limit: usize },
    #[error("the event holds {size} bytes in the host (what it emitted, its state growth and the state it replaced, kept to undo it), over the limit max_memory_bytes = {limit} bytes")]
    EventTooLarge { size: usize, limit: usize },
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
    /// Size of `entity` as stored (its record's length), kept up to date
    /// write by write for [`Limits::max_key_state`].
    size: usize,
}

/// What an operator emitted while handling one event, in order: keys
/// inline (short ones need no allocation), payloads in one buffer, both
/// reused from event to event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Emits {
    /// Key and payload range in `data`, per emitted event (`usize`: no
    /// size of `data` can wrap them).
    items: Vec<(CompactString, usize, usize)>,
    data: Vec<u8>,
    /// Bytes of the emitted keys.
    key_bytes: usize,
}

impl Emits {
    /// Adds an event emitted with `key` and payload `value`.
    pub fn push(&mut self, key: &str, value: &[u8]) {
        self.push_key(CompactString::from(key), value)
    }

    fn push_key(&mut self, key: CompactString, value: &[u8]) {
        let at = self.data.len();
        self.data.extend_from_slice(value);
        self.key_bytes += key.len();
        self.items.push((key, at, self.data.len()));
    }

    /// Bytes of every key and payload.
    pub fn bytes(&self) -> usize {
        self.data.len() + self.key_bytes
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
            .map(|(k, a, b)| (k.as_str(), &self.data[*a..*b]))
    }

    /// Forgets every event (keeps the buffers).
    pub fn clear(&mut self) {
        self.items.clear();
        self.data.clear();
        self.key_bytes = 0;
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
    /// Bytes of replaced state the undo journal holds for the current
    /// event (counted against [`Limits::max_memory`]).
    held: usize,
    /// Size of the current key's state when the event began.
    size_at_begin: usize,
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
            held: 0,
            size_at_begin: 0,
            draws: Default::default(),
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
        self.held = 0;
        if ok {
            slot.generation = self.generation;
            if !slot.dirty {
                slot.dirty = true;
                self.dirty.push(i);
            }
            self.undo.clear();
        } else {
            slot.entity.undo(&mut self.undo);
            slot.size = self.size_at_begin;
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
        let slot = self.load(key)?;
        self.begin_slot(slot);
        Ok(())
    }

    /// Starts handling an event of the key in cache slot `slot` (from
    /// [`OpCtx::load_slot`] or [`OpCtx::slots`]).
    pub fn begin_slot(&mut self, slot: u32) {
        debug_assert!(self.current.is_none());
        self.current = Some(slot);
        self.size_at_begin = self.slots[slot as usize].size;
        self.held = 0;
    }

    /// The cache slot of `key` (its state loaded on first touch), for
    /// [`OpCtx::begin_slot`] and [`OpCtx::apply`].
    pub fn load_slot(&mut self, key: &str) -> Result<u32, StoreError> {
        self.load(key)
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
        let ((entity, generation), size) = match &self.reader {
            Some(r) => match r.get(&self.name, key)? {
                Some(rec) => (
                    Entity::decode_tagged(&rec, &mut |n| intern(&mut self.names, n)).map_err(
                        |e| StoreError::Corrupt {
                            operator: self.name.to_string(),
                            key: key.to_string(),
                            reason: e.to_string(),
                        },
                    )?,
                    record_size(&rec),
                ),
                None => ((Entity::default(), self.generation), RECORD_HEADER),
            },
            None => ((Entity::default(), self.generation), RECORD_HEADER),
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
            size,
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

    /// The single values (name, bytes) of the key in cache slot `slot`,
    /// as a batch carries them (see `crate::batch`).
    pub fn slot_values(&self, slot: u32) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let entity = &self.slots[slot as usize].entity;
        entity
            .values()
            .map(|(name, bytes)| (&*self.names[name as usize], bytes))
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
                if !slot.dirty {
                    slot.dirty = true;
                    self.dirty.push(i);
                }
            }
            self.undo.clear();
            out.append(&mut self.emits);
        } else {
            slot.entity.undo(&mut self.undo);
            slot.size = self.size_at_begin;
            self.emits.clear();
        }
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

    /// Takes the changes since the last checkpoint as store writes, and
    /// renews the snapshot used for uncached keys.
    pub fn take_dirty(&mut self, reader: Option<Reader>, out: &mut Vec<StateWrite>) {
        self.draws.clear();
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

    fn check_name(&self, what: &'static str, name: &[u8]) -> Result<(), HostError> {
        if name.len() > self.limits.max_name {
            return Err(HostError::NameTooLong {
                what,
                size: name.len(),
                limit: self.limits.max_name,
            });
        }
        Ok(())
    }

    /// Checks a state name a write is about to use: its length, and, since
    /// every state name an operator writes is kept for its lifetime
    /// (interned), that it is not one too many (looked at only once the
    /// table is full, so it costs nothing before).
    fn check_state_name(&self, name: &[u8]) -> Result<(), HostError> {
        self.check_name("state name", name)?;
        if self.names.len() >= MAX_STATE_NAMES && lookup(&self.names, name).is_none() {
            return Err(HostError::TooManyNames {
                limit: MAX_STATE_NAMES,
            });
        }
        Ok(())
    }

    fn check_key(&self, key: &[u8]) -> Result<(), HostError> {
        if key.len() > self.limits.max_emit_key {
            return Err(HostError::KeyTooLong {
                size: key.len(),
                limit: self.limits.max_emit_key,
            });
        }
        Ok(())
    }

    /// Checks that the current event may hold `more` bytes besides what it
    /// holds (emits, state growth, replaced state) within
    /// [`Limits::max_memory`], with its key's state at `size` bytes.
    fn check_held(&self, size: usize, more: usize) -> Result<(), HostError> {
        let total = self.held + self.emits.bytes() + size.saturating_sub(self.size_at_begin) + more;
        if total > self.limits.max_memory {
            return Err(HostError::EventTooLarge {
                size: total,
                limit: self.limits.max_memory,
            });
        }
        Ok(())
    }

    /// The current key's slot index.
    fn current(&self) -> Result<usize, HostError> {
        Ok(self.current.ok_or(HostError::NoKey)? as usize)
    }

    // ---- the state interface -------------------------------------------------
    //
    // Reads look names up without adding them (a name never written has no
    // state); writes check the name's length before it is added.

    fn name_id(&mut self, name: &str) -> Name {
        intern(&mut self.names, name)
    }

    fn lookup(&self, name: &str) -> Option<Name> {
        lookup(&self.names, name.as_bytes())
    }

    pub fn get(&mut self, name: &str) -> Result<Option<&[u8]>, HostError> {
        let i = self.current()?;
        let Some(name) = self.lookup(name) else {
            return Ok(None);
        };
        Ok(self.slots[i].entity.get(name))
    }

    pub fn set(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        let i = self.current()?;
        self.check_size(value.len())?;
        self.check_state_name(name.as_bytes())?;
        let slot = &self.slots[i];
        let old = self.lookup(name).and_then(|n| slot.entity.get(n));
        let held = old.map_or(0, <[u8]>::len);
        let size = match old {
            Some(old) => slot.size.saturating_sub(old.len()) + value.len(),
            None => slot.size + VALUE_ENTRY + name.len() + value.len(),
        };
        self.check_held(size, held)?;
        let name = self.name_id(name);
        let slot = &mut self.slots[i];
        slot.entity.set(name, value, &mut self.undo);
        slot.size = size;
        self.held += held;
        Ok(())
    }

    /// Applies one event's outcome from an operator's batch result to the
    /// key in cache slot `slot`: its single-value writes (`None`: delete)
    /// and its emits, which go to `out`. All of it is checked first (the
    /// limits; UTF-8 of names and keys not seen before), so a refused event
    /// changes nothing and needs no undo journal.
    pub fn apply(
        &mut self,
        slot: u32,
        writes: &[(&[u8], Option<&[u8]>)],
        emits: &[(&[u8], &[u8])],
        out: &mut Emits,
    ) -> Result<(), HostError> {
        let s = &self.slots[slot as usize];
        let mut names: SmallVec<[Option<Name>; 4]> = SmallVec::new();
        let mut size = s.size;
        let last = last_writes(writes);
        for (w, &(name, value)) in writes.iter().enumerate() {
            self.check_state_name(name)?;
            let id = lookup(&self.names, name);
            if let Some(v) = value {
                self.check_size(v.len())?;
                if id.is_none() {
                    std::str::from_utf8(name).map_err(|_| HostError::NotUtf8("state name"))?;
                }
            }
            names.push(id);
            // The size after the event: each name's last write counts.
            if last[w] {
                let old = id.and_then(|n| s.entity.get(n));
                size = size.saturating_sub(old.map_or(0, |o| VALUE_ENTRY + name.len() + o.len()));
                size += value.map_or(0, |v| VALUE_ENTRY + name.len() + v.len());
            }
        }
        if size > self.limits.max_key_state && size > s.size {
            return Err(HostError::KeyStateTooLarge {
                size,
                limit: self.limits.max_key_state,
            });
        }
        let current = &s.key;
        let mut keys: SmallVec<[CompactString; 2]> = SmallVec::new();
        let mut emitted = 0usize;
        for (key, value) in emits {
            self.check_emit(value.len())?;
            self.check_key(key)?;
            emitted += key.len() + value.len();
            if emitted > self.limits.max_emit_per_event {
                return Err(HostError::EventEmitsTooLarge {
                    size: emitted,
                    limit: self.limits.max_emit_per_event,
                });
            }
            keys.push(if *key == current.as_bytes() {
                current.clone()
            } else {
                CompactString::from(
                    std::str::from_utf8(key).map_err(|_| HostError::NotUtf8("emitted key"))?,
                )
            });
        }
        for (id, (name, value)) in names.iter().zip(writes) {
            match (value, *id) {
                (Some(v), Some(n)) => self.slots[slot as usize].entity.put(n, v),
                (Some(v), None) => {
                    // Checked to be UTF-8 above (a name written twice is
                    // found the second time).
                    let n = intern_bytes(&mut self.names, name)?;
                    self.slots[slot as usize].entity.put(n, v)
                }
                (None, Some(n)) => self.slots[slot as usize].entity.remove(n),
                // Deleting a name never written: nothing to remove.
                (None, None) => {
                    if let Some(n) = lookup(&self.names, name) {
                        self.slots[slot as usize].entity.remove(n)
                    }
                }
            }
        }
        let s = &mut self.slots[slot as usize];
        s.size = size;
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
        let i = self.current()?;
        self.check_state_name(name.as_bytes())?;
        let Some(name) = self.lookup(name) else {
            return Ok(false);
        };
        let slot = &mut self.slots[i];
        let old = slot.entity.get(name).map_or(0, <[u8]>::len);
        let removed = slot.entity.delete(name, &mut self.undo);
        if removed {
            slot.size =
                (slot.size).saturating_sub(VALUE_ENTRY + self.names[name as usize].len() + old);
            self.held += old;
        }
        Ok(removed)
    }

    pub fn map_get(&mut self, name: &str, field: &str) -> Result<Option<&[u8]>, HostError> {
        let i = self.current()?;
        let Some(name) = self.lookup(name) else {
            return Ok(None);
        };
        Ok(self.slots[i]
            .entity
            .map(name)
            .and_then(|m| m.get(field))
            .map(|v| &v[..]))
    }

    pub fn map_set(&mut self, name: &str, field: String, value: Vec<u8>) -> Result<(), HostError> {
        let i = self.current()?;
        self.check_size(value.len())?;
        self.check_state_name(name.as_bytes())?;
        self.check_name("map field", field.as_bytes())?;
        let slot = &self.slots[i];
        let map = self.lookup(name).and_then(|n| slot.entity.map(n));
        let old = map.and_then(|m| m.get(&field)).map(Vec::len);
        let mut size = slot.size;
        if map.is_none() {
            size += MAP_ENTRY + name.len();
        }
        size = match old {
            Some(old) => size.saturating_sub(old) + value.len(),
            None => size + FIELD_ENTRY + field.len() + value.len(),
        };
        // The journal keeps the field's name and old value.
        let held = field.len() + old.unwrap_or(0);
        self.check_held(size, held)?;
        let name = self.name_id(name);
        let slot = &mut self.slots[i];
        slot.entity.map_set(name, field, value, &mut self.undo);
        slot.size = size;
        self.held += held;
        Ok(())
    }

    pub fn map_delete(&mut self, name: &str, field: &str) -> Result<bool, HostError> {
        let i = self.current()?;
        let Some(name) = self.lookup(name) else {
            return Ok(false);
        };
        let slot = &mut self.slots[i];
        let old = slot
            .entity
            .map(name)
            .and_then(|m| m.get(field))
            .map_or(0, Vec::len);
        let removed = slot.entity.map_delete(name, field, &mut self.undo);
        if removed {
            slot.size = slot.size.saturating_sub(FIELD_ENTRY + field.len() + old);
            self.held += field.len() + old;
        }
        Ok(removed)
    }

    pub fn map_entries(&mut self, name: &str) -> Result<Vec<(String, Vec<u8>)>, HostError> {
        let i = self.current()?;
        let Some(name) = self.lookup(name) else {
            return Ok(Vec::new());
        };
        Ok(self.slots[i]
            .entity
            .map(name)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    pub fn map_len(&mut self, name: &str) -> Result<u32, HostError> {
        let i = self.current()?;
        let Some(name) = self.lookup(name) else {
            return Ok(0);
        };
        Ok(self.slots[i].entity.map(name).map_or(0, |m| m.len() as u32))
    }

    pub fn list_push(&mut self, name: &str, item: Vec<u8>) -> Result<u32, HostError> {
        let i = self.current()?;
        self.check_size(item.len())?;
        self.check_state_name(name.as_bytes())?;
        let slot = &self.slots[i];
        let list = self.lookup(name).and_then(|n| slot.entity.list(n));
        let mut size = slot.size + ITEM_ENTRY + item.len();
        if list.is_none() {
            size += LIST_ENTRY + name.len();
        }
        self.check_held(size, 0)?;
        let name = self.name_id(name);
        let slot = &mut self.slots[i];
        let len = slot.entity.list_push(name, item, &mut self.undo);
        slot.size = size;
        Ok(len as u32)
    }

    pub fn list_len(&mut self, name: &str) -> Result<u32, HostError> {
        let i = self.current()?;
        let Some(name) = self.lookup(name) else {
            return Ok(0);
        };
        Ok(self.slots[i]
            .entity
            .list(name)
            .map_or(0, |l| l.len() as u32))
    }

    pub fn list_range(
        &mut self,
        name: &str,
        start: u32,
        end: u32,
    ) -> Result<Vec<Vec<u8>>, HostError> {
        let i = self.current()?;
        let Some(name) = self.lookup(name) else {
            return Ok(Vec::new());
        };
        let Some(list) = self.slots[i].entity.list(name) else {
            return Ok(Vec::new());
        };
        let end = (end as usize).min(list.len());
        let start = (start as usize).min(end);
        Ok(list.range(start..end).cloned().collect())
    }

    pub fn list_trim(&mut self, name: &str, keep: u32) -> Result<u32, HostError> {
        let i = self.current()?;
        let Some(name) = self.lookup(name) else {
            return Ok(0);
        };
        let slot = &mut self.slots[i];
        let dropped: usize = slot.entity.list(name).map_or(0, |l| {
            l.iter()
                .take(l.len().saturating_sub(keep as usize))
                .map(|item| ITEM_ENTRY + item.len())
                .sum()
        });
        let n = slot.entity.list_trim(name, keep as usize, &mut self.undo);
        slot.size = slot.size.saturating_sub(dropped);
        self.held += dropped;
        Ok(n as u32)
    }

    pub fn clear(&mut self) -> Result<(), HostError> {
        let i = self.current()?;
        let slot = &mut self.slots[i];
        slot.entity.clear(&mut self.undo);
        // The journal keeps the whole old state.
        self.held += slot.size.saturating_sub(RECORD_HEADER);
        slot.size = RECORD_HEADER;
        Ok(())
    }

    pub fn emit(&mut self, key: &str, value: &[u8]) -> Result<(), HostError> {
        let i = self.current()?;
        if self.migrating {
            return Err(HostError::EmitInMigrate);
        }
        self.check_emit(value.len())?;
        self.check_key(key.as_bytes())?;
        let total = self.emits.bytes() + key.len() + value.len();
        if total > self.limits.max_emit_per_event {
            return Err(HostError::EventEmitsTooLarge {
                size: total,
                limit: self.limits.max_emit_per_event,
            });
        }
        self.check_held(self.slots[i].size, key.len() + value.len())?;
        self.emits.push(key, value);
        Ok(())
    }
}

/// Per write of `writes`, whether it is the last of its name (only those
/// decide the size of the key's state). No allocation for a handful of
/// writes; a hash set past that, so that no result costs quadratic time.
fn last_writes(writes: &[(&[u8], Option<&[u8]>)]) -> SmallVec<[bool; 8]> {
    if writes.len() <= 8 {
        return (0..writes.len())
            .map(|w| !writes[w + 1..].iter().any(|(n, _)| *n == writes[w].0))
            .collect();
    }
    let mut seen = rustc_hash::FxHashSet::default();
    let mut last: SmallVec<[bool; 8]> = writes.iter().rev().map(|(n, _)| seen.insert(*n)).collect();
    last.reverse();
    last
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

/// The id of `name` in `names`, if it was ever added.
fn lookup(names: &[Box<str>], name: &[u8]) -> Option<Name> {
    names
        .iter()
        .position(|n| n.as_bytes() == name)
        .map(|i| i as Name)
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
    fn the_number_of_distinct_state_names_is_bounded() {
        let mut ctx = OpCtx::new("op".into(), None, Limits::default());
        let mut out = Emits::default();
        for i in 0..MAX_STATE_NAMES {
            ctx.begin(&format!("k{i}")).unwrap();
            ctx.set(&format!("name-{i}"), b"1").unwrap();
            ctx.finish(true, &mut out);
        }
        ctx.begin("k").unwrap();
        let err = ctx.set("one-too-many", b"1").unwrap_err();
        assert!(matches!(
            err,
            HostError::TooManyNames {
                limit: MAX_STATE_NAMES
            }
        ));
        assert!(
            err.to_string()
                .contains("more than 1024 distinct state names"),
            "{err}"
        );
        // Names already in use still work, on the batch path too.
        ctx.set("name-7", b"2").unwrap();
        ctx.finish(true, &mut out);
        let slot = ctx.load_slot("k2").unwrap();
        let mut emitted = Emits::default();
        assert!(matches!(
            ctx.apply(
                slot,
                &[(&b"another-new-name"[..], Some(&b"1"[..]))],
                &[],
                &mut emitted
            ),
            Err(HostError::TooManyNames { .. })
        ));
        ctx.apply(
            slot,
            &[(&b"name-3"[..], Some(&b"1"[..]))],
            &[],
            &mut emitted,
        )
        .unwrap();
    }

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

    /// The size of slot `i`'s state as `Entity::encode_tagged` stores it.
    fn stored_len(ctx: &OpCtx, i: usize) -> usize {
        let mut buf = Vec::new();
        ctx.slots[i].entity.encode_tagged(0, &ctx.names, &mut buf);
        buf.len()
    }

    #[test]
    fn key_state_size_follows_every_write_and_undo() {
        let mut ctx = OpCtx::new("op".into(), None, Limits::default());
        let mut out = Emits::default();
        ctx.begin("k").unwrap();
        assert_eq!(ctx.slots[0].size, stored_len(&ctx, 0));
        ctx.set("a", b"12345").unwrap();
        ctx.set("a", b"1").unwrap();
        ctx.set("bb", b"xyz").unwrap();
        ctx.map_set("m", "f".into(), b"1".to_vec()).unwrap();
        ctx.map_set("m", "f".into(), b"123".to_vec()).unwrap();
        ctx.map_set("m", "gg".into(), b"4".to_vec()).unwrap();
        assert!(ctx.map_delete("m", "f").unwrap());
        for item in [&b"x"[..], b"yy", b"zzz"] {
            ctx.list_push("l", item.to_vec()).unwrap();
        }
        assert_eq!(ctx.list_trim("l", 1).unwrap(), 2);
        assert!(ctx.delete("a").unwrap());
        assert!(!ctx.delete("never").unwrap());
        assert_eq!(ctx.slots[0].size, stored_len(&ctx, 0));
        ctx.finish(true, &mut out);
        let kept = ctx.slots[0].size;

        // A failed event's writes are undone, and so is the count.
        ctx.begin("k").unwrap();
        ctx.set("c", b"1").unwrap();
        ctx.clear().unwrap();
        assert_eq!(ctx.slots[0].size, stored_len(&ctx, 0));
        ctx.list_push("l2", b"1".to_vec()).unwrap();
        ctx.finish(false, &mut out);
        assert_eq!(ctx.slots[0].size, kept);
        assert_eq!(ctx.slots[0].size, stored_len(&ctx, 0));

        // The batched path: a name written twice counts once (its last write).
        let slot = ctx.load_slot("k").unwrap();
        let writes: Vec<(&[u8], Option<&[u8]>)> = vec![
            (b"bb", Some(b"1")),
            (b"new", Some(b"1234")),
            (b"bb", None),
            (b"gone", None),
        ];
        ctx.apply(slot, &writes, &[], &mut out).unwrap();
        assert_eq!(ctx.slots[0].size, stored_len(&ctx, 0));
        assert!(
            ctx.lookup("gone").is_none(),
            "deleting a name never written adds no name"
        );

        // Reads never add names.
        ctx.begin("k").unwrap();
        let names = ctx.names.len();
        assert_eq!(ctx.get("unknown").unwrap(), None);
        assert_eq!(ctx.map_len("unknown").unwrap(), 0);
        assert_eq!(ctx.list_range("unknown", 0, 9).unwrap().len(), 0);
        assert_eq!(ctx.names.len(), names);
        ctx.finish(true, &mut out);
    }

    #[test]
    fn names_keys_emits_and_key_state_are_limited_on_both_paths() {
        let limits = Limits {
            max_name: 8,
            max_emit_key: 8,
            max_emit_per_event: 100,
            max_key_state: 200,
            ..Limits::default()
        };
        let mut ctx = OpCtx::new("op".into(), None, limits);
        let mut out = Emits::default();
        ctx.begin("k").unwrap();
        let err = ctx.set("123456789", b"1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "state name of 9 bytes exceeds the limit max_name_bytes = 8 bytes"
        );
        assert!(
            ctx.lookup("123456789").is_none(),
            "a refused name is not kept"
        );
        let err = ctx.map_set("m", "f".repeat(9), b"1".to_vec()).unwrap_err();
        assert!(err.to_string().starts_with("map field of 9 bytes"), "{err}");
        let err = ctx.emit("123456789", b"1").unwrap_err();
        assert!(err.to_string().contains("max_emit_key_bytes = 8"), "{err}");
        ctx.emit("k", &[0; 50]).unwrap();
        let err = ctx.emit("k", &[0; 50]).unwrap_err();
        assert!(
            err.to_string().contains("max_emit_bytes_per_event = 100"),
            "{err}"
        );
        // State may pass the limit during the event, not at its end.
        ctx.set("v", &[0; 300]).unwrap();
        let err = ctx.check_event().unwrap_err();
        assert!(
            err.to_string().contains("max_key_state_bytes = 200"),
            "{err}"
        );
        ctx.set("v", &[0; 10]).unwrap();
        ctx.check_event().unwrap();
        ctx.finish(false, &mut out);

        let slot = ctx.load_slot("k").unwrap();
        let before = stored_len(&ctx, slot as usize);
        let long: &[u8] = b"123456789";
        for (writes, emits, limit) in [
            (vec![(long, Some(&b"1"[..]))], vec![], "max_name_bytes"),
            (vec![(long, None)], vec![], "max_name_bytes"),
            (
                vec![(&b"v"[..], Some(&[0u8; 300][..]))],
                vec![],
                "max_key_state_bytes",
            ),
            (vec![], vec![(long, &b"1"[..])], "max_emit_key_bytes"),
            (
                vec![],
                vec![(&b"k"[..], &[0u8; 60][..]), (&b"k"[..], &[0u8; 60][..])],
                "max_emit_bytes_per_event",
            ),
        ] {
            let err = ctx.apply(slot, &writes, &emits, &mut out).unwrap_err();
            assert!(err.to_string().contains(limit), "{err}");
            assert!(out.is_empty());
            assert_eq!(stored_len(&ctx, slot as usize), before);
            assert_eq!(ctx.slots[slot as usize].size, before);
        }
    }

    #[test]
    fn what_an_event_holds_in_the_host_is_bounded_by_max_memory() {
        let limits = Limits {
            max_memory: 1000,
            ..Limits::default()
        };
        let mut ctx = OpCtx::new("op".into(), None, limits);
        let mut out = Emits::default();
        ctx.begin("k").unwrap();
        // Each rewrite keeps the old value in the undo journal.
        let err = (0..100)
            .try_for_each(|_| ctx.set("v", &[0; 100]))
            .unwrap_err();
        assert!(err.to_string().contains("max_memory_bytes = 1000"), "{err}");
        ctx.finish(false, &mut out);
        assert_eq!(ctx.slots[0].size, RECORD_HEADER);
    }

    #[test]
    fn long_reasons_are_cut_with_a_note() {
        assert_eq!(cap_reason("short", 10), "short");
        let cut = cap_reason(&"é".repeat(10), 5);
        assert_eq!(cut, "éé... [16 more bytes cut: max_reason_bytes = 5]");
        let cut = cap_reason_bytes(&[b'a'; 100], 10);
        assert!(cut.starts_with("aaaaaaaaaa... [90 more bytes cut"), "{cut}");
    }
}
