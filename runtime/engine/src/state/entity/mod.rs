//! Per-key state of one operator: the in-memory form, its undo journal and
//! its encoding in redb.
//!
//! Each key's state for one operator is an [`Entity`]: named values, maps and
//! lists. It is stored in redb as one record (see [`Entity::encode`]) under
//! `(operator name, key)`, so loading a key's state is one lookup and a
//! checkpoint writes one record per key touched since the last one.
//!
//! Writes while handling an event are recorded in an undo journal so that an
//! event whose handler fails leaves no trace ([`Entity::undo`]).
//!
//! A list past [`SPILL_ITEMS`] items or [`SPILL_BYTES`] bytes is *spilled*
//! at a checkpoint (see [`Entity::hand_over`]): its items go to rows of
//! their own, `(operator, key, list name, index)`, and the record keeps only
//! where the list starts and ends. The entity then holds in memory only the
//! items written since (until the checkpoint that writes them is visible
//! to the workers' readers); the host reads other items from the rows, so
//! a list far larger than memory is read by range (see [`List`]).
//!
//! Maps spill the same way past the same thresholds (see [`Map`]): their
//! fields go to rows `(operator, key, map name, field)`, the record keeps
//! only their count and size, and the entity holds only the fields changed
//! since their rows were visible to the reader.

use std::collections::{BTreeMap, VecDeque};

use smallvec::SmallVec;

use thiserror::Error;

/// Format version of an encoded [`Entity`] record. Format 3 adds a
/// checksum at the end; format 2 added the version tag; format 1 records
/// (no tag) read as generation 0. Formats 1 and 2 (no checksum) still
/// decode, so old state directories open.
const ENTITY_FORMAT: u8 = 3;

/// Format of a record with spilled lists: format 3 with, before the
/// checksum, a section of spilled lists (see [`Entity::encode_tagged`]).
/// Only records with a spilled list are written in it, so a state
/// directory without big lists is read by older versions as before.
const SPILL_FORMAT: u8 = 4;

/// Format of a record with spilled maps: format 4 (its spilled lists
/// section may be empty) with, after it, a section of spilled maps. Only
/// records with a spilled map are written in it.
const MAP_SPILL_FORMAT: u8 = 5;

/// Bytes of an encoded record that do not depend on its contents: format,
/// generation, the three counts and the trailing CRC-32 (see
/// [`Entity::encode_tagged`]).
pub const RECORD_OVERHEAD: usize = 1 + 4 + 3 * 4 + 4;

/// A state name, interned per operator (see [`crate::operator::OpCtx`]), so
/// lookups compare integers instead of chasing string pointers.
pub type Name = u32;

/// A value's bytes: small values (numbers, short JSON) live inline.
pub type Bytes = SmallVec<[u8; 32]>;

/// The state of one key for one operator.
///
/// Kept small (the host caches one per key, and a batch touches hundreds
/// of them): one single value inline, maps and lists behind one pointer.
#[derive(Debug, Default, Clone)]
pub struct Entity {
    /// Single values by name; a handful per operator, so a vector scanned
    /// linearly beats a hash map.
    values: SmallVec<[(Name, Bytes); 1]>,
    /// Maps and lists, when the key has any.
    extra: Option<Box<Extra>>,
}

/// The maps and lists of an [`Entity`].
#[derive(Debug, Default, Clone, PartialEq)]
struct Extra {
    /// Maps by name.
    maps: Vec<(Name, Map)>,
    /// Lists by name.
    lists: Vec<(Name, List)>,
    /// Spilled lists removed since the last checkpoint (cleared, expired,
    /// brought back inline): their rows are deleted at the next one.
    gone: Vec<Name>,
    /// Spilled maps removed since the last checkpoint (cleared, expired,
    /// brought back inline): their rows are deleted at the next one.
    gone_maps: Vec<Name>,
}

static NO_EXTRA: Extra = Extra {
    maps: Vec::new(),
    lists: Vec::new(),
    gone: Vec::new(),
    gone_maps: Vec::new(),
};

impl PartialEq for Entity {
    fn eq(&self, other: &Entity) -> bool {
        self.values == other.values && self.x() == other.x()
    }
}

/// One step of the undo journal: how to reverse one mutation.
#[derive(Debug)]
pub enum Undo {
    ValueReplaced {
        idx: usize,
        old: Bytes,
    },
    ValueInserted {
        idx: usize,
    },
    ValueRemoved {
        idx: usize,
        name: Name,
        old: Bytes,
    },
    MapCreated {
        idx: usize,
    },
    MapFieldSet {
        idx: usize,
        field: String,
        old: Option<Vec<u8>>,
    },
    MapFieldRemoved {
        idx: usize,
        field: String,
        old: Vec<u8>,
    },
    MapDropped {
        idx: usize,
        name: Name,
    },
    /// A field of a spilled map was set or deleted: its change before
    /// (`None`: unchanged since its row), and the map's `len`, `bytes`,
    /// `mem_bytes` and `mark_bytes` before.
    MapSpillChanged {
        idx: usize,
        field: String,
        old: Option<Change>,
        counts: (u64, u64, u64, u64),
    },
    ListCreated {
        idx: usize,
    },
    ListPushed {
        idx: usize,
    },
    ListTrimmed {
        idx: usize,
        dropped: Vec<Vec<u8>>,
    },
    /// A spilled list was trimmed: its bounds before, and the items it
    /// dropped from memory (the dropped rows stay until the checkpoint).
    SpillTrimmed {
        idx: usize,
        old: Spill,
        dropped: Vec<Vec<u8>>,
    },
    Cleared {
        old: Box<Entity>,
    },
}

/// A stored record that cannot be decoded.
#[derive(Debug, Error)]
#[error("corrupt state record: {0}")]
pub struct CorruptRecord(pub &'static str);

/// CRC-32 of a format 3 record: every byte before the checksum.
fn record_sum(body: &[u8]) -> u32 {
    crc32fast::hash(body)
}

/// Verifies the checksum of a stored record (format 3; formats 1 and 2
/// have none), without decoding it.
pub fn check_record(record: &[u8]) -> Result<(), CorruptRecord> {
    match record.first() {
        Some(1 | 2) => Ok(()),
        Some(&ENTITY_FORMAT | &SPILL_FORMAT | &MAP_SPILL_FORMAT) => {
            if record.len() < 1 + 4 + 4 {
                return Err(CorruptRecord("record is truncated"));
            }
            let (body, sum) = record.split_at(record.len() - 4);
            if record_sum(body) != u32::from_le_bytes(sum.try_into().unwrap()) {
                return Err(CorruptRecord(
                    "checksum mismatch: the record was changed after it was written",
                ));
            }
            Ok(())
        }
        Some(_) => Err(CorruptRecord("unknown record format")),
        None => Err(CorruptRecord("record is empty")),
    }
}

fn find<T>(v: &[(Name, T)], name: Name) -> Option<usize> {
    v.iter().position(|(n, _)| *n == name)
}

impl Entity {
    /// The maps and lists (empty when none).
    fn x(&self) -> &Extra {
        self.extra.as_deref().unwrap_or(&NO_EXTRA)
    }

    /// Starts loading map `name`'s memory into the cache, one level of
    /// pointers per `level` (0: the key's maps and lists; 1: its maps'
    /// vector; 2 and up: the map's first field and its bytes, which a key
    /// with a few fields often reads). A pass over many keys level by level
    /// lets their loads overlap instead of waiting for each in turn.
    pub fn prefetch_map(&self, name: Name, level: u8) {
        let Some(x) = self.extra.as_deref() else {
            return;
        };
        match level {
            0 => prefetch(x as *const Extra as *const u8),
            1 => {
                if let Some(first) = x.maps.first() {
                    prefetch(first as *const (Name, Map) as *const u8);
                }
            }
            _ => {
                if let Some((k, v)) = self.map(name).and_then(|m| m.fields.first_key_value()) {
                    prefetch(k.as_ptr());
                    prefetch(v.as_ptr());
                }
            }
        }
    }

    /// The maps and lists, made on first use.
    fn x_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    /// Whether the key has no state at all (its record can be deleted;
    /// rows of lists spilled before may still have to be).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.x().maps.is_empty() && self.x().lists.is_empty()
    }

    /// Every single value, with its name.
    pub fn values(&self) -> impl Iterator<Item = (Name, &[u8])> {
        self.values.iter().map(|(n, v)| (*n, &v[..]))
    }

    /// The value named `name`.
    pub fn get(&self, name: Name) -> Option<&[u8]> {
        find(&self.values, name).map(|i| &self.values[i].1[..])
    }

    /// Sets the value named `name`.
    pub fn set(&mut self, name: Name, value: &[u8], undo: &mut Vec<Undo>) {
        match find(&self.values, name) {
            Some(idx) => {
                let old = std::mem::replace(&mut self.values[idx].1, Bytes::from_slice(value));
                undo.push(Undo::ValueReplaced { idx, old });
            }
            None => {
                self.values.push((name, Bytes::from_slice(value)));
                undo.push(Undo::ValueInserted {
                    idx: self.values.len() - 1,
                });
            }
        }
    }

    /// Sets the value named `name` without journaling (the caller has
    /// checked the write can go through): reuses the value's buffer.
    pub fn put(&mut self, name: Name, value: &[u8]) {
        match find(&self.values, name) {
            Some(idx) => {
                let b = &mut self.values[idx].1;
                b.clear();
                b.extend_from_slice(value);
            }
            None => self.values.push((name, Bytes::from_slice(value))),
        }
    }

    /// Deletes the value named `name` without journaling.
    pub fn remove(&mut self, name: Name) {
        if let Some(idx) = find(&self.values, name) {
            self.values.remove(idx);
        }
    }

    /// Deletes the value named `name`; whether it existed.
    pub fn delete(&mut self, name: Name, undo: &mut Vec<Undo>) -> bool {
        match find(&self.values, name) {
            Some(idx) => {
                let (name, old) = self.values.remove(idx);
                undo.push(Undo::ValueRemoved { idx, name, old });
                true
            }
            None => false,
        }
    }

    /// Whether anything is stored under `name`: a value, a map or a list.
    pub fn has(&self, name: Name) -> bool {
        find(&self.values, name).is_some()
            || find(&self.x().maps, name).is_some()
            || find(&self.x().lists, name).is_some()
    }

    /// Deletes the value, map and list named `name` without journaling (an
    /// entry whose time to live ran out); whether there was any.
    pub fn expire(&mut self, name: Name) -> bool {
        let mut any = false;
        if let Some(idx) = find(&self.values, name) {
            self.values.remove(idx);
            any = true;
        }
        if let Some(x) = &mut self.extra {
            if let Some(idx) = find(&x.maps, name) {
                let (name, map) = x.maps.remove(idx);
                if map.spill.is_some() {
                    x.gone_maps.push(name);
                }
                any = true;
            }
            if let Some(idx) = find(&x.lists, name) {
                let (name, list) = x.lists.remove(idx);
                if list.spill.is_some() {
                    x.gone.push(name);
                }
                any = true;
            }
        }
        any
    }

    /// The map named `name`.
    pub fn map(&self, name: Name) -> Option<&Map> {
        find(&self.x().maps, name).map(|i| &self.x().maps[i].1)
    }

    /// Removes map `name` when it has no field left (so that a key whose
    /// maps all emptied has no state); whether it did. A spilled map is
    /// left alone (an empty one is removed at the next checkpoint, see
    /// [`Entity::map_unspill`]).
    pub fn map_drop_empty(&mut self, name: Name, undo: &mut Vec<Undo>) -> bool {
        let Some(idx) = find(&self.x().maps, name) else {
            return false;
        };
        let map = &self.x().maps[idx].1;
        if map.spill.is_some() || !map.is_empty() {
            return false;
        }
        self.x_mut().maps.remove(idx);
        undo.push(Undo::MapDropped { idx, name });
        true
    }

    /// The list named `name`.
    pub fn list(&self, name: Name) -> Option<&List> {
        find(&self.x().lists, name).map(|i| &self.x().lists[i].1)
    }

    /// Appends to list `name`; returns the new length.
    pub fn list_push(&mut self, name: Name, item: Vec<u8>, undo: &mut Vec<Undo>) -> u64 {
        let lists = &mut self.x_mut().lists;
        let idx = match find(lists, name) {
            Some(idx) => idx,
            None => {
                lists.push((name, List::default()));
                undo.push(Undo::ListCreated {
                    idx: lists.len() - 1,
                });
                lists.len() - 1
            }
        };
        let list = &mut lists[idx].1;
        if let Some(s) = &mut list.spill {
            let n = item_size(&item);
            s.bytes += n;
            s.mem_bytes += n;
        }
        list.items.push_back(item);
        undo.push(Undo::ListPushed { idx });
        list.len()
    }

    /// Keeps the newest `keep` items of list `name`; returns how many went
    /// and their size as stored. `row_bytes(from, to)` gives the size as
    /// stored of the spilled items `from..to` (absolute indexes) that are
    /// only in rows: they are deleted at the next checkpoint.
    pub fn list_trim<E>(
        &mut self,
        name: Name,
        keep: u64,
        undo: &mut Vec<Undo>,
        row_bytes: impl FnOnce(u64, u64) -> Result<u64, E>,
    ) -> Result<(u64, u64), E> {
        let Some(idx) = find(&self.x().lists, name) else {
            return Ok((0, 0));
        };
        let list = &mut self.x_mut().lists[idx].1;
        let n = list.len().saturating_sub(keep);
        if n == 0 {
            return Ok((0, 0));
        }
        let Some(s) = list.spill else {
            let dropped: Vec<Vec<u8>> = list.items.drain(..n as usize).collect();
            let bytes = dropped.iter().map(|i| item_size(i)).sum();
            undo.push(Undo::ListTrimmed { idx, dropped });
            return Ok((n, bytes));
        };
        let new_start = s.start + n;
        let in_rows = if s.start < s.mem {
            row_bytes(s.start, new_start.min(s.mem))?
        } else {
            0
        };
        let from_mem = new_start.saturating_sub(s.mem) as usize;
        let dropped: Vec<Vec<u8>> = list.items.drain(..from_mem).collect();
        let mem_bytes: u64 = dropped.iter().map(|i| item_size(i)).sum();
        let sp = list.spill.as_mut().expect("spilled");
        sp.start = new_start;
        sp.mem = sp.mem.max(new_start);
        sp.mem_bytes -= mem_bytes;
        sp.bytes -= in_rows + mem_bytes;
        undo.push(Undo::SpillTrimmed {
            idx,
            old: s,
            dropped,
        });
        Ok((n, in_rows + mem_bytes))
    }

    /// Removes everything (the rows of spilled lists at the next
    /// checkpoint).
    pub fn clear(&mut self, undo: &mut Vec<Undo>) {
        if !self.is_empty() {
            let gone: Vec<Name> = self
                .x()
                .gone
                .iter()
                .copied()
                .chain(
                    self.x()
                        .lists
                        .iter()
                        .filter(|(_, l)| l.spill.is_some())
                        .map(|(n, _)| *n),
                )
                .collect();
            let gone_maps: Vec<Name> = self
                .x()
                .gone_maps
                .iter()
                .copied()
                .chain(
                    self.x()
                        .maps
                        .iter()
                        .filter(|(_, m)| m.spill.is_some())
                        .map(|(n, _)| *n),
                )
                .collect();
            let old = std::mem::take(self);
            if !gone.is_empty() {
                self.x_mut().gone = gone;
            }
            if !gone_maps.is_empty() {
                self.x_mut().gone_maps = gone_maps;
            }
            undo.push(Undo::Cleared { old: Box::new(old) });
        }
    }

    /// Reverses the journal (newest first), restoring the state before it.
    pub fn undo(&mut self, journal: &mut Vec<Undo>) {
        while let Some(step) = journal.pop() {
            match step {
                Undo::ValueReplaced { idx, old } => self.values[idx].1 = old,
                Undo::ValueInserted { idx } => {
                    self.values.remove(idx);
                }
                Undo::ValueRemoved { idx, name, old } => self.values.insert(idx, (name, old)),
                Undo::MapCreated { idx } => {
                    self.x_mut().maps.remove(idx);
                }
                Undo::MapFieldSet { idx, field, old } => {
                    let map = &mut self.x_mut().maps[idx].1.fields;
                    match old {
                        Some(old) => map.insert(field, old),
                        None => map.remove(&field),
                    };
                }
                Undo::MapFieldRemoved { idx, field, old } => {
                    self.x_mut().maps[idx].1.fields.insert(field, old);
                }
                Undo::MapDropped { idx, name } => {
                    self.x_mut().maps.insert(idx, (name, Map::default()));
                }
                Undo::MapSpillChanged {
                    idx,
                    field,
                    old,
                    counts,
                } => {
                    let map = &mut self.x_mut().maps[idx].1;
                    if let Some(s) = &mut map.spill {
                        match old {
                            Some(c) => s.changes.insert(field, c),
                            None => s.changes.remove(&field),
                        };
                        (s.len, s.bytes, s.mem_bytes, s.mark_bytes) = counts;
                    }
                }
                Undo::ListCreated { idx } => {
                    self.x_mut().lists.remove(idx);
                }
                Undo::ListPushed { idx } => {
                    let list = &mut self.x_mut().lists[idx].1;
                    if let (Some(item), Some(s)) = (list.items.pop_back(), &mut list.spill) {
                        let n = item_size(&item);
                        s.bytes -= n;
                        s.mem_bytes -= n;
                    }
                }
                Undo::ListTrimmed { idx, dropped } => {
                    let list = &mut self.x_mut().lists[idx].1;
                    for item in dropped.into_iter().rev() {
                        list.items.push_front(item);
                    }
                }
                Undo::SpillTrimmed { idx, old, dropped } => {
                    let list = &mut self.x_mut().lists[idx].1;
                    for item in dropped.into_iter().rev() {
                        list.items.push_front(item);
                    }
                    list.spill = Some(old);
                }
                Undo::Cleared { old } => *self = *old,
            }
        }
    }

    /// Encodes the state as one record with version tag 0 (see
    /// [`Entity::encode_tagged`]).
    pub fn encode(&self, names: &[Box<str>], out: &mut Vec<u8>) {
        self.encode_tagged(0, names, out)
    }

    /// Encodes the state as one record (appended to `out`):
    /// `format u8`, `generation u32` (which version of the operator last
    /// wrote it, for migration after a hot swap), then values, maps and
    /// lists, each a `u32` count followed by length-prefixed (`u32` little
    /// endian) names and byte strings, then (format 4, only when the key
    /// has spilled lists) a `u32` count of spilled lists, each its name and
    /// `start`, `end` and stored size as `u64` (its items are rows of
    /// their own), then (format 5, only when the key has spilled maps;
    /// its spilled lists section is then always there, maybe empty) a
    /// `u32` count of spilled maps, each its name and number of fields and
    /// stored size as `u64` (its fields are rows of their own), then a
    /// CRC-32 of all of it (`u32` little endian), so a damaged record is an
    /// error, never wrong state. Spilled lists and maps must have been
    /// handed over first ([`Entity::hand_over`],
    /// [`Entity::hand_over_maps`]): the record says their items are in
    /// rows.
    pub fn encode_tagged(&self, generation: u32, names: &[Box<str>], out: &mut Vec<u8>) {
        let start = out.len();
        let name = |n: &Name| names[*n as usize].as_bytes();
        fn bytes(out: &mut Vec<u8>, b: &[u8]) {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        out.push(ENTITY_FORMAT);
        out.extend_from_slice(&generation.to_le_bytes());
        out.extend_from_slice(&(self.values.len() as u32).to_le_bytes());
        for (n, v) in &self.values {
            bytes(out, name(n));
            bytes(out, v);
        }
        let x = self.x();
        let spilled = x.lists.iter().filter(|(_, l)| l.spill.is_some()).count();
        let spilled_maps = x.maps.iter().filter(|(_, m)| m.spill.is_some()).count();
        if spilled_maps > 0 {
            out[start] = MAP_SPILL_FORMAT;
        } else if spilled > 0 {
            out[start] = SPILL_FORMAT;
        }
        out.extend_from_slice(&((x.maps.len() - spilled_maps) as u32).to_le_bytes());
        for (n, m) in x.maps.iter().filter(|(_, m)| m.spill.is_none()) {
            bytes(out, name(n));
            out.extend_from_slice(&(m.fields.len() as u32).to_le_bytes());
            for (f, v) in &m.fields {
                bytes(out, f.as_bytes());
                bytes(out, v);
            }
        }
        out.extend_from_slice(&((x.lists.len() - spilled) as u32).to_le_bytes());
        for (n, l) in x.lists.iter().filter(|(_, l)| l.spill.is_none()) {
            bytes(out, name(n));
            out.extend_from_slice(&(l.items.len() as u32).to_le_bytes());
            for v in &l.items {
                bytes(out, v);
            }
        }
        if spilled > 0 || spilled_maps > 0 {
            out.extend_from_slice(&(spilled as u32).to_le_bytes());
            for (n, l) in &x.lists {
                if let Some(s) = &l.spill {
                    bytes(out, name(n));
                    for v in [s.start, s.mem + l.items.len() as u64, s.bytes] {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        if spilled_maps > 0 {
            out.extend_from_slice(&(spilled_maps as u32).to_le_bytes());
            for (n, m) in &x.maps {
                if let Some(s) = &m.spill {
                    bytes(out, name(n));
                    for v in [s.len, s.bytes] {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        let sum = record_sum(&out[start..]);
        out.extend_from_slice(&sum.to_le_bytes());
    }

    /// Decodes a record written by [`Entity::encode`].
    pub fn decode(
        input: &[u8],
        intern: &mut dyn FnMut(&str) -> Name,
    ) -> Result<Entity, CorruptRecord> {
        Ok(Self::decode_tagged(input, intern)?.0)
    }

    /// Decodes a record made by [`Entity::encode_tagged`] (or a format 1
    /// or 2 record, which have no checksum; format 1 is tagged generation
    /// 0): the state and its generation. A format 3 record whose checksum
    /// does not match is refused.
    pub fn decode_tagged(
        mut input: &[u8],
        intern: &mut dyn FnMut(&str) -> Name,
    ) -> Result<(Entity, u32), CorruptRecord> {
        fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], CorruptRecord> {
            if input.len() < n {
                return Err(CorruptRecord("record is truncated"));
            }
            let (head, rest) = input.split_at(n);
            *input = rest;
            Ok(head)
        }
        fn u32_(input: &mut &[u8]) -> Result<usize, CorruptRecord> {
            Ok(u32::from_le_bytes(take(input, 4)?.try_into().unwrap()) as usize)
        }
        fn bytes(input: &mut &[u8]) -> Result<Vec<u8>, CorruptRecord> {
            let n = u32_(input)?;
            Ok(take(input, n)?.to_vec())
        }
        fn string(input: &mut &[u8]) -> Result<String, CorruptRecord> {
            String::from_utf8(bytes(input)?).map_err(|_| CorruptRecord("a name is not UTF-8"))
        }
        check_record(input)?;
        let format = take(&mut input, 1)?[0];
        let generation = match format {
            1 => 0,
            2 => u32_(&mut input)? as u32,
            ENTITY_FORMAT | SPILL_FORMAT | MAP_SPILL_FORMAT => {
                input = &input[..input.len() - 4];
                u32_(&mut input)? as u32
            }
            _ => return Err(CorruptRecord("unknown record format")),
        };
        let mut e = Entity::default();
        for _ in 0..u32_(&mut input)? {
            let name = intern(&string(&mut input)?);
            e.values.push((name, Bytes::from_vec(bytes(&mut input)?)));
        }
        for _ in 0..u32_(&mut input)? {
            let name = intern(&string(&mut input)?);
            let mut m = BTreeMap::new();
            for _ in 0..u32_(&mut input)? {
                let f = string(&mut input)?;
                m.insert(f, bytes(&mut input)?);
            }
            e.x_mut().maps.push((
                name,
                Map {
                    fields: m,
                    spill: None,
                },
            ));
        }
        for _ in 0..u32_(&mut input)? {
            let name = intern(&string(&mut input)?);
            let n = u32_(&mut input)?;
            let mut l = VecDeque::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                l.push_back(bytes(&mut input)?);
            }
            e.x_mut().lists.push((
                name,
                List {
                    items: l,
                    spill: None,
                },
            ));
        }
        if format == SPILL_FORMAT || format == MAP_SPILL_FORMAT {
            for _ in 0..u32_(&mut input)? {
                let name = intern(&string(&mut input)?);
                let mut u64_ = || -> Result<u64, CorruptRecord> {
                    Ok(u64::from_le_bytes(take(&mut input, 8)?.try_into().unwrap()))
                };
                let (start, end, bytes) = (u64_()?, u64_()?, u64_()?);
                if start > end {
                    return Err(CorruptRecord("a spilled list ends before it starts"));
                }
                e.x_mut().lists.push((
                    name,
                    List {
                        items: VecDeque::new(),
                        spill: Some(Spill {
                            start,
                            mem: end,
                            flushed: end,
                            bytes,
                            mem_bytes: 0,
                        }),
                    },
                ));
            }
        }
        if format == MAP_SPILL_FORMAT {
            for _ in 0..u32_(&mut input)? {
                let name = intern(&string(&mut input)?);
                let mut u64_ = || -> Result<u64, CorruptRecord> {
                    Ok(u64::from_le_bytes(take(&mut input, 8)?.try_into().unwrap()))
                };
                let (len, bytes) = (u64_()?, u64_()?);
                e.x_mut().maps.push((
                    name,
                    Map {
                        fields: BTreeMap::new(),
                        spill: Some(Box::new(MapSpill {
                            len,
                            bytes,
                            mem_bytes: 0,
                            mark_bytes: 0,
                            changes: BTreeMap::new(),
                        })),
                    },
                ));
            }
        }
        if !input.is_empty() {
            return Err(CorruptRecord("trailing bytes after the record"));
        }
        Ok((e, generation))
    }
}

/// Asks for the cache line at `p` (a hint: it never faults, whatever the
/// address).
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint; it never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch(p as *const i8, _MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

mod spill;
mod spill_map;
mod view;
pub use spill::{item_size, List, ListRows, Spill, SPILL_BYTES, SPILL_ITEMS, UNSPILL_ITEMS};
pub use spill_map::{Change, Field, Map, MapRows, MapSpill};
pub use view::{record_json, spilled_maps, value_json};

#[cfg(test)]
mod tests;
