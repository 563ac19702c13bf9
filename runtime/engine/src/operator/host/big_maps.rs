//! Tests of spilled maps through the host context and a real store:
//! spilling and coming back inline, gets, sets and deletes of fields in
//! rows, range reads at the edges, undo of failed events, clearing a key,
//! eviction and the cache's byte count.

use super::cache::cost;
use super::*;
use crate::operator::Emits;
use crate::state::{Checkpoint, Store, SPILL_ITEMS, UNSPILL_ITEMS};

fn field(i: u64) -> String {
    format!("f{i:06}")
}

fn value(i: u64) -> Vec<u8> {
    format!("value-{i}").into_bytes()
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

fn set(c: &mut OpCtx, key: &str, i: u64, v: &[u8]) {
    event(c, key, true, |c| {
        c.map_set("m", field(i), v.to_vec()).unwrap()
    })
}

fn get(c: &mut OpCtx, key: &str, i: u64) -> Option<Vec<u8>> {
    event(c, key, true, |c| {
        c.map_get("m", &field(i)).unwrap().map(<[u8]>::to_vec)
    })
}

fn del(c: &mut OpCtx, key: &str, i: u64) -> bool {
    event(c, key, true, |c| c.map_delete("m", &field(i)).unwrap())
}

fn len(c: &mut OpCtx, key: &str) -> u32 {
    event(c, key, true, |c| c.map_len("m").unwrap())
}

fn range(c: &mut OpCtx, key: &str, from: &str, limit: u32) -> Vec<(String, Vec<u8>)> {
    event(c, key, true, |c| c.map_range("m", from, limit).unwrap())
}

fn entries(c: &mut OpCtx, key: &str) -> Vec<(String, Vec<u8>)> {
    event(c, key, true, |c| c.map_entries("m").unwrap())
}

/// Fields `r` with their values `value(i)`.
fn fields(r: impl Iterator<Item = u64>) -> Vec<(String, Vec<u8>)> {
    r.map(|i| (field(i), value(i))).collect()
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

/// The cached bytes add up to what the cached keys cost.
fn check_bytes(c: &OpCtx) {
    let recount: usize = c.slots.iter().filter(|s| !s.free).map(cost).sum();
    assert_eq!(recount, c.cache.bytes, "cache byte count");
}

/// The size of `key`'s state as the host counts it, and as stored (its
/// record's length plus its spilled fields).
fn sizes(c: &mut OpCtx, key: &str) -> (usize, usize) {
    let i = c.load(key).unwrap() as usize;
    let s = &c.slots[i];
    let mut buf = Vec::new();
    s.entity.encode_tagged(s.generation, &c.names, &mut buf);
    (s.size, buf.len() + s.entity.spilled_bytes() as usize)
}

#[test]
fn a_big_map_spills_is_read_by_field_and_range_and_comes_back_inline() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut c = ctx(&store);
    let n = 4 * SPILL_ITEMS;
    for i in 0..n {
        set(&mut c, "k", i, &value(i));
    }
    let whole = cost(&c.slots[0]);
    checkpoint(&mut c, &store, 1);
    // Spilled: every field is a row, none is left in memory.
    assert_eq!(store.map_field_count("op").unwrap(), n);
    assert_eq!(store.record("op", "k").unwrap().unwrap()[0], 5, "format 5");
    assert!(cost(&c.slots[0]) < 300, "{} bytes", cost(&c.slots[0]));
    assert!(whole > 10_000);
    check_bytes(&c);
    let (counted, stored) = sizes(&mut c, "k");
    assert_eq!(counted, stored);
    // Reads of single fields and the length.
    assert_eq!(len(&mut c, "k") as u64, n);
    assert_eq!(get(&mut c, "k", 0), Some(value(0)));
    assert_eq!(get(&mut c, "k", n - 1), Some(value(n - 1)));
    assert_eq!(get(&mut c, "k", n), None);
    // Ranges at the edges.
    assert_eq!(range(&mut c, "k", "", 3), fields(0..3));
    assert_eq!(range(&mut c, "k", &field(7), 2), fields(7..9));
    // From a field that is not there: the next one on.
    assert_eq!(
        range(&mut c, "k", &format!("{}x", field(7)), 2),
        fields(8..10)
    );
    assert_eq!(range(&mut c, "k", &field(n - 2), 10), fields(n - 2..n));
    assert_eq!(range(&mut c, "k", &field(n), 10), fields(0..0));
    assert_eq!(range(&mut c, "k", "zzz", 10), fields(0..0));
    assert_eq!(range(&mut c, "k", "", 0), fields(0..0));
    assert_eq!(range(&mut c, "k", "", u32::MAX), fields(0..n));
    assert_eq!(entries(&mut c, "k"), fields(0..n));
    // Changes in memory overlay the rows: a replaced field, a deleted one,
    // a new one between rows and one after them.
    let before = sizes(&mut c, "k").0;
    set(&mut c, "k", 5, b"new");
    assert!(del(&mut c, "k", 6));
    assert!(!del(&mut c, "k", 6));
    set(&mut c, "k", n + 5, &value(n + 5));
    event(&mut c, "k", true, |c| {
        c.map_set("m", format!("{}a", field(8)), b"between".to_vec())
            .unwrap()
    });
    assert_eq!(len(&mut c, "k") as u64, n + 1);
    assert_eq!(get(&mut c, "k", 5), Some(b"new".to_vec()));
    assert_eq!(get(&mut c, "k", 6), None);
    let mut want = fields(4..6);
    want[1].1 = b"new".to_vec();
    want.extend(fields(7..9));
    want.push((format!("{}a", field(8)), b"between".to_vec()));
    want.extend(fields(9..11));
    assert_eq!(range(&mut c, "k", &field(4), 7), want);
    // The limit counts what is returned, not the rows skipped.
    assert_eq!(range(&mut c, "k", &field(6), 1), fields(7..8));
    assert_eq!(
        range(&mut c, "k", &field(n - 1), 5),
        fields([n - 1, n + 5].into_iter())
    );
    let delta = value(5).len() - 3 + (8 + field(6).len() + value(6).len());
    let added = (8 + field(n + 5).len() + value(n + 5).len()) + (8 + field(8).len() + 1 + 7);
    assert_eq!(sizes(&mut c, "k").0, before - delta + added);
    check_bytes(&c);
    checkpoint(&mut c, &store, 2);
    assert_eq!(store.map_field_count("op").unwrap(), n + 1);
    let (counted, stored) = sizes(&mut c, "k");
    assert_eq!(counted, stored);
    // Evicted and read back: the same map.
    let all = entries(&mut c, "k");
    assert!(c.evict(usize::MAX) > 0);
    assert_eq!(c.cache_stats().keys, 0);
    assert_eq!(len(&mut c, "k") as u64, n + 1);
    assert_eq!(get(&mut c, "k", 5), Some(b"new".to_vec()));
    assert_eq!(entries(&mut c, "k"), all);
    assert_eq!(sizes(&mut c, "k").0, counted);
    // Under the threshold again: back inline at the next checkpoint, its
    // rows deleted.
    let keep = UNSPILL_ITEMS;
    event(&mut c, "k", true, |c| {
        for (f, _) in &all[keep as usize..] {
            assert!(c.map_delete("m", f).unwrap());
        }
    });
    checkpoint(&mut c, &store, 3);
    assert_eq!(store.map_field_count("op").unwrap(), 0);
    assert_eq!(store.record("op", "k").unwrap().unwrap()[0], 3, "inline");
    let want = all[..keep as usize].to_vec();
    assert_eq!(entries(&mut c, "k"), want);
    let (counted, stored) = sizes(&mut c, "k");
    assert_eq!(counted, stored);
    check_bytes(&c);
    // And a fresh context reading the store sees the same.
    let mut fresh = ctx(&store);
    assert_eq!(entries(&mut fresh, "k"), want);
    assert_eq!(len(&mut fresh, "k") as u64, keep);
}

#[test]
fn a_map_over_the_byte_threshold_spills_and_an_emptied_one_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut c = ctx(&store);
    // Few fields, but big ones.
    let big = vec![b'x'; 20_000];
    for i in 0..4 {
        set(&mut c, "k", i, &big);
    }
    checkpoint(&mut c, &store, 1);
    assert_eq!(store.map_field_count("op").unwrap(), 4);
    assert_eq!(get(&mut c, "k", 3), Some(big.clone()));
    // Every field deleted: the map goes at the next checkpoint, and with
    // it the key.
    event(&mut c, "k", true, |c| {
        for i in 0..4 {
            assert!(c.map_delete_dropping("m", &field(i)).unwrap());
        }
    });
    assert_eq!(len(&mut c, "k"), 0);
    assert_eq!(range(&mut c, "k", "", 10), fields(0..0));
    checkpoint(&mut c, &store, 2);
    assert_eq!(store.map_field_count("op").unwrap(), 0);
    assert_eq!(store.record("op", "k").unwrap(), None);
    check_bytes(&c);
}

#[test]
fn a_failed_event_leaves_no_trace_in_a_spilled_map() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut c = ctx(&store);
    let n = 2 * SPILL_ITEMS;
    for i in 0..n {
        set(&mut c, "k", i, &value(i));
    }
    checkpoint(&mut c, &store, 1);
    set(&mut c, "k", 1, b"kept");
    let size = sizes(&mut c, "k").0;
    let bytes = c.cache.bytes;
    // Sets (new, over a row, over a change), deletes, then fails.
    event(&mut c, "k", false, |c| {
        c.map_set("m", field(n + 1), b"x".to_vec()).unwrap();
        c.map_set("m", field(0), b"y".to_vec()).unwrap();
        c.map_set("m", field(1), b"z".to_vec()).unwrap();
        assert!(c.map_delete("m", &field(2)).unwrap());
        assert!(c.map_delete("m", &field(1)).unwrap());
        assert_eq!(c.map_len("m").unwrap() as u64, n - 1);
        assert_eq!(c.map_get("m", &field(0)).unwrap(), Some(&b"y"[..]));
    });
    // A failed clear too.
    event(&mut c, "k", false, |c| c.clear().unwrap());
    assert_eq!(len(&mut c, "k") as u64, n);
    assert_eq!(get(&mut c, "k", 0), Some(value(0)));
    assert_eq!(get(&mut c, "k", 1), Some(b"kept".to_vec()));
    assert_eq!(get(&mut c, "k", 2), Some(value(2)));
    assert_eq!(get(&mut c, "k", n + 1), None);
    assert_eq!(sizes(&mut c, "k").0, size);
    assert_eq!(c.cache.bytes, bytes);
    checkpoint(&mut c, &store, 2);
    assert_eq!(store.map_field_count("op").unwrap(), n);
    let mut fresh = ctx(&store);
    let mut want = fields(0..n);
    want[1].1 = b"kept".to_vec();
    assert_eq!(entries(&mut fresh, "k"), want);
}

#[test]
fn clearing_a_key_deletes_its_spilled_map_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut c = ctx(&store);
    let n = SPILL_ITEMS + 1;
    for k in ["a", "b"] {
        for i in 0..n {
            set(&mut c, k, i, &value(i));
        }
    }
    checkpoint(&mut c, &store, 1);
    assert_eq!(store.map_field_count("op").unwrap(), 2 * n);
    // `a` is cleared; `b` is cleared and starts a new map at once.
    event(&mut c, "a", true, |c| c.clear().unwrap());
    event(&mut c, "b", true, |c| {
        c.clear().unwrap();
        c.map_set("m", field(0), b"new".to_vec()).unwrap();
    });
    // Nothing of the old rows shows through.
    assert_eq!(get(&mut c, "b", 1), None);
    assert_eq!(len(&mut c, "a"), 0);
    checkpoint(&mut c, &store, 2);
    assert_eq!(store.map_field_count("op").unwrap(), 0);
    assert_eq!(store.record("op", "a").unwrap(), None);
    assert_eq!(
        range(&mut c, "b", "", 10),
        vec![(field(0), b"new".to_vec())]
    );
    // The new map spills again, with no old row in the way.
    for i in 1..n {
        set(&mut c, "b", i, &value(i));
    }
    checkpoint(&mut c, &store, 3);
    assert_eq!(store.map_field_count("op").unwrap(), n);
    let mut fresh = ctx(&store);
    assert_eq!(
        range(&mut fresh, "b", "", 2),
        vec![(field(0), b"new".to_vec()), (field(1), value(1))]
    );
    assert_eq!(len(&mut fresh, "a"), 0);
    check_bytes(&c);
}

#[test]
fn the_rows_of_a_map_are_its_own_when_another_name_starts_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut c = ctx(&store);
    let n = SPILL_ITEMS + 1;
    for name in ["m", "m0", "m\0"] {
        event(&mut c, "k", true, |c| {
            for i in 0..n {
                c.map_set(name, field(i), value(i)).unwrap();
            }
        });
    }
    checkpoint(&mut c, &store, 1);
    assert_eq!(store.map_field_count("op").unwrap(), 3 * n);
    assert_eq!(range(&mut c, "k", &field(n - 1), 10), fields(n - 1..n));
    // Map `m` emptied: its rows go, the others' stay.
    event(&mut c, "k", true, |c| {
        for i in 0..n {
            assert!(c.map_delete("m", &field(i)).unwrap());
        }
    });
    checkpoint(&mut c, &store, 2);
    assert_eq!(store.map_field_count("op").unwrap(), 2 * n);
    let mut fresh = ctx(&store);
    assert_eq!(len(&mut fresh, "k"), 0);
    for name in ["m0", "m\0"] {
        let got = event(&mut fresh, "k", true, |c| c.map_entries(name).unwrap());
        assert_eq!(got, fields(0..n), "{name:?}");
    }
}

#[test]
fn map_changes_handed_over_stay_in_memory_until_the_reader_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut c = ctx(&store);
    let n = SPILL_ITEMS + 10;
    for i in 0..n {
        set(&mut c, "k", i, &value(i));
    }
    // Handed over, not committed yet: the reader has no row, so the fields
    // must still be served from memory.
    let mut cp = Checkpoint {
        seq: 1,
        ..Default::default()
    };
    c.take_dirty(1, cp.writes.part());
    c.renew_reader(store.reader().unwrap(), store.durable_seq());
    assert_eq!(range(&mut c, "k", "", 3), fields(0..3));
    assert_eq!(get(&mut c, "k", 9), Some(value(9)));
    // Changed again before the commit: kept through the drop.
    set(&mut c, "k", 9, b"again");
    assert_eq!(c.evict(usize::MAX), 0);
    store.commit(&cp).unwrap();
    c.renew_reader(store.reader().unwrap(), store.durable_seq());
    assert!(
        c.slots[0].entity.row_bytes() > 0,
        "now served by the reader"
    );
    assert_eq!(range(&mut c, "k", "", 3), fields(0..3));
    assert_eq!(get(&mut c, "k", 9), Some(b"again".to_vec()));
    check_bytes(&c);
    checkpoint(&mut c, &store, 2);
    let mut fresh = ctx(&store);
    assert_eq!(get(&mut fresh, "k", 9), Some(b"again".to_vec()));
    assert_eq!(len(&mut fresh, "k") as u64, n);
}

#[test]
fn with_spilling_off_a_big_map_stays_inline() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut c = OpCtx::new(
        "op".into(),
        Some(store.reader().unwrap()),
        Limits {
            spill: false,
            ..Limits::default()
        },
    );
    let n = 2 * SPILL_ITEMS;
    for i in 0..n {
        set(&mut c, "k", i, &value(i));
    }
    checkpoint(&mut c, &store, 1);
    assert_eq!(store.map_field_count("op").unwrap(), 0);
    assert_eq!(store.record("op", "k").unwrap().unwrap()[0], 3, "inline");
    let mut fresh = ctx(&store);
    assert_eq!(entries(&mut fresh, "k"), fields(0..n));
    // A key spilled before (spilling on) keeps its rows right: its
    // changes are still written.
    for i in 0..n {
        set(&mut fresh, "s", i, &value(i));
    }
    checkpoint(&mut fresh, &store, 2);
    assert_eq!(store.map_field_count("op").unwrap(), n);
    c.renew_reader(store.reader().unwrap(), store.durable_seq());
    set(&mut c, "s", n, &value(n));
    assert!(del(&mut c, "s", 0));
    checkpoint(&mut c, &store, 3);
    let mut again = ctx(&store);
    assert_eq!(entries(&mut again, "s"), fields(1..n + 1));
}

#[test]
fn a_spilled_map_past_its_time_to_live_loses_its_rows() {
    use crate::config::{Refresh, TtlSpec};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut c = ctx(&store);
    c.set_ttl(&[TtlSpec {
        name: "m".into(),
        after: 10,
        refresh: Refresh::Write,
    }]);
    let n = SPILL_ITEMS + 1;
    c.set_event_time(Some(0));
    for i in 0..n {
        set(&mut c, "k", i, &value(i));
    }
    checkpoint(&mut c, &store, 1);
    assert_eq!(store.map_field_count("op").unwrap(), n);
    c.set_watermark(11);
    assert_eq!(c.expire_due(11), 1);
    assert_eq!(len(&mut c, "k"), 0);
    assert_eq!(get(&mut c, "k", 0), None);
    check_bytes(&c);
    checkpoint(&mut c, &store, 2);
    assert_eq!(store.map_field_count("op").unwrap(), 0);
    assert_eq!(store.record("op", "k").unwrap(), None);
}

#[test]
fn a_snapshot_copies_the_rows_of_spilled_maps() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut c = ctx(&store);
    let n = SPILL_ITEMS + 1;
    for i in 0..n {
        set(&mut c, "k", i, &value(i));
    }
    checkpoint(&mut c, &store, 1);
    let dest = dir.path().join("copy");
    let report = store.snapshot(&dest).unwrap();
    assert_eq!(report.map_fields, n);
    let copy = Store::open(&dest).unwrap();
    assert_eq!(copy.map_fields("op", "k", "m").unwrap(), fields(0..n));
    let mut fresh = ctx(&copy);
    assert_eq!(len(&mut fresh, "k") as u64, n);
    assert_eq!(get(&mut fresh, "k", n - 1), Some(value(n - 1)));
}

#[test]
fn a_migration_reads_and_rewrites_a_spilled_map_through_host_calls() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut c = ctx(&store);
    let n = 2 * SPILL_ITEMS;
    for i in 0..n {
        set(&mut c, "k", i, &value(i));
    }
    checkpoint(&mut c, &store, 1);
    assert!(c.evict(usize::MAX) > 0);
    // A new version: the key, read back with its fields in rows, is
    // stale; its migration pages through the map and rewrites each field.
    c.set_generation(1);
    assert_eq!(c.stale("k").unwrap(), Some(0));
    c.begin_migration("k").unwrap();
    let mut start = String::new();
    let mut seen = 0;
    loop {
        let page = c.map_range("m", &start, 100).unwrap();
        let Some((last, _)) = page.last() else { break };
        start = format!("{last}\0");
        for (f, v) in page {
            let mut v = v.clone();
            v.extend_from_slice(b"!");
            c.map_set("m", f, v).unwrap();
            seen += 1;
        }
    }
    c.finish_migration(true);
    assert_eq!(seen, n);
    checkpoint(&mut c, &store, 2);
    let mut fresh = ctx(&store);
    fresh.set_generation(1);
    assert_eq!(
        fresh.stale("k").unwrap(),
        None,
        "tagged with the new version"
    );
    let want: Vec<(String, Vec<u8>)> = fields(0..n)
        .into_iter()
        .map(|(f, mut v)| {
            v.extend_from_slice(b"!");
            (f, v)
        })
        .collect();
    assert_eq!(entries(&mut fresh, "k"), want);
    assert_eq!(store.map_field_count("op").unwrap(), n);
}

#[test]
fn the_marks_of_deleted_fields_count_in_the_cache_until_their_rows_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut c = ctx(&store);
    let n = 4 * SPILL_ITEMS;
    for i in 0..n {
        set(&mut c, "k", i, &value(i));
    }
    checkpoint(&mut c, &store, 1);
    let spilled = c.cache.bytes;
    check_bytes(&c);
    // Each deleted field leaves a mark in memory: its name and the 8 bytes
    // of a stored field's lengths.
    let mark = 8 + field(0).len();
    let deleted = 100;
    for i in 0..deleted {
        assert!(del(&mut c, "k", i));
    }
    assert_eq!(
        c.slots[0].entity.map_mark_bytes() as usize,
        deleted as usize * mark
    );
    assert_eq!(c.cache.bytes, spilled + deleted as usize * mark);
    check_bytes(&c);
    // A failed event that deletes more (and sets a deleted field again)
    // leaves the count as it was.
    let before = c.cache.bytes;
    event(&mut c, "k", false, |c| {
        assert!(c.map_delete("m", &field(deleted)).unwrap());
        c.map_set("m", field(0), b"back".to_vec()).unwrap();
    });
    assert_eq!(c.cache.bytes, before);
    check_bytes(&c);
    // Setting a deleted field again turns its mark into a value.
    set(&mut c, "k", 0, b"back");
    assert_eq!(
        c.slots[0].entity.map_mark_bytes() as usize,
        (deleted as usize - 1) * mark
    );
    check_bytes(&c);
    // Handed over, not yet visible: the marks stay counted.
    let mut cp = Checkpoint {
        seq: 2,
        durable: false,
        ..Default::default()
    };
    c.take_dirty(2, cp.writes.part());
    c.renew_reader(store.reader().unwrap(), store.durable_seq());
    assert_eq!(
        c.slots[0].entity.map_mark_bytes() as usize,
        (deleted as usize - 1) * mark
    );
    check_bytes(&c);
    // Visible: the marks (and the value set) are let go and uncounted.
    store.commit(&cp).unwrap();
    c.renew_reader(store.reader().unwrap(), store.durable_seq());
    assert_eq!(c.slots[0].entity.map_mark_bytes(), 0);
    check_bytes(&c);
    assert_eq!(c.cache.bytes, spilled);
    assert_eq!(store.map_field_count("op").unwrap(), n - deleted + 1);
    assert_eq!(len(&mut c, "k") as u64, n - deleted + 1);
    assert_eq!(get(&mut c, "k", 1), None);
    assert_eq!(get(&mut c, "k", 0), Some(b"back".to_vec()));
}
