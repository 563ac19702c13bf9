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

use std::collections::{BTreeMap, VecDeque};

use thiserror::Error;

/// Format version of an encoded [`Entity`] record.
const ENTITY_FORMAT: u8 = 1;

/// The state of one key for one operator.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Entity {
    /// Single values by name; a handful per operator, so a vector scanned
    /// linearly beats a hash map.
    values: Vec<(Box<str>, Vec<u8>)>,
    /// Maps by name; fields kept sorted so `map-entries` is ordered.
    maps: Vec<(Box<str>, BTreeMap<String, Vec<u8>>)>,
    /// Lists by name, oldest item first; a deque so trimming is cheap.
    lists: Vec<(Box<str>, VecDeque<Vec<u8>>)>,
}

/// One step of the undo journal: how to reverse one mutation.
#[derive(Debug)]
pub enum Undo {
    ValueReplaced {
        idx: usize,
        old: Vec<u8>,
    },
    ValueInserted {
        idx: usize,
    },
    ValueRemoved {
        idx: usize,
        name: Box<str>,
        old: Vec<u8>,
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
    Cleared {
        old: Box<Entity>,
    },
}

/// A stored record that cannot be decoded.
#[derive(Debug, Error)]
#[error("corrupt state record: {0}")]
pub struct CorruptRecord(pub &'static str);

fn find<T>(v: &[(Box<str>, T)], name: &str) -> Option<usize> {
    v.iter().position(|(n, _)| &**n == name)
}

impl Entity {
    /// Whether the key has no state at all (its record can be deleted).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.maps.is_empty() && self.lists.is_empty()
    }

    /// The value named `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        find(&self.values, name).map(|i| &self.values[i].1[..])
    }

    /// Sets the value named `name`.
    pub fn set(&mut self, name: &str, value: Vec<u8>, undo: &mut Vec<Undo>) {
        match find(&self.values, name) {
            Some(idx) => {
                let old = std::mem::replace(&mut self.values[idx].1, value);
                undo.push(Undo::ValueReplaced { idx, old });
            }
            None => {
                self.values.push((name.into(), value));
                undo.push(Undo::ValueInserted {
                    idx: self.values.len() - 1,
                });
            }
        }
    }

    /// Deletes the value named `name`; whether it existed.
    pub fn delete(&mut self, name: &str, undo: &mut Vec<Undo>) -> bool {
        match find(&self.values, name) {
            Some(idx) => {
                let (name, old) = self.values.remove(idx);
                undo.push(Undo::ValueRemoved { idx, name, old });
                true
            }
            None => false,
        }
    }

    /// The map named `name`.
    pub fn map(&self, name: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        find(&self.maps, name).map(|i| &self.maps[i].1)
    }

    /// Sets `field` of map `name`.
    pub fn map_set(&mut self, name: &str, field: String, value: Vec<u8>, undo: &mut Vec<Undo>) {
        let idx = match find(&self.maps, name) {
            Some(idx) => idx,
            None => {
                self.maps.push((name.into(), BTreeMap::new()));
                undo.push(Undo::MapCreated {
                    idx: self.maps.len() - 1,
                });
                self.maps.len() - 1
            }
        };
        let old = self.maps[idx].1.insert(field.clone(), value);
        undo.push(Undo::MapFieldSet { idx, field, old });
    }

    /// Removes `field` of map `name`; whether it existed.
    pub fn map_delete(&mut self, name: &str, field: &str, undo: &mut Vec<Undo>) -> bool {
        let Some(idx) = find(&self.maps, name) else {
            return false;
        };
        match self.maps[idx].1.remove_entry(field) {
            Some((field, old)) => {
                undo.push(Undo::MapFieldRemoved { idx, field, old });
                true
            }
            None => false,
        }
    }

    /// The list named `name`.
    pub fn list(&self, name: &str) -> Option<&VecDeque<Vec<u8>>> {
        find(&self.lists, name).map(|i| &self.lists[i].1)
    }

    /// Appends to list `name`; returns the new length.
    pub fn list_push(&mut self, name: &str, item: Vec<u8>, undo: &mut Vec<Undo>) -> usize {
        let idx = match find(&self.lists, name) {
            Some(idx) => idx,
            None => {
                self.lists.push((name.into(), VecDeque::new()));
                undo.push(Undo::ListCreated {
                    idx: self.lists.len() - 1,
                });
                self.lists.len() - 1
            }
        };
        self.lists[idx].1.push_back(item);
        undo.push(Undo::ListPushed { idx });
        self.lists[idx].1.len()
    }

    /// Keeps the newest `keep` items of list `name`; returns how many went.
    pub fn list_trim(&mut self, name: &str, keep: usize, undo: &mut Vec<Undo>) -> usize {
        let Some(idx) = find(&self.lists, name) else {
            return 0;
        };
        let list = &mut self.lists[idx].1;
        let n = list.len().saturating_sub(keep);
        if n == 0 {
            return 0;
        }
        let dropped: Vec<Vec<u8>> = list.drain(..n).collect();
        undo.push(Undo::ListTrimmed { idx, dropped });
        n
    }

    /// Removes everything.
    pub fn clear(&mut self, undo: &mut Vec<Undo>) {
        if !self.is_empty() {
            let old = std::mem::take(self);
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
                    self.maps.remove(idx);
                }
                Undo::MapFieldSet { idx, field, old } => {
                    let map = &mut self.maps[idx].1;
                    match old {
                        Some(old) => map.insert(field, old),
                        None => map.remove(&field),
                    };
                }
                Undo::MapFieldRemoved { idx, field, old } => {
                    self.maps[idx].1.insert(field, old);
                }
                Undo::ListCreated { idx } => {
                    self.lists.remove(idx);
                }
                Undo::ListPushed { idx } => {
                    self.lists[idx].1.pop_back();
                }
                Undo::ListTrimmed { idx, dropped } => {
                    let list = &mut self.lists[idx].1;
                    for item in dropped.into_iter().rev() {
                        list.push_front(item);
                    }
                }
                Undo::Cleared { old } => *self = *old,
            }
        }
    }

    /// Encodes the state as one record:
    /// `format u8`, then values, maps and lists, each a `u32` count followed
    /// by length-prefixed (`u32` little endian) names and byte strings.
    pub fn encode(&self, out: &mut Vec<u8>) {
        fn bytes(out: &mut Vec<u8>, b: &[u8]) {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        out.push(ENTITY_FORMAT);
        out.extend_from_slice(&(self.values.len() as u32).to_le_bytes());
        for (name, v) in &self.values {
            bytes(out, name.as_bytes());
            bytes(out, v);
        }
        out.extend_from_slice(&(self.maps.len() as u32).to_le_bytes());
        for (name, m) in &self.maps {
            bytes(out, name.as_bytes());
            out.extend_from_slice(&(m.len() as u32).to_le_bytes());
            for (f, v) in m {
                bytes(out, f.as_bytes());
                bytes(out, v);
            }
        }
        out.extend_from_slice(&(self.lists.len() as u32).to_le_bytes());
        for (name, l) in &self.lists {
            bytes(out, name.as_bytes());
            out.extend_from_slice(&(l.len() as u32).to_le_bytes());
            for v in l {
                bytes(out, v);
            }
        }
    }

    /// Decodes a record written by [`Entity::encode`].
    pub fn decode(mut input: &[u8]) -> Result<Entity, CorruptRecord> {
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
        let format = take(&mut input, 1)?[0];
        if format != ENTITY_FORMAT {
            return Err(CorruptRecord("unknown record format"));
        }
        let mut e = Entity::default();
        for _ in 0..u32_(&mut input)? {
            let name = string(&mut input)?;
            e.values.push((name.into(), bytes(&mut input)?));
        }
        for _ in 0..u32_(&mut input)? {
            let name = string(&mut input)?;
            let mut m = BTreeMap::new();
            for _ in 0..u32_(&mut input)? {
                let f = string(&mut input)?;
                m.insert(f, bytes(&mut input)?);
            }
            e.maps.push((name.into(), m));
        }
        for _ in 0..u32_(&mut input)? {
            let name = string(&mut input)?;
            let n = u32_(&mut input)?;
            let mut l = VecDeque::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                l.push_back(bytes(&mut input)?);
            }
            e.lists.push((name.into(), l));
        }
        if !input.is_empty() {
            return Err(CorruptRecord("trailing bytes after the record"));
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entity {
        let mut e = Entity::default();
        let mut j = Vec::new();
        e.set("count", b"3".to_vec(), &mut j);
        e.map_set("seen", "a".into(), b"1".to_vec(), &mut j);
        e.map_set("seen", "b".into(), b"2".to_vec(), &mut j);
        e.list_push("hist", b"x".to_vec(), &mut j);
        e.list_push("hist", b"y".to_vec(), &mut j);
        e
    }

    #[test]
    fn encode_decode_round_trip() {
        let e = sample();
        let mut buf = Vec::new();
        e.encode(&mut buf);
        assert_eq!(Entity::decode(&buf).unwrap(), e);
        assert!(Entity::decode(&buf[..buf.len() - 1]).is_err());
        assert!(Entity::decode(&[9]).is_err());
    }

    #[test]
    fn undo_restores_every_kind_of_write() {
        let before = sample();
        let mut e = before.clone();
        let mut j = Vec::new();
        e.set("count", b"4".to_vec(), &mut j);
        e.set("new", b"n".to_vec(), &mut j);
        assert!(e.delete("count", &mut j));
        e.map_set("seen", "a".into(), b"9".to_vec(), &mut j);
        e.map_set("other", "z".into(), b"9".to_vec(), &mut j);
        assert!(e.map_delete("seen", "b", &mut j));
        e.list_push("hist", b"z".to_vec(), &mut j);
        assert_eq!(e.list_trim("hist", 1, &mut j), 2);
        e.list_push("fresh", b"f".to_vec(), &mut j);
        e.clear(&mut j);
        e.set("after-clear", b"1".to_vec(), &mut j);
        assert_ne!(e, before);
        e.undo(&mut j);
        assert_eq!(e, before);
        assert!(j.is_empty());
    }
}
