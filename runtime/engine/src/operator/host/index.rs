//! The context's lookup structures: key → cache slot ([`Index`]) and the
//! interned state names.

use std::hash::BuildHasher;

use crate::state::Name;

use super::{HostError, Slot};

/// `a == b`, for short strings (keys, names) without a call to `memcmp`:
/// two overlapping word compares up to 16 bytes.
#[inline]
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
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
pub(super) fn prefetch<T>(v: &T) {
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
pub(super) struct Index {
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
    pub(super) fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key.as_bytes())
    }

    #[inline]
    fn mask(&self) -> usize {
        self.table.len() - 1
    }

    #[inline]
    pub(super) fn prefetch(&self, h: u64) {
        prefetch(&self.table[h as usize & self.mask()]);
    }

    /// The first slot whose hash tag matches `h` (most likely the key's).
    #[inline]
    pub(super) fn candidate(&self, h: u64) -> Option<u32> {
        self.find(h, |_| true)
    }

    /// The slot whose key has hash `h` and satisfies `is`.
    #[inline]
    pub(super) fn find(&self, h: u64, is: impl Fn(u32) -> bool) -> Option<u32> {
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
    pub(super) fn insert(&mut self, h: u64, slot: u32, slots: &[Slot]) {
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

    /// Removes slot `slot`, present under hash `h` (its key is still in
    /// `slots`). The entries after it in its run move back to close the
    /// gap (backward-shift deletion: no tombstones, so lookups stay as
    /// short as if the key had never been there).
    pub(super) fn remove(&mut self, h: u64, slot: u32, slots: &[Slot]) {
        let mask = self.mask();
        let want = (h >> 32) << 32 | (slot as u64 + 1);
        let mut hole = h as usize & mask;
        while self.table[hole] != want {
            debug_assert!(self.table[hole] != 0, "slot {slot} is not in the index");
            if self.table[hole] == 0 {
                return;
            }
            hole = (hole + 1) & mask;
        }
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let e = self.table[j];
            if e == 0 {
                break;
            }
            let s = (e as u32) - 1;
            let home = self.hash(&slots[s as usize].key) as usize & mask;
            // `e` may fill the hole unless its home lies cyclically in
            // (hole, j]: then it would be found before the hole anyway.
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.table[hole] = e;
                hole = j;
            }
        }
        self.table[hole] = 0;
        self.len -= 1;
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
pub(super) fn intern(names: &mut Vec<Box<str>>, name: &str) -> Name {
    match names.iter().position(|n| &**n == name) {
        Some(i) => i as Name,
        None => {
            names.push(name.into());
            (names.len() - 1) as Name
        }
    }
}

/// The id of `name` in `names`, if it was ever added.
pub(super) fn lookup(names: &[Box<str>], name: &[u8]) -> Option<Name> {
    names
        .iter()
        .position(|n| n.as_bytes() == name)
        .map(|i| i as Name)
}

/// [`intern`] for a name given as bytes: a known name is found by its
/// bytes; a new one must be UTF-8.
pub(super) fn intern_bytes(names: &mut Vec<Box<str>>, name: &[u8]) -> Result<Name, HostError> {
    match names.iter().position(|n| n.as_bytes() == name) {
        Some(i) => Ok(i as Name),
        None => Ok(intern(
            names,
            std::str::from_utf8(name).map_err(|_| HostError::NotUtf8("state name"))?,
        )),
    }
}
