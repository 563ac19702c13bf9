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
    kill_9_runs_then_finish(dir.path(), &args, 20, (20, 250), 4242, 10);

    assert_counter_state(&dir.path().join("st"), &reference(&events));
    assert_outputs_once(dir.path(), &events);
}
