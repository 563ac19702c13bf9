//! One event's outcome from a batched call (`handle-batch`), checked as a
//! whole, then applied to the key's cached state.

use compact_str::CompactString;
use smallvec::SmallVec;

use crate::state::Name;

use super::index::{intern_bytes, lookup};
use super::{Emits, HostError, OpCtx, VALUE_ENTRY};

impl OpCtx {
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
        if self.ttl.is_some() && !writes.is_empty() {
            for (id, (name, _)) in names.iter().zip(writes) {
                if let Some(n) = id.or_else(|| lookup(&self.names, name)) {
                    self.ttl_wrote(n);
                }
            }
        }
        let s = &mut self.slots[slot as usize];
        let old = std::mem::replace(&mut s.size, size);
        self.resized(old, size);
        if !writes.is_empty() {
            self.slots[slot as usize].generation = self.generation;
            self.mark_dirty(slot);
        }
        self.ttl_finish(slot, true);
        for (key, (_, value)) in keys.into_iter().zip(emits) {
            out.push_key(key, value);
        }
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
