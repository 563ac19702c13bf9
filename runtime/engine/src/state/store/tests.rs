//! Unit tests of the state directory.

use super::*;
use rustix::fs::Mode;
use sha2::{Digest, Sha256};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o777
}

/// Writes `value` under metadata `name` directly, as format 1 did
/// (no checksum), or overwrites what is there.
fn put_raw_meta(path: &Path, name: &str, value: &[u8]) {
    let db = Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META).unwrap().insert(name, value).unwrap();
    txn.commit().unwrap();
}

fn raw_meta(path: &Path, name: &str) -> Vec<u8> {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(META).unwrap();
    let v = t.get(name).unwrap().unwrap().value().to_vec();
    v
}

#[test]
fn a_new_state_directory_is_private_and_an_open_one_refuses_other_writers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/state");
    let store = Store::open(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    store.keep_component(&component_hash(b"x"), b"x").unwrap();
    assert_eq!(mode(&dir.join(COMPONENTS_DIR)), 0o700);
    drop(store);
    // No temporary database is left behind.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [COMPONENTS_DIR, DB_FILE]);

    for (path, m) in [
        (dir.clone(), 0o777),
        (dir.clone(), 0o770),
        (dir.join(COMPONENTS_DIR), 0o722),
    ] {
        set_mode(&path, m);
        let e = Store::open(&dir).err().expect("refused").to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("writable by"), "{e}");
        assert!(e.contains("chmod 700"), "{e}");
        set_mode(&path, 0o700);
    }
    // A components folder that is a symbolic link is refused too.
    std::fs::rename(dir.join(COMPONENTS_DIR), tmp.path().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("elsewhere"), dir.join(COMPONENTS_DIR)).unwrap();
    let e = Store::open(&dir).err().expect("refused").to_string();
    assert!(e.contains("symbolic link"), "{e}");
}

#[test]
fn kept_components_are_checked_against_their_name() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let bytes = b"\0asm component bytes".to_vec();
    let hash = component_hash(&bytes);
    assert_eq!(hash.len(), VERSION_ID_LEN);
    assert_eq!(hash, format!("{:x}", Sha256::digest(&bytes)));
    let path = store.keep_component(&hash, &bytes).unwrap();
    assert_eq!(store.load_component(&hash).unwrap(), bytes);

    // Replaced by other bytes: refused, naming the file.
    std::fs::write(&path, b"\0asm an impostor").unwrap();
    let e = store.load_component(&hash).unwrap_err().to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("was replaced or damaged"), "{e}");
    // Keeping the component again repairs it.
    store.keep_component(&hash, &bytes).unwrap();
    assert_eq!(store.load_component(&hash).unwrap(), bytes);

    // A symbolic link to the right bytes, a FIFO, a missing file, a
    // name that is not a content hash: refused.
    let elsewhere = tmp.path().join("elsewhere.wasm");
    std::fs::write(&elsewhere, &bytes).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    let e = store.load_component(&hash).unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");
    std::fs::remove_file(&path).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let e = store.load_component(&hash).unwrap_err().to_string();
    assert!(e.contains("not a regular file (a FIFO)"), "{e}");
    std::fs::remove_file(&path).unwrap();
    let e = store.load_component(&hash).unwrap_err().to_string();
    assert!(e.contains("No such file"), "{e}");
    // A version kept by an older eddy (FxHash names): said so.
    let legacy = legacy_component_hash(&bytes[..]);
    std::fs::write(store.component_path(&legacy), &bytes).unwrap();
    let e = store.load_component(&legacy).unwrap_err().to_string();
    assert!(e.contains("kept by an older eddy"), "{e}");
    let upper = hash.to_uppercase();
    for bad in [
        "../../etc/passwd",
        "0123456789abcdeX",
        "0123",
        &hash[..17],
        upper.as_str(),
    ] {
        let e = store.load_component(bad).unwrap_err().to_string();
        assert!(
            e.contains(&format!("`{bad}` is not a version id (the SHA-256 of the component, 64 hex digits, or the first 16 of them recorded by an older eddy)")),
            "{e}"
        );
    }
}

#[test]
fn a_component_kept_under_the_short_id_of_an_older_eddy_still_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let bytes = b"\0asm component bytes".to_vec();
    let full = component_hash(&bytes);
    let short = &full[..SHORT_VERSION_ID_LEN];
    assert!(is_short_version_id(short) && !is_short_version_id(&full));
    // An older eddy kept it as components/<16 hex digits>.wasm.
    let path = store.keep_component(short, &bytes).unwrap();
    assert_eq!(
        path,
        tmp.path()
            .join(COMPONENTS_DIR)
            .join(format!("{short}.wasm"))
    );
    assert_eq!(store.load_component(short).unwrap(), bytes);
    // Under the full id it is another file, not there yet.
    let e = store.load_component(&full).unwrap_err().to_string();
    assert!(e.contains("No such file"), "{e}");
    // Bytes whose SHA-256 does not start with the short id: refused.
    std::fs::write(&path, b"\0asm an impostor").unwrap();
    let e = store.load_component(short).unwrap_err().to_string();
    let found = component_hash(b"\0asm an impostor");
    assert!(
        e.contains(&format!("its content hash is {found}, not {short} as its name says: the file was replaced or damaged; it is not the version recorded")),
        "{e}"
    );
}

#[test]
fn reading_never_blocks_on_a_fifo_nor_reads_a_device_or_too_much() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    for (path, kind) in [
        (fifo.as_path(), "a FIFO"),
        (Path::new("/dev/zero"), "a character device"),
        (tmp.path(), "a directory"),
    ] {
        let e = read_regular_file(path, 1 << 20, false).unwrap_err();
        assert_eq!(e.to_string(), format!("not a regular file ({kind})"));
    }
    let big = tmp.path().join("big");
    std::fs::write(&big, vec![0u8; 2048]).unwrap();
    let e = read_regular_file(&big, 1024, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("2048 bytes, over the limit of 1024 bytes"),
        "{e}"
    );
    assert_eq!(read_regular_file(&big, 2048, true).unwrap().len(), 2048);
}

#[test]
fn an_empty_or_foreign_database_is_an_error_not_a_fresh_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = dir.join(DB_FILE);
    std::fs::write(&file, b"").unwrap();
    let e = Store::open(dir).err().expect("refused").to_string();
    assert!(e.contains("state.redb is empty (0 bytes)"), "{e}");
    assert!(e.contains(&file.display().to_string()), "{e}");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "left as it is");

    std::fs::remove_file(&file).unwrap();
    {
        let db = Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<&str, u64>::new("mine"))
            .unwrap()
            .insert("x", 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let e = Store::open(dir).err().expect("refused").to_string();
    assert!(e.contains("without Eddy's `format` metadata"), "{e}");
    assert!(e.contains(&file.display().to_string()), "{e}");
}

#[test]
fn metadata_carries_a_checksum_and_format_1_is_upgraded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = dir.join(DB_FILE);
    let store = Store::open(dir).unwrap();
    let pos = SourcePos {
        offset: 1234,
        line: 56,
    };
    store
        .commit(&Checkpoint {
            source: Some(("in".into(), pos)),
            sinks: vec![("out".into(), 99)],
            meta: vec![("versions:op".into(), b"{\"a\":1}".to_vec())],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(store.source_pos("in").unwrap(), Some(pos));
    drop(store);

    // One changed byte of each value: an error naming it.
    for (name, at) in [("source:in", 0), ("sink:out", 1), ("versions:op", 5)] {
        let good = raw_meta(&file, name);
        let mut bad = good.clone();
        bad[at] ^= 0x04;
        put_raw_meta(&file, name, &bad);
        let store = Store::open(dir).unwrap();
        let e = match name {
            "source:in" => store.source_pos("in").unwrap_err(),
            "sink:out" => store.sink_len("out").unwrap_err(),
            _ => store
                .meta_json::<serde_json::Value>("versions:op")
                .unwrap_err(),
        }
        .to_string();
        assert!(e.contains(&format!("metadata `{name}` is corrupt")), "{e}");
        assert!(e.contains("checksum mismatch"), "{e}");
        assert!(e.contains(&dir.display().to_string()), "{e}");
        drop(store);
        put_raw_meta(&file, name, &good);
    }
    // A value moved under another name does not verify either.
    put_raw_meta(&file, "sink:other", &raw_meta(&file, "sink:out"));
    let store = Store::open(dir).unwrap();
    assert!(store.sink_len("other").is_err());
    assert_eq!(store.sink_len("out").unwrap(), Some(99));
    drop(store);

    // A format 1 directory (no checksums) opens and is upgraded.
    put_raw_meta(&file, "format", b"1");
    put_raw_meta(&file, "source:in", &[7u8; 16]);
    put_raw_meta(&file, "sink:other", &5u64.to_le_bytes());
    put_raw_meta(&file, "versions:op", b"{\"a\":1}");
    let store = Store::open(dir).unwrap();
    let seven = u64::from_le_bytes([7; 8]);
    assert_eq!(
        store.source_pos("in").unwrap(),
        Some(SourcePos {
            offset: seven,
            line: seven
        })
    );
    assert_eq!(store.sink_len("other").unwrap(), Some(5));
    assert!(store
        .meta_json::<serde_json::Value>("versions:op")
        .unwrap()
        .is_some());
    drop(store);
    assert_eq!(raw_meta(&file, "format"), b"2");
}

#[test]
fn a_changed_record_is_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = Store::open(dir).unwrap();
    let names: Vec<Box<str>> = vec!["count".into()];
    let mut e = crate::state::Entity::default();
    e.put(0, b"6");
    let mut record = Vec::new();
    e.encode(&names, &mut record);
    store
        .commit(&Checkpoint {
            writes: vec![StateWrite {
                operator: "op".into(),
                key: "user-1".into(),
                record: Some(record.clone()),
                lists: Vec::new(),
                maps: Vec::new(),
            }]
            .into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        store.reader().unwrap().get("op", "user-1").unwrap(),
        Some(record.clone())
    );
    drop(store);
    let at = record.len() - 5;
    record[at] = b'9';
    {
        let db = Database::open(dir.join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(STATE)
            .unwrap()
            .insert(("op", "user-1"), record.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(dir).unwrap();
    for e in [
        store.reader().unwrap().get("op", "user-1").unwrap_err(),
        store.scan("op").unwrap_err(),
    ] {
        let e = e.to_string();
        assert!(
            e.contains("operator `op` for key `user-1` is corrupt"),
            "{e}"
        );
        assert!(e.contains("checksum mismatch"), "{e}");
        assert!(e.contains(&dir.display().to_string()), "{e}");
    }
}

#[test]
fn a_panic_in_redb_becomes_a_damaged_error() {
    let dir = Path::new("/some/state");
    let e = guard::<()>(dir, || panic!("page 7: bad length")).unwrap_err();
    let e = e.to_string();
    assert!(e.contains("state directory /some/state"), "{e}");
    assert!(e.contains("page 7: bad length"), "{e}");
    assert!(
        e.contains("restore the state directory from a backup"),
        "{e}"
    );
    // Calls after it work as before.
    assert_eq!(guard(dir, || Ok(5)).unwrap(), 5);
}

#[test]
fn timers_and_the_watermark_are_committed_with_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.timers("op").unwrap(), vec![], "no table yet");
    assert_eq!(store.watermark("in").unwrap(), None);
    let t = |op: &str, key: &str, name: &str, at: Option<i64>| TimerWrite {
        operator: op.into(),
        key: key.into(),
        name: name.into(),
        at,
    };
    let cp = Checkpoint {
        timers: vec![
            t("op", "b", "x", Some(5)),
            t("op", "a", "y", Some(-3)),
            t("op", "a", "x", Some(7)),
            t("other", "a", "x", Some(1)),
            t("op", "c", "gone", None),
        ],
        meta: vec![("watermark:in".into(), (-42i64).to_le_bytes().to_vec())],
        ..Checkpoint::default()
    };
    store.commit(&cp).unwrap();
    let row = |k: &str, n: &str, at: i64| (k.to_string(), n.to_string(), at);
    assert_eq!(
        store.timers("op").unwrap(),
        vec![row("a", "x", 7), row("a", "y", -3), row("b", "x", 5)]
    );
    assert_eq!(store.timers("other").unwrap(), vec![row("a", "x", 1)]);
    assert_eq!(store.watermark("in").unwrap(), Some(-42));
    let cp = Checkpoint {
        timers: vec![t("op", "a", "x", None), t("op", "b", "x", Some(9))],
        ..Checkpoint::default()
    };
    store.commit(&cp).unwrap();
    assert_eq!(
        store.timers("op").unwrap(),
        vec![row("a", "y", -3), row("b", "x", 9)]
    );
}

#[test]
fn replace_keys_deletes_the_rows_of_spilled_lists_and_maps_it_replaces() {
    use crate::state::{Entity, SPILL_ITEMS};
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let names: Vec<Box<str>> = ["count", "hist", "seen"].map(Box::from).to_vec();
    let mut intern = |n: &str| names.iter().position(|m| &**m == n).unwrap() as u32;
    // A key with a spilled list, one with a spilled map, and one with both
    // that the replacement does not select: real spilled records (format 4
    // and 5) with their rows, as a run outside group mode leaves them.
    let spilled = |list: bool, map: bool| {
        let mut e = Entity::default();
        let mut j = Vec::new();
        e.set(0, b"1", &mut j);
        for i in 0..=SPILL_ITEMS {
            if list {
                e.list_push(1, format!("item {i}").into_bytes(), &mut j);
            }
            if map {
                e.map_set(
                    2,
                    format!("f{i:05}"),
                    i.to_string().into_bytes(),
                    None,
                    &mut j,
                );
            }
        }
        let (mut lists, mut maps) = (Vec::new(), Vec::new());
        e.hand_over(&names, &mut lists);
        e.hand_over_maps(&names, &mut maps);
        let mut record = Vec::new();
        e.encode(&names, &mut record);
        (record, lists, maps)
    };
    let write = |key: &str, (record, lists, maps): (Vec<u8>, _, _)| StateWrite {
        operator: "op".into(),
        key: key.into(),
        record: Some(record),
        lists,
        maps,
    };
    store
        .commit(&Checkpoint {
            writes: vec![
                write("a", spilled(true, false)),
                write("b", spilled(false, true)),
                write("c", spilled(true, true)),
            ]
            .into(),
            ..Checkpoint::default()
        })
        .unwrap();
    let rows = SPILL_ITEMS + 1;
    assert_eq!(store.list_item_count("op").unwrap(), 2 * rows);
    assert_eq!(store.map_field_count("op").unwrap(), 2 * rows);

    // "a" and "b" come back from a changelog as inline records; "a" is
    // selected and written, "b" selected and deleted, "c" kept.
    let inline = |count: &[u8]| {
        let mut e = Entity::default();
        e.set(0, count, &mut Vec::new());
        let mut record = Vec::new();
        e.encode(&names, &mut record);
        record
    };
    let select = |k: &str| k == "a" || k == "b";
    let writes = vec![
        ("a".to_string(), Some(inline(b"7"))),
        ("b".to_string(), None),
    ];
    assert_eq!(
        store.replace_keys("op", &select, &writes, &[]).unwrap(),
        (2, 1)
    );
    // Only the rows of "c" are left.
    assert_eq!(store.list_item_count("op").unwrap(), rows);
    assert_eq!(store.map_field_count("op").unwrap(), rows);
    assert_eq!(
        store.list_items("op", "c", "hist", 0, 2).unwrap(),
        vec![b"item 0".to_vec(), b"item 1".to_vec()]
    );
    assert_eq!(store.list_items("op", "a", "hist", 0, 0).unwrap().len(), 0);
    assert!(store.map_fields("op", "a", "seen").unwrap().is_empty());
    assert!(store.map_fields("op", "b", "seen").unwrap().is_empty());
    assert_eq!(
        store.map_fields("op", "c", "seen").unwrap().len() as u64,
        rows
    );
    // The new records read back right, and "b" is gone.
    let reader = store.reader().unwrap();
    let a = Entity::decode(&reader.get("op", "a").unwrap().unwrap(), &mut intern).unwrap();
    assert_eq!(a.get(0), Some(&b"7"[..]));
    assert!(a.list(1).is_none() && a.map(2).is_none());
    assert_eq!(reader.get("op", "b").unwrap(), None);
    let c = Entity::decode(&reader.get("op", "c").unwrap().unwrap(), &mut intern).unwrap();
    assert_eq!(c.list(1).unwrap().len(), rows);

    // A directory with no spilled state gets no row tables from it.
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    store.replace_keys("op", &select, &writes, &[]).unwrap();
    let txn = store.db().begin_read().unwrap();
    let tables: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| redb::TableHandle::name(&t).to_string())
        .collect();
    assert!(
        !tables
            .iter()
            .any(|t| t == "list_items" || t == "map_fields"),
        "{tables:?}"
    );
}

#[test]
fn compact_now_waits_for_no_reader_and_gives_the_space_of_deleted_state_back() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let write = |key: String, record: Option<Vec<u8>>| StateWrite {
        operator: "op".into(),
        key: key.into(),
        record,
        lists: Vec::new(),
        maps: Vec::new(),
    };
    let record = |i: u32| {
        let mut e = crate::state::Entity::default();
        e.set(0, &[i as u8; 500], &mut Vec::new());
        let mut r = Vec::new();
        e.encode(&["v".into()], &mut r);
        r
    };
    let keys = 20_000u32;
    store
        .commit(&Checkpoint {
            writes: (0..keys)
                .map(|i| write(format!("k{i:06}"), Some(record(i))))
                .collect(),
            ..Checkpoint::default()
        })
        .unwrap();
    let full = store.file_size().unwrap();
    assert!(full > 10 << 20, "{full} bytes");
    let space = store.free_space().unwrap();
    assert_eq!(space.file, full);
    assert!(space.free < full / 2, "{space:?}");
    // Every key but the last 100 deleted, then two checkpoints with no
    // change (redb frees a commit's old pages at a later commit), and
    // last 100 more deleted not durably, as a checkpoint asked for by a
    // full cache is.
    let deletes = [0..keys - 200, 0..0, 0..0, keys - 200..keys - 100];
    for (i, keys) in deletes.into_iter().enumerate() {
        store
            .commit(&Checkpoint {
                writes: keys.map(|i| write(format!("k{i:06}"), None)).collect(),
                durable: i < 3,
                ..Checkpoint::default()
            })
            .unwrap();
    }
    let space = store.free_space().unwrap();
    assert!(space.free > full / 2, "{space:?}");
    // A reader is open: nothing happens.
    let reader = store.reader().unwrap();
    assert_eq!(store.compact_now().unwrap(), None);
    assert_eq!(store.file_size().unwrap(), space.file);
    drop(reader);
    // Without it, the file shrinks, and every key left reads back.
    let after = store.compact_now().unwrap().expect("compacted");
    assert!(after < full / 4, "{after} of {full} bytes");
    assert_eq!(store.file_size().unwrap(), after);
    let reader = store.reader().unwrap();
    for i in 0..keys {
        let got = reader.get("op", &format!("k{i:06}")).unwrap();
        assert_eq!(got, (i >= keys - 100).then(|| record(i)), "key {i}");
    }
    drop(reader);
    // The non-durable delete is on disk now: a reopened store has it.
    drop(store);
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.scan("op").unwrap().len(), 100);
}
