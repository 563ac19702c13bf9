use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::*;

/// Kill -9 the runtime at pseudo-random moments, 20 times, restarting it on
/// the same input each time, then let it finish: the committed state equals
/// the reference and the output file holds every event's output exactly
/// once (it is cut back to the checkpointed length on restart).
#[test]
fn sigkill_at_random_moments_then_restart_gives_exact_state() {
    let dir = tempfile::tempdir().unwrap();
    // Large enough that the runs below are mostly killed mid-stream (the
    // pipeline does over 1M events/s end to end).
    let (events, text) = counter_events(4_000_000, 5_000, 17);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, &text).unwrap();
    let operator = format!("counter={}", eddy_tests::COUNTER);
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
        "--checkpoint-interval-ms",
        "40",
        "--quiet",
    ];
    let mut rng = Rng(4242);
    let mut killed = 0;
    for _ in 0..20 {
        let mut child = Command::new(eddy_bin())
            .args(args)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20 + rng.next() % 250));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        let o = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!stderr.contains("error"), "{stderr}");
    }
    eprintln!("killed {killed} of 20 runs");
    assert!(
        killed >= 10,
        "only {killed} runs were killed mid-stream: make the input larger"
    );
    let o = Command::new(eddy_bin())
        .args(args)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    assert_counter_state(&dir.path().join("st"), &reference(&events));
    assert_outputs_once(dir.path(), &events);
}
