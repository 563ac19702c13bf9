//! Maps too big to keep whole in memory: spilled to rows of their own.
//!
//! A spilled map's fields are rows `(operator, key, map name, field)` (see
//! [`crate::state::Store::commit`]); its record keeps only its number of
//! fields and their size ([`MapSpill`]). In memory the entity holds only
//! the fields changed since their rows were last visible to the worker's
//! reader (`changes`: a value set, or `None` for a field deleted), so a
//! field is read from `changes` first, else from its row. As with lists
//! (see the `spill` module), three moments move fields between memory
//! and rows, all outside an event:
//!
//! - at a checkpoint barrier ([`Entity::hand_over_maps`]) a map over
//!   [`SPILL_ITEMS`] fields or [`SPILL_BYTES`] bytes spills, and the
//!   changes not yet handed over become rows to write and delete (a copy:
//!   the entity keeps them until the checkpoint is visible to its
//!   reader); a spilled map back under [`UNSPILL_ITEMS`] fields has its
//!   rows read back ([`Entity::map_unspill`]) and goes inline, its rows
//!   deleted;
//! - once that checkpoint is visible to the worker's reader
//!   ([`Entity::drop_flushed`]) the entity lets the written changes go;
//! - a key read from the store holds no change.
//!
//! Within an event, sets and deletes change `changes` and the counts,
//! journaled, so a failed event leaves nothing behind in memory or in
//! rows.

use std::collections::BTreeMap;

use super::{find, Entity, Name, Undo, SPILL_BYTES, SPILL_ITEMS, UNSPILL_ITEMS};

/// Size of a map field as stored: its name, its value and their two
/// 4-byte lengths.
pub fn field_size(field: &str, value: &[u8]) -> u64 {
    8 + field.len() as u64 + value.len() as u64
}

/// The counts of a spilled map and its fields changed in memory.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MapSpill {
    /// Number of live fields (in rows or memory).
    pub len: u64,
    /// Size as stored of the live fields (`field_size` summed).
    pub bytes: u64,
    /// The part of `bytes` held in memory (the fields set in `changes`).
    pub mem_bytes: u64,
    /// Memory of the marks of deleted fields in `changes` (not part of
    /// `bytes`: the field is gone), counted as a field with an empty value
    /// (the size as stored of the name alone) until the mark is let go.
    pub mark_bytes: u64,
    /// Fields changed since their rows were visible to the reader: the
    /// new value (`None`: deleted), and whether the change was handed
    /// over at a barrier.
    pub(super) changes: BTreeMap<String, Change>,
}

/// A field of a spilled map changed in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Its value (`None`: deleted).
    pub value: Option<Vec<u8>>,
    /// Handed over at a barrier (a row to write or delete); dropped once
    /// the reader sees that checkpoint.
    pub flushed: bool,
}

/// A map of an [`Entity`]: whole in memory, or spilled.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Map {
    /// The fields, sorted (`map-entries` is ordered), when not spilled.
    pub(super) fields: BTreeMap<String, Vec<u8>>,
    /// Set when the map is spilled (then `fields` is empty).
    pub(super) spill: Option<Box<MapSpill>>,
}

/// What memory knows of one field of a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    /// Its value (`None`: no such field).
    Here(Option<&'a [u8]>),
    /// The map is spilled and the field unchanged since: its row says.
    InRows,
}

impl Map {
    /// Number of fields.
    pub fn len(&self) -> u64 {
        match &self.spill {
            None => self.fields.len() as u64,
            Some(s) => s.len,
        }
    }

    /// Whether the map has no field.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counts of a spilled map.
    pub fn spill(&self) -> Option<&MapSpill> {
        self.spill.as_deref()
    }

    /// The fields of a map that is not spilled (empty when spilled).
    pub fn fields(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.fields
    }

    /// What memory knows of `field`.
    pub fn field(&self, field: &str) -> Field<'_> {
        match &self.spill {
            None => Field::Here(self.fields.get(field).map(|v| &v[..])),
            Some(s) => match s.changes.get(field) {
                Some(c) => Field::Here(c.value.as_deref()),
                None => Field::InRows,
            },
        }
    }

    /// The changes of a spilled map from field `from` on, in field order
    /// (`None`: the field was deleted); empty when not spilled.
    pub fn changes_from<'a>(
        &'a self,
        from: &'a str,
    ) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        self.spill
            .iter()
            .flat_map(move |s| {
                s.changes
                    .range::<str, _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
            })
            .map(|(f, c)| (f.as_str(), c.value.as_deref()))
    }
}

/// The rows one map of one key needs written at a checkpoint: first all
/// its rows are deleted when `clear`, then each field is written (`None`:
/// its row deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRows {
    /// The map's name.
    pub name: Box<str>,
    /// Delete every row of the map first.
    pub clear: bool,
    /// Fields to write or delete, in field order.
    pub fields: Vec<(String, Option<Vec<u8>>)>,
}

impl Entity {
    /// Whether the key has maps, or rows of removed spilled ones to delete
    /// (only such keys need [`Entity::hand_over_maps`]).
    pub fn has_maps(&self) -> bool {
        self.extra
            .as_ref()
            .is_some_and(|x| !x.maps.is_empty() || !x.gone_maps.is_empty())
    }

    /// The most items or fields a list or map of the key has.
    pub fn longest(&self) -> u64 {
        let x = self.x();
        let lists = x.lists.iter().map(|(_, l)| l.len());
        lists
            .chain(x.maps.iter().map(|(_, m)| m.len()))
            .max()
            .unwrap_or(0)
    }

    /// Sets `field` of map `name`. `old` is the length of the field's
    /// value before, when it had one (the caller read it from the row when
    /// the map is spilled and memory does not know it: see [`Map::field`]);
    /// a map not spilled knows it itself.
    pub fn map_set(
        &mut self,
        name: Name,
        field: String,
        value: Vec<u8>,
        old: Option<usize>,
        undo: &mut Vec<Undo>,
    ) {
        let maps = &mut self.x_mut().maps;
        let idx = match find(maps, name) {
            Some(idx) => idx,
            None => {
                maps.push((name, Map::default()));
                undo.push(Undo::MapCreated {
                    idx: maps.len() - 1,
                });
                maps.len() - 1
            }
        };
        let map = &mut maps[idx].1;
        let Some(s) = &mut map.spill else {
            let old = map.fields.insert(field.clone(), value);
            undo.push(Undo::MapFieldSet { idx, field, old });
            return;
        };
        let counts = (s.len, s.bytes, s.mem_bytes, s.mark_bytes);
        let new = field_size(&field, &value);
        let before = s.changes.get(&field).cloned();
        match &before {
            Some(Change { value: Some(v), .. }) => s.mem_bytes -= field_size(&field, v),
            Some(Change { value: None, .. }) => s.mark_bytes -= field_size(&field, &[]),
            None => {}
        }
        match old {
            Some(n) => s.bytes -= field_size(&field, &[]) + n as u64,
            None => s.len += 1,
        }
        s.bytes += new;
        s.mem_bytes += new;
        s.changes.insert(
            field.clone(),
            Change {
                value: Some(value),
                flushed: false,
            },
        );
        undo.push(Undo::MapSpillChanged {
            idx,
            field,
            old: before,
            counts,
        });
    }

    /// Removes `field` of map `name`; whether it existed. `old` is as for
    /// [`Entity::map_set`].
    pub fn map_delete(
        &mut self,
        name: Name,
        field: &str,
        old: Option<usize>,
        undo: &mut Vec<Undo>,
    ) -> bool {
        let Some(idx) = find(&self.x().maps, name) else {
            return false;
        };
        let map = &mut self.x_mut().maps[idx].1;
        let Some(s) = &mut map.spill else {
            return match map.fields.remove_entry(field) {
                Some((field, old)) => {
                    undo.push(Undo::MapFieldRemoved { idx, field, old });
                    true
                }
                None => false,
            };
        };
        let Some(n) = old else { return false };
        let counts = (s.len, s.bytes, s.mem_bytes, s.mark_bytes);
        let before = s.changes.get(field).cloned();
        if let Some(Change { value: Some(v), .. }) = &before {
            s.mem_bytes -= field_size(field, v);
        }
        s.len -= 1;
        s.bytes -= field_size(field, &[]) + n as u64;
        s.mark_bytes += field_size(field, &[]);
        s.changes.insert(
            field.to_string(),
            Change {
                value: None,
                flushed: false,
            },
        );
        undo.push(Undo::MapSpillChanged {
            idx,
            field: field.to_string(),
            old: before,
            counts,
        });
        true
    }

    /// Size as stored of the spilled maps' fields held only in rows.
    pub(super) fn map_row_bytes(&self) -> u64 {
        match &self.extra {
            None => 0,
            Some(x) => x
                .maps
                .iter()
                .filter_map(|(_, m)| m.spill.as_ref().map(|s| s.bytes - s.mem_bytes))
                .sum(),
        }
    }

    /// Memory of the marks of deleted fields that spilled maps hold
    /// until the checkpoint deleting their rows is visible (see
    /// [`MapSpill::mark_bytes`]).
    pub fn map_mark_bytes(&self) -> u64 {
        match &self.extra {
            None => 0,
            Some(x) => x
                .maps
                .iter()
                .filter_map(|(_, m)| m.spill.as_ref().map(|s| s.mark_bytes))
                .sum(),
        }
    }

    /// Size as stored of the spilled maps' fields (in rows or memory).
    pub(super) fn map_spilled_bytes(&self) -> u64 {
        match &self.extra {
            None => 0,
            Some(x) => x
                .maps
                .iter()
                .filter_map(|(_, m)| m.spill.as_ref().map(|s| s.bytes))
                .sum(),
        }
    }

    /// The spilled maps small enough to go back inline once their rows
    /// are read ([`Entity::map_unspill`]).
    pub fn map_unspill_candidates(&self) -> Vec<Name> {
        let Some(x) = &self.extra else {
            return Vec::new();
        };
        x.maps
            .iter()
            .filter_map(|(n, m)| {
                let s = m.spill.as_ref()?;
                (s.len <= UNSPILL_ITEMS && s.bytes <= SPILL_BYTES / 4).then_some(*n)
            })
            .collect()
    }

    /// Brings spilled map `name` back inline, outside any event: `rows`
    /// are all its rows (read from the store), overlaid with its changes.
    /// Its rows are deleted at the next checkpoint; a map left with no
    /// field is removed. Nothing happens when the rows do not add up to
    /// the map's count of fields (the map stays spilled).
    pub fn map_unspill(&mut self, name: Name, rows: Vec<(String, Vec<u8>)>) {
        let Some(x) = &mut self.extra else { return };
        let Some(i) = find(&x.maps, name) else { return };
        let map = &mut x.maps[i].1;
        let Some(s) = map.spill.take() else { return };
        let mut fields: BTreeMap<String, Vec<u8>> = rows.into_iter().collect();
        for (f, c) in s.changes.iter() {
            match &c.value {
                Some(v) => fields.insert(f.clone(), v.clone()),
                None => fields.remove(f),
            };
        }
        if fields.len() as u64 != s.len {
            map.spill = Some(s);
            return;
        }
        map.fields = fields;
        x.gone_maps.push(name);
        if map.fields.is_empty() {
            x.maps.remove(i);
        }
    }

    /// Hands the maps over at a checkpoint barrier, outside any event:
    /// spills maps over the threshold and appends to `out` the rows to
    /// delete and to write (copies of the changes not yet handed over,
    /// which stay in memory until [`Entity::drop_flushed`]). Call it
    /// before encoding the record.
    pub fn hand_over_maps(&mut self, names: &[Box<str>], out: &mut Vec<MapRows>) {
        let Some(x) = &mut self.extra else { return };
        let name = |n: Name| -> Box<str> { names[n as usize].clone() };
        for n in x.gone_maps.drain(..) {
            out.push(MapRows {
                name: name(n),
                clear: true,
                fields: Vec::new(),
            });
        }
        for (n, map) in &mut x.maps {
            if map.spill.is_none() {
                if map.fields.len() as u64 <= SPILL_ITEMS {
                    let bytes: u64 = map.fields.iter().map(|(f, v)| field_size(f, v)).sum();
                    if bytes <= SPILL_BYTES {
                        continue;
                    }
                }
                let bytes: u64 = map.fields.iter().map(|(f, v)| field_size(f, v)).sum();
                let len = map.fields.len() as u64;
                let changes = std::mem::take(&mut map.fields)
                    .into_iter()
                    .map(|(f, v)| {
                        (
                            f,
                            Change {
                                value: Some(v),
                                flushed: false,
                            },
                        )
                    })
                    .collect();
                map.spill = Some(Box::new(MapSpill {
                    len,
                    bytes,
                    mem_bytes: bytes,
                    mark_bytes: 0,
                    changes,
                }));
            }
            let s = map.spill.as_mut().expect("spilled");
            let fields: Vec<(String, Option<Vec<u8>>)> = s
                .changes
                .iter_mut()
                .filter(|(_, c)| !c.flushed)
                .map(|(f, c)| {
                    c.flushed = true;
                    (f.clone(), c.value.clone())
                })
                .collect();
            if !fields.is_empty() {
                out.push(MapRows {
                    name: name(*n),
                    clear: false,
                    fields,
                });
            }
        }
    }

    /// Lets go of the spilled maps' changes already handed over; returns
    /// the memory they were counted for (their size as stored; a deleted
    /// field's mark, [`MapSpill::mark_bytes`]).
    pub(super) fn drop_flushed_maps(&mut self) -> u64 {
        let Some(x) = &mut self.extra else { return 0 };
        let mut freed = 0;
        for (_, map) in &mut x.maps {
            let Some(s) = &mut map.spill else { continue };
            s.changes.retain(|f, c| {
                if !c.flushed {
                    return true;
                }
                match &c.value {
                    Some(v) => {
                        freed += field_size(f, v);
                        s.mem_bytes -= field_size(f, v);
                    }
                    None => {
                        freed += field_size(f, &[]);
                        s.mark_bytes -= field_size(f, &[]);
                    }
                }
                false
            });
        }
        freed
    }
}
