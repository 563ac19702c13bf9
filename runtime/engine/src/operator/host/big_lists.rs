//! Tests of spilled lists through the host context and a real store:
//! spilling and coming back inline, range reads at the edges, trims, undo
//! of failed events, clearing a key, eviction and the cache's byte count.

use super::cache::cost;
use super::*;
use crate::operator::Emits;
use crate::state::{Checkpoint, Store, SPILL_ITEMS, UNSPILL_ITEMS};

fn item(i: u64) -> Vec<u8> {
    format!("item-{i}").into_bytes()
}

fn ctx(store: &Store) -> OpCtx {
    OpCtx::new(
        "op".into(),
        Some(store.reader().unwrap()),
        Limits::default(),
    )
}

/// One event of `key` running `f`, kept when `ok`.
fn event<T>(c: &mut OpCtx, key: &str, ok: bool, f: impl FnOnce(&mut OpCtx) -> T) -> T {
    c.begin(key).unwrap();
    let out = f(c);
    c.finish(ok, &mut Emits::default());
    out
}

fn push(c: &mut OpCtx, key: &str, i: u64) -> u32 {
    event(c, key, true, |c| c.list_push("h", item(i)).unwrap())
}

fn range(c: &mut OpCtx, key: &str, a: u32, b: u32) -> Vec<Vec<u8>> {
    event(c, key, true, |c| c.list_range("h", a, b).unwrap())
}

fn len(c: &mut OpCtx, key: &str) -> u32 {
    event(c, key, true, |c| c.list_len("h").unwrap())
}

fn items(r: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    r.map(item).collect()
}

/// Hands the changes over as checkpoint `seq`, commits it and renews
/// the reader, as a worker does.
fn checkpoint(c: &mut OpCtx, store: &Store, seq: u64) {
    let mut cp = Checkpoint {
        seq,
        durable: false,
        ..Default::default()
    };
    c.take_dirty(seq, cp.writes.part());
    store.commit(&cp).unwrap();
    c.renew_reader(store.reader().unwrap(), store.durable_seq());
}

/// The cached bytes add up to what the cached keys cost, and the key's
/// size is its record's length plus its spilled items.
fn check_bytes(c: &OpCtx) {
    let recount: usize = c.slots.iter().filter(|s| !s.free).map(cost).sum();
    assert_eq!(recount, c.cache.bytes, "cache byte count");
}

/// The size of `key`'s state as the host counts it, and as stored.
fn sizes(c: &mut OpCtx, key: &str) -> (usize, usize) {
    let i = c.load(key).unwrap() as usize;
    let s = &c.slots[i];
    let mut buf = Vec::new();
    s.entity.encode_tagged(s.generation, &c.names, &mut buf);
    (s.size, buf.len() + s.entity.spilled_bytes() as usize)
}

#[test]
fn a_big_list_spills_is_read_by_range_and_comes_back_inline() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut c = ctx(&store);
    let n = 4 * SPILL_ITEMS;
    for i in 0..n {
        assert_eq!(push(&mut c, "k", i), i as u32 + 1);
    }
    let whole = cost(&c.slots[0]);
    checkpoint(&mut c, &store, 1);
    // Spilled: every item is a row, and none is left in memory.
    assert_eq!(store.list_item_count("op").unwrap(), n);
    assert_eq!(store.record("op", "k").unwrap().unwrap()[0], 4, "format 4");
    assert!(cost(&c.slots[0]) < 300, "{} bytes", cost(&c.slots[0]));
    assert!(whole > 10_000);
    check_bytes(&c);
    let (counted, stored) = sizes(&mut c, "k");
    assert_eq!(counted, stored);
    // Range reads at the edges, clamped as before.
    let n32 = n as u32;
    assert_eq!(len(&mut c, "k"), n32);
    assert_eq!(range(&mut c, "k", 0, 1), items(0..1));
    assert_eq!(range(&mut c, "k", n32 - 1, n32), items(n - 1..n));
    assert_eq!(range(&mut c, "k", n32 - 3, n32 + 10), items(n - 3..n));
    assert_eq!(range(&mut c, "k", n32, n32 + 10), items(0..0));
    assert_eq!(range(&mut c, "k", 7, 3), items(0..0));
    assert_eq!(range(&mut c, "k", 0, u32::MAX), items(0..n));
    // New items are in memory; a range spans rows and memory.
    for i in n..n + 5 {
        push(&mut c, "k", i);
    }
    assert_eq!(range(&mut c, "k", n32 - 2, n32 + 2), items(n - 2..n + 2));
    // Trimming drops rows and counts their size.
    let before = sizes(&mut c, "k").0;
    let dropped = event(&mut c, "k", true, |c| c.list_trim("h", 200).unwrap());
    assert_eq!(dropped as u64, n + 5 - 200);
    let dropped_bytes: usize = (0..n + 5 - 200).map(|i| 4 + item(i).len()).sum();
    assert_eq!(sizes(&mut c, "k").0, before - dropped_bytes);
    assert_eq!(range(&mut c, "k", 0, 1), items(n + 5 - 200..n + 5 - 199));
    assert_eq!(range(&mut c, "k", 0, 300), items(n + 5 - 200..n + 5));
    check_bytes(&c);
    checkpoint(&mut c, &store, 2);
    assert_eq!(
        store.list_item_count("op").unwrap(),
        200,
        "rows below the start are deleted"
    );
    let (counted, stored) = sizes(&mut c, "k");
    assert_eq!(counted, stored);
    // Evicted and read back: the same list.
    assert!(c.evict(usize::MAX) > 0);
    assert_eq!(c.cache_stats().keys, 0);
    assert_eq!(len(&mut c, "k"), 200);
    assert_eq!(range(&mut c, "k", 0, 300), items(n + 5 - 200..n + 5));
    assert_eq!(sizes(&mut c, "k").0, counted);
    // Under the threshold again: back inline at the next checkpoint, its
    // rows deleted.
    let keep = UNSPILL_ITEMS as u32;
    event(&mut c, "k", true, |c| c.list_trim("h", keep).unwrap());
    checkpoint(&mut c, &store, 3);
    assert_eq!(store.list_item_count("op").unwrap(), 0);
    assert_eq!(store.record("op", "k").unwrap().unwrap()[0], 3, "inline");
    let want = items(n + 5 - keep as u64..n + 5);
    assert_eq!(range(&mut c, "k", 0, 1000), want);
    let (counted, stored) = sizes(&mut c, "k");
    assert_eq!(counted, stored);
    check_bytes(&c);
    // And a fresh context reading the store sees the same.
    let mut fresh = ctx(&store);
    assert_eq!(range(&mut fresh, "k", 0, 1000), want);
}

#[test]
fn a_failed_event_leaves_no_trace_in_a_spilled_list() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut c = ctx(&store);
    let n = 2 * SPILL_ITEMS;
    for i in 0..n {
        push(&mut c, "k", i);
    }
    checkpoint(&mut c, &store, 1);
    for i in n..n + 3 {
        push(&mut c, "k", i);
    }
    let size = sizes(&mut c, "k").0;
    let bytes = c.cache.bytes;
    // Pushes, trims into the rows and memory, then fails.
    event(&mut c, "k", false, |c| {
        c.list_push("h", b"x".to_vec()).unwrap();
        assert_eq!(c.list_trim("h", 2).unwrap() as u64, n + 2);
        c.list_push("h", b"y".to_vec()).unwrap();
        assert_eq!(c.list_range("h", 0, 10).unwrap().len(), 3);
    });
    // A failed clear too.
    event(&mut c, "k", false, |c| c.clear().unwrap());
    assert_eq!(len(&mut c, "k") as u64, n + 3);
    assert_eq!(range(&mut c, "k", 0, 2), items(0..2));
    assert_eq!(
        range(&mut c, "k", n as u32 - 1, n as u32 + 5),
        items(n - 1..n + 3)
    );
    assert_eq!(sizes(&mut c, "k").0, size);
    assert_eq!(c.cache.bytes, bytes);
    checkpoint(&mut c, &store, 2);
    assert_eq!(store.list_item_count("op").unwrap(), n + 3);
    let mut fresh = ctx(&store);
    assert_eq!(range(&mut fresh, "k", 0, u32::MAX), items(0..n + 3));
}

#[test]
fn clearing_a_key_deletes_its_spilled_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut c = ctx(&store);
    let n = SPILL_ITEMS + 1;
    for k in ["a", "b"] {
        for i in 0..n {
            push(&mut c, k, i);
        }
    }
    checkpoint(&mut c, &store, 1);
    assert_eq!(store.list_item_count("op").unwrap(), 2 * n);
    // `a` is cleared; `b` is cleared and starts a new list at once.
    event(&mut c, "a", true, |c| c.clear().unwrap());
    event(&mut c, "b", true, |c| {
        c.clear().unwrap();
        c.list_push("h", b"new".to_vec()).unwrap();
    });
    checkpoint(&mut c, &store, 2);
    assert_eq!(store.list_item_count("op").unwrap(), 0);
    assert_eq!(store.record("op", "a").unwrap(), None);
    assert_eq!(range(&mut c, "b", 0, 10), vec![b"new".to_vec()]);
    // The new list spills again from index 0, with no old row in the way.
    for i in 1..n {
        push(&mut c, "b", i);
    }
    checkpoint(&mut c, &store, 3);
    assert_eq!(store.list_item_count("op").unwrap(), n);
    let mut fresh = ctx(&store);
    assert_eq!(range(&mut fresh, "b", 0, 2), vec![b"new".to_vec(), item(1)]);
    assert_eq!(len(&mut fresh, "a"), 0);
    check_bytes(&c);
}

#[test]
fn items_handed_over_stay_in_memory_until_the_reader_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut c = ctx(&store);
    let n = SPILL_ITEMS + 10;
    for i in 0..n {
        push(&mut c, "k", i);
    }
    // Handed over, not committed yet: the reader has no row, so the items
    // must still be served from memory.
    let mut cp = Checkpoint {
        seq: 1,
        ..Default::default()
    };
    c.take_dirty(1, cp.writes.part());
    c.renew_reader(store.reader().unwrap(), store.durable_seq());
    assert_eq!(range(&mut c, "k", 0, 3), items(0..3));
    assert_eq!(c.evict(usize::MAX), 0);
    store.commit(&cp).unwrap();
    c.renew_reader(store.reader().unwrap(), store.durable_seq());
    assert!(
        c.slots[0].entity.row_bytes() > 0,
        "now served by the reader"
    );
    assert_eq!(range(&mut c, "k", 0, 3), items(0..3));
    check_bytes(&c);
}
