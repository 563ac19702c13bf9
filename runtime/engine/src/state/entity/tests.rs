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
    e.map_set(1, "a".into(), b"1".to_vec(), &mut j);
    e.map_set(1, "b".into(), b"2".to_vec(), &mut j);
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
    e.map_set(1, "a".into(), b"9".to_vec(), &mut j);
    e.map_set(4, "z".into(), b"9".to_vec(), &mut j);
    assert!(e.map_delete(1, "b", &mut j));
    e.list_push(2, b"z".to_vec(), &mut j);
    assert_eq!(e.list_trim(2, 1, &mut j), 2);
    e.list_push(5, b"f".to_vec(), &mut j);
    e.clear(&mut j);
    e.set(6, b"1", &mut j);
    assert_ne!(e, before);
    e.undo(&mut j);
    assert_eq!(e, before);
    assert!(j.is_empty());
}
