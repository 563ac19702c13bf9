//! Storage hardening: compiled code, kept components, component files and
//! state on disk that were planted, replaced or damaged never run and never
//! yield wrong state; each gets a clear error (or is ignored with a
//! warning) instead.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use eddy_runtime::{
    component_hash, engine, Cache, Checkpoint, Store, Version, Versions, WasmComponent,
};
use eddy_tests::*;
use redb::ReadableTable;

use crate::util::*;

/// `eddy run` of the counter over `input`, writing `dir/out.jsonl`, with
/// state in `state` and the compile cache in `cache` (private to the test
/// unless given).
fn run_counter(dir: &Path, input: &Path, state: &Path, cache: Option<&Path>) -> Output {
    run_counter_with(dir, input, state, cache, &[])
}

fn run_counter_with(
    dir: &Path,
    input: &Path,
    state: &Path,
    cache: Option<&Path>,
    extra: &[&str],
) -> Output {
    let private = dir.join("private-cache");
    Command::new(eddy_bin())
        .args(["run", "--quiet", "--workers", "2"])
        .args(extra)
        .arg("--operator")
        .arg(format!("counter={COUNTER}"))
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(dir.join("out.jsonl"))
        .arg("--dead-letter")
        .arg(dir.join("dead.jsonl"))
        .arg("--state")
        .arg(state)
        .env("EDDY_CACHE_DIR", cache.unwrap_or(&private))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Asserts `o` failed cleanly: exit code 1 (not a panic's 101) and no
/// panic message, with every one of `needles` in its stderr.
fn assert_clean_failure(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "exit code; stderr:\n{e}");
    assert!(!e.contains("panicked"), "a panic:\n{e}");
    for n in needles {
        assert!(e.contains(n), "no {n:?} in stderr:\n{e}");
    }
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A user who can write the compile cache directory plants, under the name
/// of the counter's entry, the compiled code of another component (v2,
/// whose outputs say `"version":2`). eddy, running as root, must not load
/// it: it compiles the real counter, says which directory it did not use
/// and why, and stores nothing there.
#[test]
fn a_planted_compile_cache_entry_in_a_directory_another_user_can_write_never_runs() {
    if !can_act_as_other_user(
        "a_planted_compile_cache_entry_in_a_directory_another_user_can_write_never_runs",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // The other user must reach the cache directories inside.
    set_mode(d, 0o755);
    let input = d.join("in.jsonl");
    let (events, text) = counter_events(40, 5, 3);
    std::fs::write(&input, &text).unwrap();

    // The entry name eddy uses for the counter: the test computes it the
    // way an attacker can, and checks that eddy stores the counter there.
    let engine = engine().unwrap();
    let counter = std::fs::read(COUNTER).unwrap();
    let private = d.join("private-cache");
    let o = run_counter(d, &input, &d.join("warm-state"), Some(&private));
    assert!(o.status.success(), "{}", stderr(&o));
    let name = Cache::new(&private)
        .entry(&engine, &counter)
        .file_name()
        .unwrap()
        .to_owned();
    assert!(
        private.join(&name).exists(),
        "eddy stores the counter under the name the test computed"
    );

    // The impostor: v2's compiled code, as the cache stored entries before
    // they were authenticated (what `Component::serialize` writes).
    let v2 = std::fs::read(COUNTER_V2).unwrap();
    let planted = d.join("planted.cwasm");
    std::fs::write(&planted, engine.precompile_component(&v2).unwrap()).unwrap();
    set_mode(&planted, 0o644);

    // Two ways another user can write the directory: it is theirs, or it is
    // root's but world-writable.
    let theirs = d.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    let open = d.join("world-writable");
    std::fs::create_dir(&open).unwrap();
    set_mode(&open, 0o777);
    for (cache, reason) in [
        (&theirs, format!("is owned by uid {OTHER_UID}, not by you")),
        (
            &open,
            "is writable by its group and by other users".to_string(),
        ),
    ] {
        let entry = cache.join(&name);
        let cp = as_other_user("cp")
            .arg(&planted)
            .arg(&entry)
            .status()
            .unwrap();
        assert!(cp.success(), "the other user plants the entry");
        let before = std::fs::read(&entry).unwrap();

        let out_file = d.join("out.jsonl");
        let _ = std::fs::remove_file(&out_file);
        let state = d.join(format!(
            "state-{}",
            cache.file_name().unwrap().to_string_lossy()
        ));
        let o = run_counter(d, &input, &state, Some(cache));
        let e = stderr(&o);
        assert!(o.status.success(), "{e}");
        let out = read_jsonl(&out_file);
        assert_eq!(out.len(), events.len(), "{e}");
        for line in &out {
            assert!(
                line["value"].get("version").is_none(),
                "the planted v2 code ran: {line}"
            );
        }
        assert_outputs_once(d, &events);
        assert!(e.contains(&cache.display().to_string()), "{e}");
        assert!(e.contains(&reason), "{e}");
        assert!(e.contains("chmod 700"), "{e}");
        // Nothing was stored there either.
        assert_eq!(std::fs::read(&entry).unwrap(), before);
        let names: Vec<_> = std::fs::read_dir(cache).unwrap().collect();
        assert_eq!(names.len(), 1, "only the planted entry is there");
    }
}

/// A kept component (`components/<hash>.wasm`) replaced by other bytes is
/// refused when a restart would run it, with an error naming the file; it
/// never runs under the recorded version's label.
#[test]
fn a_replaced_kept_component_is_refused_on_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let input = d.join("in.jsonl");
    let state = d.join("state");
    let (events, text) = counter_events(300, 20, 5);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    std::fs::write(&input, lines[..100].concat()).unwrap();
    let o = run_counter(d, &input, &state, None);
    assert!(o.status.success(), "{}", stderr(&o));

    // Swap to v2 offline: keep its component and record it as running, as
    // a swap does.
    let v2 = std::fs::read(COUNTER_V2).unwrap();
    let v2_hash = component_hash(&v2);
    let kept = {
        let store = Store::open(&state).unwrap();
        let name = Versions::meta_name("counter");
        let mut versions: Versions = store.meta_json(&name).unwrap().unwrap();
        assert_eq!(
            versions.base,
            component_hash(&std::fs::read(COUNTER).unwrap())
        );
        versions.all.push(Version {
            generation: 1,
            hash: v2_hash.clone(),
            source: COUNTER_V2.into(),
            loaded_at_ms: 0,
        });
        versions.active = 1;
        let kept = store.keep_component(&v2_hash, &v2).unwrap();
        store
            .commit(&Checkpoint {
                meta: vec![(name, serde_json::to_vec(&versions).unwrap())],
                ..Default::default()
            })
            .unwrap();
        kept
    };
    assert_eq!(
        kept,
        state.join("components").join(format!("{v2_hash}.wasm"))
    );

    // The restart runs v2.
    std::fs::write(&input, lines[..200].concat()).unwrap();
    let o = run_counter(d, &input, &state, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = read_jsonl(&d.join("out.jsonl"));
    assert_eq!(out.len(), 200);
    assert_eq!(
        out[150]["value"]["version"].as_u64(),
        Some(2),
        "{}",
        out[150]
    );

    // Replace the kept v2 with another valid component (v1's bytes): the
    // restart refuses it and handles nothing.
    std::fs::write(&kept, std::fs::read(COUNTER).unwrap()).unwrap();
    std::fs::write(&input, text.as_bytes()).unwrap();
    let o = run_counter(d, &input, &state, None);
    assert_clean_failure(
        &o,
        &[
            &kept.display().to_string(),
            "was replaced or damaged",
            &format!("not {v2_hash} as its name says"),
        ],
    );
    assert_eq!(
        read_jsonl(&d.join("out.jsonl")).len(),
        200,
        "nothing more ran"
    );

    // Put back, it runs again, to the end, with the right state.
    std::fs::write(&kept, &v2).unwrap();
    let o = run_counter(d, &input, &state, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_outputs_once(d, &events);
    assert_counter_state(&state, &reference(&events));
}

/// `WasmComponent::load` (and `eddy run --operator`) never blocks on a FIFO, never
/// reads a device until it ends, refuses a directory, and refuses a file
/// over the size limit without reading it.
#[test]
fn a_component_path_that_is_a_fifo_a_device_a_directory_or_too_large_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let fifo = d.join("op.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let big = d.join("big.wasm");
    let f = std::fs::File::create(&big).unwrap();
    // Sparse: no disk or memory is used unless it is read.
    f.set_len(eddy_runtime::MAX_COMPONENT_BYTES + 1).unwrap();
    drop(f);
    let cases: [(PathBuf, String); 4] = [
        (fifo.clone(), "not a regular file (a FIFO)".into()),
        (
            "/dev/zero".into(),
            "not a regular file (a character device)".into(),
        ),
        (d.to_path_buf(), "not a regular file (a directory)".into()),
        (
            big.clone(),
            format!(
                "over the limit of {} bytes (512 MiB)",
                eddy_runtime::MAX_COMPONENT_BYTES
            ),
        ),
    ];
    let engine = engine().unwrap();
    for (path, message) in &cases {
        // In a thread, so a hang fails the test instead of stalling it.
        let (tx, rx) = std::sync::mpsc::channel();
        let (e, p) = (engine.clone(), path.clone());
        std::thread::spawn(move || {
            let _ = tx.send(WasmComponent::load(&e, &p).err().map(|e| e.to_string()));
        });
        let err = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("WasmComponent::load({}) hangs", path.display()))
            .expect("refused");
        assert!(
            err.contains(&format!("component {}: ", path.display())),
            "{err}"
        );
        assert!(err.contains(message.as_str()), "{err}");

        let mut child = Command::new(eddy_bin())
            .args(["run", "--no-control", "--operator"])
            .arg(format!("op={}", path.display()))
            .args(["--input", "-", "--state"])
            .arg(d.join("state"))
            .env("EDDY_CACHE_DIR", "off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("eddy run --operator {} hangs", path.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        assert_clean_failure(&o, &[message.as_str()]);
    }
}

/// Random damage in the middle of `state.redb` (where the pages holding
/// state are) gives a clear error naming the state directory (exit 1), or,
/// when it hit nothing in use, the right counts: never a panic (101) and
/// never a wrong count.
#[test]
fn a_damaged_state_database_is_a_clear_error_never_a_panic_or_a_wrong_count() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let input = d.join("in.jsonl");
    let (events, text) = counter_events(3000, 400, 11);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    std::fs::write(&input, lines[..2000].concat()).unwrap();
    let pristine = d.join("pristine");
    let o = run_counter(d, &input, &pristine, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let good_db = std::fs::read(pristine.join("state.redb")).unwrap();
    let good_out = std::fs::read(d.join("out.jsonl")).unwrap();
    std::fs::write(&input, &text).unwrap();

    let mut refused = 0;
    let mut positions = Vec::new();
    // A spread of places from a quarter to the end of the file, plus the
    // region around every stored key name (leaf pages).
    for k in 4..16 {
        positions.push(good_db.len() * k / 16);
    }
    if let Some(at) = good_db.windows(7).position(|w| w == b"user-17") {
        positions.push(at);
    }
    // Each damage with the default open (records checked as read) and with
    // --verify-state (every page checked first).
    let runs = positions
        .into_iter()
        .flat_map(|at| [(at, false), (at, true)]);
    for (round, (at, verify)) in runs.enumerate() {
        let state = d.join(format!("state-{round}"));
        std::fs::create_dir(&state).unwrap();
        set_mode(&state, 0o700);
        let mut db = good_db.clone();
        for b in &mut db[at..(at + 64).min(good_db.len())] {
            *b ^= 0x5a;
        }
        std::fs::write(state.join("state.redb"), &db).unwrap();
        std::fs::write(d.join("out.jsonl"), &good_out).unwrap();
        let extra: &[&str] = if verify { &["--verify-state"] } else { &[] };
        let o = run_counter_with(d, &input, &state, None, extra);
        let e = stderr(&o);
        assert_ne!(o.status.code(), Some(101), "a panic at byte {at}:\n{e}");
        assert!(!e.contains("panicked"), "a panic at byte {at}:\n{e}");
        if o.status.success() {
            // Damage where nothing is used any more (or repaired by redb
            // from its previous commit): the state must be exactly right.
            assert_counter_state(&state, &reference(&events));
            assert_outputs_once(d, &events);
        } else {
            assert_clean_failure(
                &o,
                &[
                    &state.display().to_string(),
                    "restore the state directory from a backup",
                ],
            );
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "no position hit a page in use: the test tests nothing"
    );
}

/// One changed byte of one stored value (the count of one key, rewritten
/// through redb as an attacker or a bad disk would): the next run stops with
/// an error naming the key and the state directory, never a wrong count.
#[test]
fn a_changed_stored_value_is_an_error_naming_the_key_never_a_wrong_count() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let input = d.join("in.jsonl");
    let state = d.join("state");
    let (_, text) = counter_events(200, 10, 7);
    std::fs::write(&input, &text).unwrap();
    let o = run_counter(d, &input, &state, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let key = "user-3";
    {
        let db = redb::Database::open(state.join("state.redb")).unwrap();
        let table = redb::TableDefinition::<(&str, &str), &[u8]>::new("state");
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(table).unwrap();
            let mut record = t.get(("counter", key)).unwrap().unwrap().value().to_vec();
            let at = record
                .windows(8)
                .position(|w| w == b"\"count\":")
                .expect("the count in the record")
                + 8;
            assert!(record[at].is_ascii_digit());
            record[at] = if record[at] == b'9' {
                b'1'
            } else {
                record[at] + 1
            };
            t.insert(("counter", key), record.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let out_before = read_jsonl(&d.join("out.jsonl")).len();
    let more = format!("{{\"key\":\"{key}\",\"amount\":1}}\n");
    std::fs::write(&input, format!("{text}{more}")).unwrap();
    let o = run_counter(d, &input, &state, None);
    assert_clean_failure(
        &o,
        &[
            &format!("key `{key}`"),
            "checksum mismatch",
            &state.display().to_string(),
            "restore the state directory from a backup",
        ],
    );
    // No output with a wrong count was written.
    let out = read_jsonl(&d.join("out.jsonl"));
    assert!(
        out[out_before..].iter().all(|l| l["key"] != key),
        "an output for the damaged key: {:?}",
        &out[out_before..]
    );
}

/// An existing but empty `state.redb`, or a redb database that is not
/// Eddy's, is an error naming the file, never a fresh start from position
/// 0; only a missing `state.redb` starts fresh.
#[test]
fn an_empty_or_foreign_state_file_is_an_error_not_a_fresh_start() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let input = d.join("in.jsonl");
    std::fs::write(&input, counter_events(10, 3, 1).1).unwrap();

    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("state.redb"), b"").unwrap();
    let o = run_counter(d, &input, &empty, None);
    let file = empty.join("state.redb").display().to_string();
    assert_clean_failure(
        &o,
        &[&file, "is empty (0 bytes)", "delete it to start over"],
    );
    assert_eq!(
        std::fs::metadata(empty.join("state.redb")).unwrap().len(),
        0
    );
    assert!(!d.join("out.jsonl").exists(), "nothing ran");

    let foreign = d.join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    {
        let db = redb::Database::create(foreign.join("state.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("orders"))
            .unwrap()
            .insert("a", 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let o = run_counter(d, &input, &foreign, None);
    let file = foreign.join("state.redb").display().to_string();
    assert_clean_failure(&o, &[&file, "not an Eddy state database"]);
    assert!(!d.join("out.jsonl").exists(), "nothing ran");
}

/// A state directory another user can write (or owns) is refused with how
/// to fix it: compiled code's sources and the control socket live there.
#[test]
fn a_state_directory_another_user_can_write_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let input = d.join("in.jsonl");
    std::fs::write(&input, counter_events(10, 3, 1).1).unwrap();
    let state = d.join("state");
    std::fs::create_dir(&state).unwrap();
    set_mode(&state, 0o777);
    let o = run_counter(d, &input, &state, None);
    let s = state.display().to_string();
    assert_clean_failure(
        &o,
        &[
            &s,
            "is writable by its group and by other users",
            "chmod 700",
        ],
    );
    set_mode(&state, 0o700);
    assert!(run_counter(d, &input, &state, None).status.success());

    if can_act_as_other_user("a_state_directory_another_user_can_write_is_refused (owner)") {
        std::os::unix::fs::chown(&state, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
        let o = run_counter(d, &input, &state, None);
        assert_clean_failure(
            &o,
            &[&s, &format!("is owned by uid {OTHER_UID}, not by you")],
        );
    }
}

/// Rollback after a restart reads the previous version from the state
/// directory: a replaced file there is refused with an error naming it,
/// and the running version keeps running.
#[test]
fn rollback_refuses_a_replaced_kept_component() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let input = d.join("in.jsonl");
    let state = d.join("state");
    let (_, text) = counter_events(100, 10, 9);
    std::fs::write(&input, &text).unwrap();
    let o = run_counter(d, &input, &state, None);
    assert!(o.status.success(), "{}", stderr(&o));

    // Recorded as by two swaps: v3 ran first, v2 runs now (the pipeline's
    // own v1 is the base). Rollback goes to v3, which only the state
    // directory has: replace its file with v2's bytes.
    let v1_hash = component_hash(&std::fs::read(COUNTER).unwrap());
    let v2 = std::fs::read(COUNTER_V2).unwrap();
    let v2_hash = component_hash(&v2);
    let v3 = std::fs::read(COUNTER_V3).unwrap();
    let v3_hash = component_hash(&v3);
    let v3_file = {
        let store = Store::open(&state).unwrap();
        let name = Versions::meta_name("counter");
        let versions = Versions {
            active: 1,
            base: v1_hash,
            all: vec![
                version(0, &v3_hash, COUNTER_V3),
                version(1, &v2_hash, COUNTER_V2),
            ],
        };
        store.keep_component(&v2_hash, &v2).unwrap();
        store.keep_component(&v3_hash, &v3).unwrap();
        store
            .commit(&Checkpoint {
                meta: vec![(name, serde_json::to_vec(&versions).unwrap())],
                ..Default::default()
            })
            .unwrap();
        store.component_path(&v3_hash)
    };
    std::fs::write(&v3_file, &v2).unwrap();

    let mut child = Command::new(eddy_bin())
        .args(["run", "--quiet", "--follow", "--operator"])
        .arg(format!("counter={COUNTER}"))
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(d.join("out.jsonl"))
        .arg("--state")
        .arg(&state)
        .env("EDDY_CACHE_DIR", d.join("private-cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let eddy = |args: &[&str]| {
        Command::new(eddy_bin())
            .args(args)
            .arg("--state")
            .arg(&state)
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !eddy(&["status"]).status.success() {
        assert!(std::time::Instant::now() < deadline, "eddy did not start");
        assert!(child.try_wait().unwrap().is_none(), "eddy stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = eddy(&["rollback", "counter"]);
    let e = format!("{}{}", stderr(&o), String::from_utf8_lossy(&o.stdout));
    let _ = child.kill();
    let _ = child.wait();
    assert!(!o.status.success(), "the rollback was accepted: {e}");
    assert!(e.contains(&v3_file.display().to_string()), "{e}");
    assert!(e.contains("was replaced or damaged"), "{e}");
    assert!(e.contains(&format!("{v2_hash} keeps running")), "{e}");
}
