//! The state cache under a memory budget far smaller than the key set:
//! every event of a key whose state was evicted between its events is
//! still counted exactly, per-key order holds, and so across `kill -9`
//! and restart and across a hot swap whose migration meets evicted keys.

use std::path::Path;
use std::process::Command;

use eddy_tests::*;

use crate::swap::{assert_split, feed, Running};
use crate::util::*;

/// The smallest budget two workers and one operator accept.
const SMALL: usize = 3 << 20;

#[test]
fn a_cache_far_smaller_than_the_keys_counts_every_event_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // 60,000 keys of about 100 bytes each in memory: 6 MB of state, twice
    // what the workers may cache.
    let (events, text) = counter_events(400_000, 60_000, 91);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, &text).unwrap();
    let mut p = pipeline(dir.path(), &input, &[("counter", COUNTER)], 2);
    p.cache_bytes = Some(SMALL);
    let summary = run(&p);
    let op = &summary.operators[0];
    assert_eq!(op.handled, events.len() as u64);
    assert!(op.cache_evictions > 10_000, "keys were evicted: {op:?}");
    let keys = reference(&events).len() as u64;
    assert!(
        op.cache_misses > keys + 10_000,
        "evicted keys were read back from the state directory: {op:?}"
    );
    assert_eq!(op.cache_hits + op.cache_misses, events.len() as u64);
    assert_counter_state(&p.state_dir, &reference(&events));
    // Per key, outputs in order with counts 1, 2, 3...: no event was
    // counted against stale state.
    assert_outputs_once(dir.path(), &events);
}

#[test]
fn kill_9_with_a_small_cache_then_restart_gives_exact_state() {
    let dir = tempfile::tempdir().unwrap();
    let (events, text) = counter_events(1_500_000, 100_000, 23);
    std::fs::write(dir.path().join("in.jsonl"), &text).unwrap();
    let operator = format!("counter={COUNTER}");
    let args = [
        "run",
        "--operator",
        &operator,
        "--input",
        "in.jsonl",
        "--output",
        "out.jsonl",
        "--state",
        "st",
        "--workers",
        "2",
        "--cache-bytes",
        "3MiB",
        "--quiet",
    ];
    kill_9_runs_then_finish(dir.path(), &args, 8, (100, 600), 99, 4);
    assert_counter_state(&dir.path().join("st"), &reference(&events));
    assert_outputs_once(dir.path(), &events);
}

#[test]
fn a_swap_migrates_keys_the_cache_had_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let (events, text) = counter_events(200_000, 40_000, 29);
    let mut p = pipeline(dir.path(), &input, &[("counter", COUNTER)], 2);
    p.cache_bytes = Some(SMALL);
    let run = Running::start(p.clone());
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let (first, rest) = lines.split_at(100_000);
    feed(&input, &first.concat(), 10_000);
    run.wait_handled(0, 100_000);
    let report = run.swap("counter", COUNTER_V3);
    assert!(report.migrates);
    feed(&input, &rest.concat(), 10_000);
    run.wait_handled(0, events.len() as u64);
    // `eddy status` shows the cache and the state directory's size.
    let o = eddy_in(
        &["status", "--state", p.state_dir.to_str().unwrap()],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let status = String::from_utf8_lossy(&o.stdout).to_string();
    let first = status.lines().next().unwrap();
    assert!(
        first.ends_with(" MiB)") && first.contains("; state "),
        "{status}"
    );
    let cache = status
        .lines()
        .find_map(|l| l.strip_prefix("  state cache: "))
        .unwrap_or_else(|| panic!("no state cache line: {status}"));
    let evicted: u64 = cache
        .strip_suffix(" evicted")
        .and_then(|c| c.rsplit(", ").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{cache}"));
    assert!(evicted > 0, "{cache}");
    assert!(
        cache.contains(" keys, ") && cache.contains("% hits, "),
        "{cache}"
    );
    let summary = run.stop();
    assert!(summary.operators[0].cache_evictions >= evicted);

    // Every output in order per key, each from the version of its line:
    // keys read back after the swap were migrated, then counted on.
    assert_split(
        &dir.path().join("out.jsonl"),
        &events,
        &[(1, None), (100_001, Some(3))],
    );
    let expected = reference(&events);
    let got = state_values(&p.state_dir, "counter", &["n", "totals"]);
    assert_eq!(got.len(), expected.len());
    let after: std::collections::HashSet<&str> =
        rest.iter().map(|l| &l[8..l.find("\",").unwrap()]).collect();
    for (k, (count, _)) in &expected {
        let v = &got[k];
        if after.contains(k.as_str()) {
            assert_eq!(v[0].as_u64(), Some(*count), "n of {k}");
            assert!(v[1].is_null(), "old format removed for {k}");
        } else {
            assert_eq!(v[1]["count"].as_u64(), Some(*count), "{k} keeps v1 state");
        }
    }
}

#[test]
fn a_budget_too_small_for_the_batches_in_hand_is_refused_with_the_minimum() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "").unwrap();
    let operator = format!("counter={COUNTER}");
    let o = eddy_in(
        &[
            "run",
            "--operator",
            &operator,
            "--input",
            "in.jsonl",
            "--state",
            "st",
            "--workers",
            "2",
            "--cache-bytes",
            "1MiB",
        ],
        dir.path(),
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("cache_bytes = 1048576 is too small for 2 worker(s) and 1 operator(s): it must be at least 2396746 bytes"),
        "{e}"
    );
    let o = eddy_in(
        &[
            "run",
            "--operator",
            &operator,
            "--input",
            "in.jsonl",
            "--state",
            "st",
            "--cache-bytes",
            "lots",
        ],
        dir.path(),
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--cache-bytes \"lots\" is not a size"),
        "{}",
        stderr(&o)
    );
}

/// A tmpfs of `size` mounted at `path`, unmounted when dropped.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    /// Mounts it, or says why it cannot (not root, no CAP_SYS_ADMIN).
    fn mount(path: &std::path::Path, size: &str) -> Result<SmallFs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "cannot mount a tmpfs (needs root with CAP_SYS_ADMIN): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(SmallFs(path.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let o = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

#[test]
fn a_full_disk_during_a_checkpoint_fails_clearly_and_a_restart_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    let fs = match SmallFs::mount(&small, "16m") {
        Ok(fs) => fs,
        Err(why) => {
            let test = "cache::a_full_disk_during_a_checkpoint_fails_clearly_and_a_restart_resumes_exactly";
            if std::env::var_os("CI").is_some() {
                panic!("CI must run {test}, but {why}");
            }
            skipped(&format!("{test}: {why}"));
            return;
        }
    };
    // 300,000 keys: far more state than 16 MiB holds.
    let (events, text) = counter_events(600_000, 300_000, 37);
    std::fs::write(dir.path().join("in.jsonl"), &text).unwrap();
    let operator = format!("counter={COUNTER}");
    let state = small.join("st");
    let state = state.to_str().unwrap();
    let args = [
        "run",
        "--operator",
        &operator,
        "--input",
        "in.jsonl",
        "--output",
        "out.jsonl",
        "--state",
        state,
        "--workers",
        "2",
        "--checkpoint-interval-ms",
        "50",
        "--quiet",
    ];
    let o = eddy_in(&args, dir.path());
    assert!(!o.status.success(), "the state cannot fit in 16 MiB");
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "state directory {state}: the file system is full (No space left on device"
        )) && e.contains("every committed checkpoint is intact: free some space and run again"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
    // Checkpoints were committed before the disk filled up, and they are
    // readable as they are.
    let before = state_values(std::path::Path::new(state), "counter", &["totals"]);
    assert!(!before.is_empty(), "some checkpoints were committed first");

    // Room again: the restart resumes from the last committed checkpoint
    // and finishes with exact state and every output once.
    fs.resize("256m");
    let o = eddy_in(&args, dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let expected = reference(&events);
    for (k, v) in &before {
        assert!(v[0]["count"].as_u64().unwrap() <= expected[k].0, "{k}");
    }
    assert_counter_state(std::path::Path::new(state), &expected);
    assert_outputs_once(dir.path(), &events);
}

#[test]
fn eddy_compact_gives_the_space_of_deleted_state_back() {
    use eddy_runtime::{Checkpoint, StateWrite, Store};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("st");
    // 20,000 keys of 2 KiB, then all but 100 deleted (as expired state
    // is): the file keeps its size until compacted.
    let record = |i: usize| {
        let mut e = eddy_runtime::Entity::default();
        let mut undo = Vec::new();
        e.set(0, &vec![(i % 251) as u8; 2048], &mut undo);
        let mut buf = Vec::new();
        e.encode_tagged(0, &["blob".into()], &mut buf);
        buf
    };
    {
        let store = Store::open(&state).unwrap();
        let op: std::sync::Arc<str> = "op".into();
        let write = |i: usize, keep: bool| StateWrite {
            operator: op.clone(),
            key: format!("key-{i:05}").into(),
            record: keep.then(|| record(i)),
            lists: Vec::new(),
            maps: Vec::new(),
        };
        store
            .commit(&Checkpoint {
                writes: (0..20_000).map(|i| write(i, true)).collect(),
                ..Default::default()
            })
            .unwrap();
        store
            .commit(&Checkpoint {
                writes: (100..20_000).map(|i| write(i, false)).collect(),
                ..Default::default()
            })
            .unwrap();
    }
    let file = state.join("state.redb");
    let before = std::fs::metadata(&file).unwrap().len();
    assert!(before > 40 << 20, "{before}");
    let o = eddy_in(&["compact", "--state", "st"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.starts_with(&format!(
            "compacted {}: ",
            Path::new("st").join("state.redb").display()
        )),
        "{out}"
    );
    let after = std::fs::metadata(&file).unwrap().len();
    assert!(after < before / 10, "{before} -> {after}");
    // What was kept is all there.
    let store = Store::open(&state).unwrap();
    let kept = store.scan("op").unwrap();
    assert_eq!(kept.len(), 100);
    for (i, (k, r)) in kept.iter().enumerate() {
        assert_eq!(k, &format!("key-{i:05}"));
        assert_eq!(r, &record(i));
    }
    drop(store);
    // Not on a directory without state, nor under a running pipeline.
    let o = eddy_in(&["compact", "--state", "nothing"], dir.path());
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("nothing: no state there (no state.redb)"),
        "{}",
        stderr(&o)
    );
}
