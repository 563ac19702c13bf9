//! `[state] compact`: a running pipeline whose state shrinks (state time to
//! live expires most keys) gives the space back at a quiet moment, without
//! stopping, and its state stays exact through it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use eddy_runtime::{CompactPolicy, Refresh, TtlSpec};
use eddy_tests::COUNTER;

use crate::swap::{feed, Running};
use crate::util::*;

/// Counter events `(key, ts, amount)` as input lines.
fn lines(events: &[(String, i64, u64)]) -> String {
    events
        .iter()
        .map(|(k, ts, a)| format!("{{\"key\":\"{k}\",\"ts\":{ts},\"amount\":{a}}}\n"))
        .collect()
}

fn db_size(state: &Path) -> u64 {
    std::fs::metadata(state.join("state.redb")).unwrap().len()
}

#[test]
fn a_running_pipeline_gives_the_space_of_expired_state_back_and_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let mut p = pipeline(dir.path(), &input, &[("counter", COUNTER)], 2);
    p.time_field = Some("ts".into());
    p.operators[0].ttl = vec![TtlSpec {
        name: "totals".into(),
        after: 100,
        refresh: Refresh::Write,
    }];
    // A cache far smaller than the keys: keys read after the compaction
    // come from the compacted file.
    p.cache_bytes = Some(3 << 20);
    p.checkpoint_interval = Duration::from_millis(100);
    p.compact = Some(CompactPolicy {
        min_free: 0.5,
        every: Duration::from_millis(200),
    });
    let run = Running::start(p.clone());

    // 150,000 keys at time 0: a file of some tens of MiB.
    let old: Vec<(String, i64, u64)> = (0..150_000)
        .map(|i| (format!("old-{i}"), 0, i % 7))
        .collect();
    feed(&input, &lines(&old), 5_000);
    run.wait_handled(0, old.len() as u64);
    std::thread::sleep(Duration::from_millis(500));
    let full = db_size(&p.state_dir);
    assert!(full > 8 << 20, "{full} bytes");
    // (A compaction may have run already: rewritten pages leave free
    // space behind a growing state too.)
    let before = run.status().compactions;

    // 1,000 new keys at time 1,000: every old key expires (its deadline is
    // 100), its record and deadline are deleted at the next checkpoint,
    // and at the next quiet moment the file shrinks.
    let new: Vec<(String, i64, u64)> = (0..1_000).map(|i| (format!("new-{i}"), 1_000, 3)).collect();
    feed(&input, &lines(&new), 100);
    run.wait_handled(0, (old.len() + new.len()) as u64);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let size = db_size(&p.state_dir);
        let status = run.status();
        if status.compactions.count > before.count && size < full / 4 {
            assert!(
                status.compactions.freed_bytes - before.freed_bytes > full / 2,
                "{status:?}"
            );
            assert!(status.state_bytes < full / 2, "{status:?}");
            // `/metrics` counts it and shows the directory's size.
            let (code, text) = crate::http::get(&p.state_dir.join("control.sock"), "/metrics");
            assert_eq!(code, 200, "{text}");
            let sample = |name: &str| -> f64 {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in {text}"))
            };
            assert!(sample("eddy_state_compactions_total") >= 1.0);
            assert!(sample("eddy_state_compaction_freed_bytes_total") > (full / 2) as f64);
            assert!(sample("eddy_state_compaction_stall_max_seconds") > 0.0);
            assert!(sample("eddy_state_directory_size_bytes") < (full / 2) as f64);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not compacted: {size} of {full} bytes, {:?}",
            status.compactions
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The pipeline goes on: old keys come back from zero, new keys count
    // on from the compacted file.
    let more: Vec<(String, i64, u64)> = (0..100)
        .map(|i| (format!("old-{i}"), 1_050, 5))
        .chain((0..1_000).map(|i| (format!("new-{i}"), 1_050, 4)))
        .collect();
    feed(&input, &lines(&more), 100);
    run.wait_handled(0, (old.len() + new.len() + more.len()) as u64);
    let summary = run.stop();
    assert_eq!(summary.operators[0].failed, 0);
    let mut want: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for i in 0..100 {
        want.insert(format!("old-{i}"), (1, 5));
    }
    for i in 0..1_000 {
        want.insert(format!("new-{i}"), (2, 7));
    }
    assert_counter_state(&p.state_dir, &want);
}
