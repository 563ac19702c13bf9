//! `eddy:operator/state` (`wit/state.wit`): the state calls of the event
//! being handled, on its key only, journaled for undo.

use crate::operator::wasm::bindings::eddy::operator::state;
use crate::state::{item_size, Field, Name};

use super::index::{intern, lookup};
use super::{
    trap, HostError, OpCtx, FIELD_ENTRY, ITEM_ENTRY, LIST_ENTRY, MAP_ENTRY, RECORD_HEADER,
    VALUE_ENTRY,
};

impl OpCtx {
    // ---- the state interface -------------------------------------------------
    //
    // Reads look names up without adding them (a name never written has no
    // state); writes check the name's length before it is added.

    pub(super) fn name_id(&mut self, name: &str) -> Name {
        intern(&mut self.names, name)
    }

    pub(super) fn lookup(&self, name: &str) -> Option<Name> {
        lookup(&self.names, name.as_bytes())
    }

    /// `state.get`: the value `name` of the current key, if any.
    pub fn get(&mut self, name: &str) -> Result<Option<&[u8]>, HostError> {
        let i = self.current()?;
        let Some(name) = self.lookup(name) else {
            return Ok(None);
        };
        self.ttl_read(name);
        Ok(self.slots[i].entity.get(name))
    }

    /// `state.set`: sets the value `name` of the current key.
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
        self.ttl_wrote(name);
        Ok(())
    }
    /// `state.delete`: deletes the value `name`; whether it existed.
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
            self.ttl_wrote(name);
        }
        Ok(removed)
    }

    /// Reads field `field` of spilled map `name` of the key in slot `i`
    /// from its row into `self.scratch`; whether it is stored.
    fn read_field(&mut self, i: usize, name: Name, field: &str) -> Result<bool, HostError> {
        let reader = self.reader.as_ref().ok_or(HostError::NoStore)?;
        let scratch = &mut self.scratch;
        scratch.clear();
        Ok(reader.map_field(
            &self.name,
            &self.slots[i].key,
            &self.names[name as usize],
            field,
            &mut |v| scratch.extend_from_slice(v),
        )?)
    }

    /// Whether the key in slot `i` has map `name`, and the length of the
    /// value of its `field` (`None`: no such field), read from the field's
    /// row when the map is spilled and memory does not know it.
    fn map_old(
        &mut self,
        i: usize,
        name: Option<Name>,
        field: &str,
    ) -> Result<(bool, Option<usize>), HostError> {
        let Some(n) = name else {
            return Ok((false, None));
        };
        let Some(map) = self.slots[i].entity.map(n) else {
            return Ok((false, None));
        };
        match map.field(field) {
            Field::Here(v) => Ok((true, v.map(<[u8]>::len))),
            Field::InRows => Ok((
                true,
                self.read_field(i, n, field)?.then_some(self.scratch.len()),
            )),
        }
    }

    /// `state.map-get`: field `field` of map `name`, if any. A field of a
    /// spilled map is read from its row when memory does not hold it.
    pub fn map_get(&mut self, name: &str, field: &str) -> Result<Option<&[u8]>, HostError> {
        let i = self.current()?;
        let Some(name) = self.lookup(name) else {
            return Ok(None);
        };
        self.ttl_read(name);
        let Some(map) = self.slots[i].entity.map(name) else {
            return Ok(None);
        };
        if map.field(field) != Field::InRows {
            return Ok(self.slots[i]
                .entity
                .map(name)
                .and_then(|m| match m.field(field) {
                    Field::Here(v) => v,
                    Field::InRows => None,
                }));
        }
        Ok(self
            .read_field(i, name, field)?
            .then_some(&self.scratch[..]))
    }

    /// `state.map-set`: sets field `field` of map `name`.
    pub fn map_set(&mut self, name: &str, field: String, value: Vec<u8>) -> Result<(), HostError> {
        let i = self.current()?;
        self.check_size(value.len())?;
        self.check_state_name(name.as_bytes())?;
        self.check_name("map field", field.as_bytes())?;
        let (has_map, old) = self.map_old(i, self.lookup(name), &field)?;
        let mut size = self.slots[i].size;
        if !has_map {
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
        slot.entity.map_set(name, field, value, old, &mut self.undo);
        slot.size = size;
        self.held += held;
        self.ttl_wrote(name);
        Ok(())
    }

    /// `state.map-delete`: deletes field `field` of map `name`; whether it existed.
    pub fn map_delete(&mut self, name: &str, field: &str) -> Result<bool, HostError> {
        let i = self.current()?;
        let Some(name) = self.lookup(name) else {
            return Ok(false);
        };
        let (_, old) = self.map_old(i, Some(name), field)?;
        let slot = &mut self.slots[i];
        let removed = slot.entity.map_delete(name, field, old, &mut self.undo);
        if removed {
            let old = old.unwrap_or(0);
            slot.size = slot.size.saturating_sub(FIELD_ENTRY + field.len() + old);
            self.held += field.len() + old;
            self.ttl_wrote(name);
        }
        Ok(removed)
    }

    /// Deletes field `field` of map `name`, and the map itself when no field
    /// is left (its entry then no longer counts in the key's record; the
    /// host's window operator uses it); whether the field existed.
    pub fn map_delete_dropping(&mut self, name: &str, field: &str) -> Result<bool, HostError> {
        let removed = self.map_delete(name, field)?;
        let i = self.current()?;
        if let Some(n) = self.lookup(name) {
            let slot = &mut self.slots[i];
            if slot.entity.map_drop_empty(n, &mut self.undo) {
                slot.size = slot.size.saturating_sub(MAP_ENTRY + name.len());
            }
        }
        Ok(removed)
    }

    /// The fields of map `name` of the key in slot `i` from `from` on, at
    /// most `limit`, in field order: of a spilled map, its rows from
    /// `from` on (read only as far as needed) overlaid with the changes in
    /// memory.
    fn map_fields_from(
        &self,
        i: usize,
        name: Name,
        from: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, HostError> {
        let slot = &self.slots[i];
        let Some(map) = slot.entity.map(name) else {
            return Ok(Vec::new());
        };
        if map.spill().is_none() {
            return Ok(map
                .fields()
                .range::<str, _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
                .take(limit)
                .map(|(f, v)| (f.clone(), v.clone()))
                .collect());
        }
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut changes = map.changes_from(from).peekable();
        let reader = self.reader.as_ref().ok_or(HostError::NoStore)?;
        reader.map_fields(
            &self.name,
            &slot.key,
            &self.names[name as usize],
            from,
            &mut |f, v| {
                // The changes before this row, then the row unless a
                // change replaced or deleted it.
                let mut row = Some(v);
                while let Some(&(cf, cv)) = changes.peek() {
                    if cf > f {
                        break;
                    }
                    changes.next();
                    if cf == f {
                        row = None;
                    }
                    if let Some(cv) = cv {
                        out.push((cf.to_string(), cv.to_vec()));
                        if out.len() >= limit {
                            return false;
                        }
                    }
                }
                if let Some(v) = row {
                    out.push((f.to_string(), v.to_vec()));
                }
                out.len() < limit
            },
        )?;
        for (f, v) in changes {
            if out.len() >= limit {
                break;
            }
            if let Some(v) = v {
                out.push((f.to_string(), v.to_vec()));
            }
        }
        Ok(out)
    }

    /// `state.map-entries`: every field of map `name`, in field order (of
    /// a spilled map, every row is read).
    pub fn map_entries(&mut self, name: &str) -> Result<Vec<(String, Vec<u8>)>, HostError> {
        let i = self.current()?;
        let Some(name) = self.lookup(name) else {
            return Ok(Vec::new());
        };
        self.ttl_read(name);
        self.map_fields_from(i, name, "", usize::MAX)
    }

    /// `state.map-range`: at most `limit` fields of map `name` from field
    /// `from` on (inclusive), in field order; of a spilled map, only those
    /// rows are read.
    pub fn map_range(
        &mut self,
        name: &str,
        from: &str,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, HostError> {
        let i = self.current()?;
        let Some(name) = self.lookup(name) else {
            return Ok(Vec::new());
        };
        self.ttl_read(name);
        self.map_fields_from(i, name, from, limit as usize)
    }

    /// `state.map-len`: the number of fields of map `name`.
    pub fn map_len(&mut self, name: &str) -> Result<u32, HostError> {
        let i = self.current()?;
        let Some(name) = self.lookup(name) else {
            return Ok(0);
        };
        self.ttl_read(name);
        Ok(self.slots[i].entity.map(name).map_or(0, |m| m.len() as u32))
    }

    /// `state.list-push`: appends `item` to list `name`; its new length.
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
        self.ttl_wrote(name);
        Ok(len as u32)
    }

    /// `state.list-len`: the length of list `name`.
    pub fn list_len(&mut self, name: &str) -> Result<u32, HostError> {
        let i = self.current()?;
        let Some(name) = self.lookup(name) else {
            return Ok(0);
        };
        self.ttl_read(name);
        Ok(self.slots[i]
            .entity
            .list(name)
            .map_or(0, |l| l.len() as u32))
    }

    /// `state.list-range`: items `start..end` of list `name`. Items of a
    /// spilled list that are not in memory are read from the store, only
    /// those in the range.
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
        self.ttl_read(name);
        let slot = &self.slots[i];
        let Some(list) = slot.entity.list(name) else {
            return Ok(Vec::new());
        };
        let (rows, mem) = list.split(start as u64, end as u64);
        let mut out =
            Vec::with_capacity((end.saturating_sub(start) as u64).min(list.len()) as usize);
        if !rows.is_empty() {
            let reader = self.reader.as_ref().ok_or(HostError::NoStore)?;
            reader.list_items(
                &self.name,
                &slot.key,
                &self.names[name as usize],
                rows.start,
                rows.end,
                &mut |item| out.push(item.to_vec()),
            )?;
        }
        out.extend(mem.map(<[u8]>::to_vec));
        Ok(out)
    }

    /// `state.list-trim`: keeps the last `keep` items of list `name`; how
    /// many were dropped. Items of a spilled list dropped from the store
    /// are read once, for their size (`max_key_state_bytes` counts them).
    pub fn list_trim(&mut self, name: &str, keep: u32) -> Result<u32, HostError> {
        let i = self.current()?;
        let Some(n) = self.lookup(name) else {
            return Ok(0);
        };
        let (reader, op, list_name) = (self.reader.as_ref(), &self.name, &self.names[n as usize]);
        let super::Slot {
            key, entity, size, ..
        } = &mut self.slots[i];
        let rows_before = entity.row_bytes();
        let (count, bytes) = entity.list_trim(n, keep as u64, &mut self.undo, |from, to| {
            let reader = reader.ok_or(HostError::NoStore)?;
            let mut sum = 0;
            reader.list_items(op, key, list_name, from, to, &mut |item| {
                sum += item_size(item)
            })?;
            Ok::<u64, HostError>(sum)
        })?;
        let from_rows = rows_before - entity.row_bytes();
        *size = size.saturating_sub(bytes as usize);
        // The journal keeps the items it dropped from memory.
        self.held += (bytes - from_rows) as usize;
        if count > 0 {
            self.ttl_wrote(n);
        }
        Ok(count as u32)
    }

    /// `state.clear`: deletes all state of the current key.
    pub fn clear(&mut self) -> Result<(), HostError> {
        let i = self.current()?;
        let slot = &mut self.slots[i];
        // The journal keeps the whole old state (of spilled lists, the
        // items in memory).
        let in_rows = slot.entity.row_bytes() as usize;
        slot.entity.clear(&mut self.undo);
        self.held += slot.size.saturating_sub(RECORD_HEADER + in_rows);
        slot.size = RECORD_HEADER;
        self.ttl_cleared();
        Ok(())
    }
}

/// The interface as the component sees it: a refused call traps with the
/// [`HostError`] that says why.
impl state::Host for OpCtx {
    fn get(&mut self, name: String) -> wasmtime::Result<Option<Vec<u8>>> {
        OpCtx::get(self, &name)
            .map(|v| v.map(<[u8]>::to_vec))
            .map_err(trap)
    }
    fn set(&mut self, name: String, value: Vec<u8>) -> wasmtime::Result<()> {
        OpCtx::set(self, &name, &value).map_err(trap)
    }
    fn delete(&mut self, name: String) -> wasmtime::Result<bool> {
        OpCtx::delete(self, &name).map_err(trap)
    }
    fn map_get(&mut self, name: String, field: String) -> wasmtime::Result<Option<Vec<u8>>> {
        OpCtx::map_get(self, &name, &field)
            .map(|v| v.map(<[u8]>::to_vec))
            .map_err(trap)
    }
    fn map_set(&mut self, name: String, field: String, value: Vec<u8>) -> wasmtime::Result<()> {
        OpCtx::map_set(self, &name, field, value).map_err(trap)
    }
    fn map_delete(&mut self, name: String, field: String) -> wasmtime::Result<bool> {
        OpCtx::map_delete(self, &name, &field).map_err(trap)
    }
    fn map_entries(&mut self, name: String) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        OpCtx::map_entries(self, &name).map_err(trap)
    }
    fn map_len(&mut self, name: String) -> wasmtime::Result<u32> {
        OpCtx::map_len(self, &name).map_err(trap)
    }
    fn map_range(
        &mut self,
        name: String,
        from: String,
        limit: u32,
    ) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        OpCtx::map_range(self, &name, &from, limit).map_err(trap)
    }
    fn list_push(&mut self, name: String, item: Vec<u8>) -> wasmtime::Result<u32> {
        OpCtx::list_push(self, &name, item).map_err(trap)
    }
    fn list_len(&mut self, name: String) -> wasmtime::Result<u32> {
        OpCtx::list_len(self, &name).map_err(trap)
    }
    fn list_range(&mut self, name: String, start: u32, end: u32) -> wasmtime::Result<Vec<Vec<u8>>> {
        OpCtx::list_range(self, &name, start, end).map_err(trap)
    }
    fn list_trim(&mut self, name: String, keep: u32) -> wasmtime::Result<u32> {
        OpCtx::list_trim(self, &name, keep).map_err(trap)
    }
    fn clear(&mut self) -> wasmtime::Result<()> {
        OpCtx::clear(self).map_err(trap)
    }
}
