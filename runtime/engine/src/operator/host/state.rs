//! `eddy:operator/state` (`wit/state.wit`): the state calls of the event
//! being handled, on its key only, journaled for undo.

use crate::operator::wasm::bindings::eddy::operator::state;
use crate::state::Name;

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

    /// `state.map-get`: field `field` of map `name`, if any.
    pub fn map_get(&mut self, name: &str, field: &str) -> Result<Option<&[u8]>, HostError> {
        let i = self.current()?;
        let Some(name) = self.lookup(name) else {
            return Ok(None);
        };
        self.ttl_read(name);
        Ok(self.slots[i]
            .entity
            .map(name)
            .and_then(|m| m.get(field))
            .map(|v| &v[..]))
    }

    /// `state.map-set`: sets field `field` of map `name`.
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
        self.ttl_wrote(name);
        Ok(())
    }

    /// `state.map-delete`: deletes field `field` of map `name`; whether it existed.
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

    /// `state.map-entries`: every field of map `name`, in field order.
    pub fn map_entries(&mut self, name: &str) -> Result<Vec<(String, Vec<u8>)>, HostError> {
        let i = self.current()?;
        let Some(name) = self.lookup(name) else {
            return Ok(Vec::new());
        };
        self.ttl_read(name);
        Ok(self.slots[i]
            .entity
            .map(name)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
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

    /// `state.list-range`: items `start..end` of list `name`.
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
        let Some(list) = self.slots[i].entity.list(name) else {
            return Ok(Vec::new());
        };
        let end = (end as usize).min(list.len());
        let start = (start as usize).min(end);
        Ok(list.range(start..end).cloned().collect())
    }

    /// `state.list-trim`: keeps the last `keep` items of list `name`; how many were dropped.
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
        if n > 0 {
            self.ttl_wrote(name);
        }
        Ok(n as u32)
    }

    /// `state.clear`: deletes all state of the current key.
    pub fn clear(&mut self) -> Result<(), HostError> {
        let i = self.current()?;
        let slot = &mut self.slots[i];
        slot.entity.clear(&mut self.undo);
        // The journal keeps the whole old state.
        self.held += slot.size.saturating_sub(RECORD_HEADER);
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
