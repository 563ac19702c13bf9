//! Unit tests.
use super::*;

const NAMES: [&str; 7] = [
    "count",
    "seen",
    "hist",
    "new",
    "other",
    "fresh",
    "after-clear",
];

fn sample() -> Entity {
    let mut e = Entity::default();
    let mut j = Vec::new();
    e.set(0, b"3", &mut j);
    e.map_set(1, "a".into(), b"1".to_vec(), None, &mut j);
    e.map_set(1, "b".into(), b"2".to_vec(), None, &mut j);
    e.list_push(2, b"x".to_vec(), &mut j);
    e.list_push(2, b"y".to_vec(), &mut j);
    e
}

#[test]
fn encode_decode_round_trip() {
    let e = sample();
    let mut buf = Vec::new();
    let names: Vec<Box<str>> = NAMES.iter().map(|n| Box::from(*n)).collect();
    e.encode(&names, &mut buf);
    let mut intern = |n: &str| NAMES.iter().position(|m| *m == n).unwrap() as Name;
    assert_eq!(Entity::decode(&buf, &mut intern).unwrap(), e);
    assert!(Entity::decode(&buf[..buf.len() - 1], &mut intern).is_err());
    assert!(Entity::decode(&[9], &mut intern).is_err());
    // The version tag round-trips; a format 1 record (no tag) reads as 0.
    let mut tagged = Vec::new();
    e.encode_tagged(7, &names, &mut tagged);
    assert_eq!(
        Entity::decode_tagged(&tagged, &mut intern).unwrap(),
        (e.clone(), 7)
    );
    let body = &buf[5..buf.len() - 4];
    let mut v1 = vec![1u8];
    v1.extend_from_slice(body);
    assert_eq!(
        Entity::decode_tagged(&v1, &mut intern).unwrap(),
        (e.clone(), 0)
    );
    // A format 2 record (tag, no checksum) still decodes.
    let mut v2 = vec![2u8];
    v2.extend_from_slice(&7u32.to_le_bytes());
    v2.extend_from_slice(body);
    assert_eq!(
        Entity::decode_tagged(&v2, &mut intern).unwrap(),
        (e.clone(), 7)
    );
    // Encoding appends: a record written after other bytes has its own
    // checksum.
    let mut appended = b"prefix".to_vec();
    e.encode_tagged(7, &names, &mut appended);
    assert_eq!(&appended[6..], &tagged[..]);
}

/// One changed byte anywhere in a record is refused by its checksum,
/// never decoded into different state.
#[test]
fn a_changed_byte_is_refused_by_the_checksum() {
    let e = sample();
    let names: Vec<Box<str>> = NAMES.iter().map(|n| Box::from(*n)).collect();
    let mut buf = Vec::new();
    e.encode_tagged(3, &names, &mut buf);
    let mut intern = |n: &str| NAMES.iter().position(|m| *m == n).unwrap_or(0) as Name;
    for i in 1..buf.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = buf.clone();
            bad[i] ^= flip;
            let err = Entity::decode_tagged(&bad, &mut intern).unwrap_err();
            assert!(err.0.contains("checksum mismatch"), "byte {i}: {err}");
            assert!(check_record(&bad).is_err());
        }
    }
    assert!(check_record(&buf).is_ok());
    assert!(check_record(&[]).is_err());
    assert!(check_record(&[ENTITY_FORMAT, 0, 0]).is_err());
}

#[test]
fn undo_restores_every_kind_of_write() {
    let before = sample();
    let mut e = before.clone();
    let mut j = Vec::new();
    e.set(0, b"4", &mut j);
    e.set(3, b"n", &mut j);
    assert!(e.delete(0, &mut j));
    e.map_set(1, "a".into(), b"9".to_vec(), None, &mut j);
    e.map_set(4, "z".into(), b"9".to_vec(), None, &mut j);
    assert!(e.map_delete(1, "b", None, &mut j));
    e.list_push(2, b"z".to_vec(), &mut j);
    assert_eq!(
        e.list_trim(2, 1, &mut j, |_, _| Ok::<u64, ()>(0)).unwrap(),
        (2, 2 * item_size(b"x"))
    );
    e.list_push(5, b"f".to_vec(), &mut j);
    e.clear(&mut j);
    e.set(6, b"1", &mut j);
    assert_ne!(e, before);
    e.undo(&mut j);
    assert_eq!(e, before);
    assert!(j.is_empty());
}

/// An entity whose list 2 has `n` items `0..n` (as text).
fn long_list(n: u64) -> Entity {
    let mut e = Entity::default();
    let mut j = Vec::new();
    for i in 0..n {
        e.list_push(2, i.to_string().into_bytes(), &mut j);
    }
    e
}

fn names() -> Vec<Box<str>> {
    NAMES.iter().map(|n| Box::from(*n)).collect()
}

#[test]
fn a_list_spills_at_the_threshold_and_comes_back_below_a_quarter_of_it() {
    let names = names();
    // At the threshold: stays inline.
    let mut e = long_list(SPILL_ITEMS);
    let mut rows = Vec::new();
    e.hand_over(&names, &mut rows);
    assert!(rows.is_empty() && !e.has_spill());
    // One more: spills, every item a row to write from index 0.
    let mut j = Vec::new();
    e.list_push(2, b"last".to_vec(), &mut j);
    e.hand_over(&names, &mut rows);
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].drop_below, rows[0].first), (0, 0));
    assert_eq!(rows[0].items.len() as u64, SPILL_ITEMS + 1);
    assert!(e.has_spill());
    // Its record names where the list ends, not its items.
    let mut buf = Vec::new();
    e.encode_tagged(3, &names, &mut buf);
    assert_eq!(buf[0], SPILL_FORMAT);
    assert!(buf.len() < 100, "{} bytes", buf.len());
    let mut intern = |n: &str| NAMES.iter().position(|m| *m == n).unwrap() as Name;
    let (back, g) = Entity::decode_tagged(&buf, &mut intern).unwrap();
    assert_eq!(g, 3);
    let l = back.list(2).unwrap();
    assert_eq!(l.len(), SPILL_ITEMS + 1);
    assert_eq!(back.row_bytes(), e.spilled_bytes());
    // Once the reader sees them, the items leave memory.
    assert_eq!(e.drop_flushed(), e.spilled_bytes());
    assert_eq!(e.row_bytes(), e.spilled_bytes());
    // Trimmed far down: rows `0..n` are read for their size, and the list
    // comes back inline once they are back in memory.
    let mut asked = None;
    let (n, _) = e
        .list_trim(2, 10, &mut j, |a, b| {
            asked = Some((a, b));
            Ok::<u64, ()>(0)
        })
        .unwrap();
    assert_eq!(n, SPILL_ITEMS + 1 - 10);
    assert_eq!(asked, Some((0, SPILL_ITEMS + 1 - 10)));
    let want = e.unspill_candidates();
    assert_eq!(want, vec![(2, SPILL_ITEMS + 1 - 10..SPILL_ITEMS + 1)]);
    let items: Vec<Vec<u8>> = (SPILL_ITEMS - 9..SPILL_ITEMS)
        .map(|i| i.to_string().into_bytes())
        .chain([b"last".to_vec()])
        .collect();
    e.fill_front(2, items.clone());
    rows.clear();
    e.hand_over(&names, &mut rows);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].drop_below, u64::MAX, "all its rows go");
    assert!(!e.has_spill());
    let (_, mem) = e.list(2).unwrap().split(0, 100);
    assert_eq!(mem.map(<[u8]>::to_vec).collect::<Vec<_>>(), items);
    buf.clear();
    e.encode(&names, &mut buf);
    assert_eq!(buf[0], ENTITY_FORMAT);
}

#[test]
fn undo_restores_a_spilled_list_and_clear_deletes_its_rows() {
    let names = names();
    let mut e = long_list(SPILL_ITEMS + 1);
    let mut rows = Vec::new();
    e.hand_over(&names, &mut rows);
    e.drop_flushed();
    let before = e.clone();
    let mut j = Vec::new();
    e.list_push(2, b"a".to_vec(), &mut j);
    e.list_trim(2, 1, &mut j, |_, _| Ok::<u64, ()>(7)).unwrap();
    e.list_push(2, b"b".to_vec(), &mut j);
    e.clear(&mut j);
    assert!(e.is_empty());
    e.undo(&mut j);
    assert_eq!(e, before);
    // A kept clear deletes the rows at the next checkpoint.
    e.clear(&mut j);
    rows.clear();
    e.hand_over(&names, &mut rows);
    assert_eq!(rows.len(), 1);
    assert_eq!((&*rows[0].name, rows[0].drop_below), ("hist", u64::MAX));
    // A failed trim whose row read fails changes nothing.
    let mut e = before.clone();
    assert_eq!(e.list_trim(2, 0, &mut j, |_, _| Err("no")), Err("no"));
    assert_eq!(e, before);
}

/// An entity whose map 1 has `n` fields `f0..` with values `0..n`.
fn big_map(n: u64) -> Entity {
    let mut e = Entity::default();
    let mut j = Vec::new();
    for i in 0..n {
        e.map_set(1, format!("f{i}"), i.to_string().into_bytes(), None, &mut j);
    }
    e
}

#[test]
fn a_map_spills_past_the_threshold_its_record_keeps_only_its_counts() {
    let names = names();
    let mut rows = Vec::new();
    // At the threshold: stays inline.
    let mut e = big_map(SPILL_ITEMS);
    e.hand_over_maps(&names, &mut rows);
    assert!(rows.is_empty() && !e.has_spill());
    let mut e = big_map(SPILL_ITEMS + 1);
    let whole = e.clone();
    e.hand_over_maps(&names, &mut rows);
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].clear);
    assert_eq!(rows[0].fields.len() as u64, SPILL_ITEMS + 1);
    let mut buf = Vec::new();
    e.encode_tagged(7, &names, &mut buf);
    assert_eq!(buf[0], MAP_SPILL_FORMAT);
    assert!(buf.len() < 100, "{} bytes", buf.len());
    let mut intern = |n: &str| NAMES.iter().position(|m| *m == n).unwrap() as Name;
    let (back, g) = Entity::decode_tagged(&buf, &mut intern).unwrap();
    assert_eq!(g, 7);
    assert_eq!(back.map(1).unwrap().len(), SPILL_ITEMS + 1);
    assert_eq!(back.map(1).unwrap().field("f3"), Field::InRows);
    assert_eq!(back.row_bytes(), e.spilled_bytes());
    // Everything is counted: the record and the rows are what the whole
    // map took inline, less its framing.
    let mut inline = Vec::new();
    whole.encode(&names, &mut inline);
    let spilled = e.spilled_bytes() as usize;
    assert_eq!(inline.len() - RECORD_OVERHEAD - 8 - "seen".len(), spilled);
    // Once the reader sees them, the fields leave memory.
    assert_eq!(e.drop_flushed(), e.spilled_bytes());
    assert_eq!(e, back);
    // A damaged count section is refused.
    let n = buf.len();
    buf[n - 6] ^= 1;
    assert!(Entity::decode_tagged(&buf, &mut intern).is_err());
}

#[test]
fn undo_restores_a_spilled_map_and_clear_deletes_its_rows() {
    let names = names();
    let mut e = big_map(SPILL_ITEMS + 1);
    let mut rows = Vec::new();
    e.hand_over_maps(&names, &mut rows);
    e.drop_flushed();
    let before = e.clone();
    let mut j = Vec::new();
    e.map_set(1, "f1".into(), b"x".to_vec(), Some(1), &mut j);
    e.map_set(1, "new".into(), b"y".to_vec(), None, &mut j);
    assert!(e.map_delete(1, "f2", Some(1), &mut j));
    assert!(e.map_delete(1, "new", Some(1), &mut j));
    assert!(!e.map_delete(1, "gone", None, &mut j));
    assert_eq!(e.map(1).unwrap().len(), SPILL_ITEMS);
    e.clear(&mut j);
    assert!(e.is_empty());
    e.undo(&mut j);
    assert_eq!(e, before);
    // A kept clear deletes the rows at the next checkpoint.
    e.clear(&mut j);
    rows.clear();
    e.hand_over_maps(&names, &mut rows);
    assert_eq!(rows.len(), 1);
    assert_eq!((&*rows[0].name, rows[0].clear), ("seen", true));
}
