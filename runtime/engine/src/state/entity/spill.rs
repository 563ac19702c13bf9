//! Lists too big to keep whole in memory: spilled to rows of their own.
//!
//! A spilled list's items are numbered from 0 (its first push) and stored
//! as rows `(operator, key, list name, index)` (see
//! [`crate::state::Store::commit`]). Its [`Spill`] says which items are
//! live (`start..end`), which the entity holds in memory (`mem..end`) and
//! which it has handed over to be written (`..flushed`). Three moments
//! move items between memory and rows, all outside an event:
//!
//! - at a checkpoint barrier ([`Entity::hand_over`]) a list over
//!   [`SPILL_ITEMS`] items or [`SPILL_BYTES`] bytes spills, and the items
//!   of spilled lists not yet written become rows to write (a copy: the
//!   entity keeps them until the checkpoint is visible to its reader);
//!   a spilled list back under [`UNSPILL_ITEMS`] items whose items are all
//!   in memory goes back inline, and its rows are deleted;
//! - once that checkpoint is visible to the worker's reader
//!   ([`Entity::drop_flushed`]) the entity lets the written items go;
//! - a key read from the store holds none of its spilled items.
//!
//! Within an event, pushes append in memory and trims move `start` (the
//! rows below it are deleted at the next checkpoint), both journaled, so a
//! failed event leaves nothing behind in memory or in rows.

use std::collections::VecDeque;

use super::{Entity, Name};

/// A list spills at a checkpoint when it has more items than this...
pub const SPILL_ITEMS: u64 = 512;
/// ... or takes more bytes than this as stored.
pub const SPILL_BYTES: u64 = 64 << 10;
/// A spilled list goes back inline when it has at most this many items
/// (and is under a quarter of [`SPILL_BYTES`]): far enough below the
/// spill threshold that a list hovering around it does not flip at every
/// checkpoint.
pub const UNSPILL_ITEMS: u64 = SPILL_ITEMS / 4;

/// Size of a list item as stored: its bytes and a 4-byte length.
pub fn item_size(item: &[u8]) -> u64 {
    4 + item.len() as u64
}

/// Where the items of a spilled list are (absolute indexes, the row
/// numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spill {
    /// The oldest live item: rows below it are deleted at the next
    /// checkpoint.
    pub start: u64,
    /// The first item held in memory (`items[0]`); items `start..mem` are
    /// only in rows. Never below `start`.
    pub mem: u64,
    /// Items below this were handed over at a checkpoint barrier; the
    /// ones from here on are written at the next.
    pub flushed: u64,
    /// Size as stored of the live items (`item_size` summed).
    pub bytes: u64,
    /// The part of `bytes` held in memory.
    pub mem_bytes: u64,
}

/// A list of an [`Entity`]: whole in memory, or spilled.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct List {
    /// Items in memory, oldest first (a deque so trimming is cheap): the
    /// whole list, or when spilled the items from `spill.mem` on.
    pub(super) items: VecDeque<Vec<u8>>,
    /// Set when the list is spilled.
    pub(super) spill: Option<Spill>,
}

impl List {
    /// Number of items.
    pub fn len(&self) -> u64 {
        match &self.spill {
            None => self.items.len() as u64,
            Some(s) => s.mem + self.items.len() as u64 - s.start,
        }
    }

    /// Whether the list has no item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the spilled items are, when the list is spilled.
    pub fn spill(&self) -> Option<&Spill> {
        self.spill.as_ref()
    }

    /// Items `from..to` (positions in the list, clamped to its length),
    /// split in the rows to read (absolute indexes; empty when all are in
    /// memory) and the items in memory that follow them.
    pub fn split(&self, from: u64, to: u64) -> (std::ops::Range<u64>, impl Iterator<Item = &[u8]>) {
        let to = to.min(self.len());
        let from = from.min(to);
        let (start, mem) = self.spill.map_or((0, 0), |s| (s.start, s.mem));
        let (a, b) = (start + from, start + to);
        let rows = a.min(mem)..b.min(mem);
        let m = (a.max(mem) - mem) as usize..(b.max(mem) - mem) as usize;
        (rows, self.items.range(m).map(|v| &v[..]))
    }
}

/// The rows one list of one key needs written at a checkpoint: first the
/// rows below `drop_below` are deleted, then `items` are inserted from
/// index `first` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRows {
    /// The list's name.
    pub name: Box<str>,
    /// Rows below this index are deleted (`u64::MAX`: all of them).
    pub drop_below: u64,
    /// Index of `items[0]`.
    pub first: u64,
    /// Items to insert.
    pub items: Vec<Vec<u8>>,
}

impl Entity {
    /// Whether the key has lists, or rows of removed spilled ones to
    /// delete (only such keys need [`Entity::hand_over`]).
    pub fn has_lists(&self) -> bool {
        self.extra
            .as_ref()
            .is_some_and(|x| !x.lists.is_empty() || !x.gone.is_empty())
    }

    /// Whether the key has spilled lists or maps, or rows of removed ones
    /// to delete.
    pub fn has_spill(&self) -> bool {
        self.extra.as_ref().is_some_and(|x| {
            !x.gone.is_empty()
                || !x.gone_maps.is_empty()
                || x.lists.iter().any(|(_, l)| l.spill.is_some())
                || x.maps.iter().any(|(_, m)| m.spill.is_some())
        })
    }

    /// Size as stored of the spilled list items and map fields held only
    /// in rows (not in memory).
    pub fn row_bytes(&self) -> u64 {
        match &self.extra {
            None => 0,
            Some(x) => {
                x.lists
                    .iter()
                    .filter_map(|(_, l)| l.spill.map(|s| s.bytes - s.mem_bytes))
                    .sum::<u64>()
                    + self.map_row_bytes()
            }
        }
    }

    /// Size as stored of the spilled lists' items and spilled maps'
    /// fields (in rows or memory).
    pub fn spilled_bytes(&self) -> u64 {
        match &self.extra {
            None => 0,
            Some(x) => {
                x.lists
                    .iter()
                    .filter_map(|(_, l)| l.spill.map(|s| s.bytes))
                    .sum::<u64>()
                    + self.map_spilled_bytes()
            }
        }
    }

    /// The spilled lists that may go back inline once their items in rows
    /// are back in memory: `(name, rows to read)`.
    pub fn unspill_candidates(&self) -> Vec<(Name, std::ops::Range<u64>)> {
        let Some(x) = &self.extra else {
            return Vec::new();
        };
        x.lists
            .iter()
            .filter_map(|(n, l)| {
                let s = l.spill?;
                (l.len() <= UNSPILL_ITEMS && s.bytes <= SPILL_BYTES / 4 && s.start < s.mem)
                    .then_some((*n, s.start..s.mem))
            })
            .collect()
    }

    /// Puts the rows `start..mem` of spilled list `name` (read from the
    /// store, all of them) back in memory, outside any event.
    pub fn fill_front(&mut self, name: Name, rows: Vec<Vec<u8>>) {
        let Some(x) = &mut self.extra else { return };
        let Some(i) = super::find(&x.lists, name) else {
            return;
        };
        let list = &mut x.lists[i].1;
        let Some(s) = &mut list.spill else { return };
        if rows.len() as u64 != s.mem - s.start {
            return;
        }
        for item in rows.into_iter().rev() {
            s.mem_bytes += item_size(&item);
            list.items.push_front(item);
        }
        s.mem = s.start;
    }

    /// Hands the spilled lists over at a checkpoint barrier, outside any
    /// event: spills lists over the threshold, brings small ones whose
    /// items are all in memory back inline, and appends to `out` the rows
    /// to delete and to write (copies of the items not yet handed over,
    /// which stay in memory until [`Entity::drop_flushed`]). Call it
    /// before encoding the record, which then names where each spilled
    /// list ends.
    pub fn hand_over(&mut self, names: &[Box<str>], out: &mut Vec<ListRows>) {
        let Some(x) = &mut self.extra else { return };
        let name = |n: Name| -> Box<str> { names[n as usize].clone() };
        for n in x.gone.drain(..) {
            out.push(ListRows {
                name: name(n),
                drop_below: u64::MAX,
                first: 0,
                items: Vec::new(),
            });
        }
        for (n, list) in &mut x.lists {
            match list.spill {
                Some(s)
                    if s.mem == s.start
                        && list.len() <= UNSPILL_ITEMS
                        && s.bytes <= SPILL_BYTES / 4 =>
                {
                    list.spill = None;
                    out.push(ListRows {
                        name: name(*n),
                        drop_below: u64::MAX,
                        first: 0,
                        items: Vec::new(),
                    });
                    continue;
                }
                Some(_) => {}
                None => {
                    let bytes: u64 = list.items.iter().map(|i| item_size(i)).sum();
                    if list.len() <= SPILL_ITEMS && bytes <= SPILL_BYTES {
                        continue;
                    }
                    list.spill = Some(Spill {
                        start: 0,
                        mem: 0,
                        flushed: 0,
                        bytes,
                        mem_bytes: bytes,
                    });
                }
            }
            let s = list.spill.as_mut().expect("spilled");
            let end = s.mem + list.items.len() as u64;
            let first = s.flushed.max(s.mem);
            out.push(ListRows {
                name: name(*n),
                drop_below: s.start,
                first,
                items: list
                    .items
                    .range((first - s.mem) as usize..)
                    .cloned()
                    .collect(),
            });
            s.flushed = end;
        }
    }

    /// Lets go of the spilled items and map changes already handed over
    /// (once the checkpoint that took them is visible to the reader, which
    /// then serves them); returns their size as stored.
    pub fn drop_flushed(&mut self) -> u64 {
        let mut freed = self.drop_flushed_maps();
        let Some(x) = &mut self.extra else {
            return freed;
        };
        for (_, list) in &mut x.lists {
            let Some(s) = &mut list.spill else { continue };
            let n = s.flushed.min(s.mem + list.items.len() as u64);
            if n <= s.mem {
                continue;
            }
            let gone: u64 = list
                .items
                .drain(..(n - s.mem) as usize)
                .map(|i| item_size(&i))
                .sum();
            s.mem = n;
            s.mem_bytes -= gone;
            freed += gone;
        }
        freed
    }
}
