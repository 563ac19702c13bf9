use std::io::Write;
use std::time::Duration;

use eddy_runtime::Shutdown;

use crate::util::*;

/// Run, append more input, run again: the second run starts after the
/// first's last line and the state equals one run over everything.
#[test]
fn a_second_run_resumes_after_the_checkpointed_line() {
    let dir = tempfile::tempdir().unwrap();
    let (events, text) = counter_events(40_000, 300, 3);
    let cut = text.match_indices('\n').nth(24_999).unwrap().0 + 1;
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, &text[..cut]).unwrap();
    let p = pipeline(dir.path(), &input, &[("counter", eddy_tests::COUNTER)], 2);

    let first = run(&p);
    assert_eq!(first.lines, 25_000);
    assert_counter_state(&p.state_dir, &reference(&events[..25_000]));

    std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap()
        .write_all(&text.as_bytes()[cut..])
        .unwrap();
    let second = run(&p);
    assert_eq!(second.resumed_after_line, 25_000);
    assert_eq!(second.lines, 15_000);
    assert_counter_state(&p.state_dir, &reference(&events));
    assert_outputs_once(dir.path(), &events);

    // A third run has nothing left to do and changes nothing.
    let third = run(&p);
    assert_eq!(third.lines, 0);
    assert_counter_state(&p.state_dir, &reference(&events));
}

/// Stop a run at arbitrary moments, restart until done: state and outputs
/// equal one uninterrupted run, whenever the stops happened.
#[test]
fn stopping_anywhere_and_restarting_gives_exact_state_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let (events, text) = counter_events(150_000, 2_000, 5);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, &text).unwrap();
    let mut p = pipeline(dir.path(), &input, &[("counter", eddy_tests::COUNTER)], 2);
    p.checkpoint_events = Some(7_000);

    let mut rounds = 0;
    let mut total = 0;
    for delay_ms in [0u64, 5, 20, 60, 150] {
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay_ms));
            s.trigger();
        });
        total += run_with(&p, &shutdown).lines;
        stopper.join().unwrap();
        rounds += 1;
    }
    total += run(&p).lines;
    assert!(rounds == 5);
    assert_eq!(total, 150_000, "every line read exactly once over all runs");
    assert_counter_state(&p.state_dir, &reference(&events));
    assert_outputs_once(dir.path(), &events);
}
