//! `eddy run`'s progress: a plain line every `--progress-interval-ms` when
//! stderr is not a terminal, a bar when it is, nothing with `--quiet`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// Writes `n` counter events to `dir/in.jsonl`; its size in bytes.
fn input(dir: &std::path::Path, n: usize) -> u64 {
    let text: String = (0..n)
        .map(|i| format!("{{\"key\":\"k{}\",\"amount\":{}}}\n", i % 10, i % 7))
        .collect();
    std::fs::write(dir.join("in.jsonl"), &text).unwrap();
    text.len() as u64
}

/// With stderr a pipe, a `--follow` run prints plain progress lines; once
/// the whole file is read, one says exactly how far: the last line and
/// 100% of the file's bytes.
#[test]
fn a_run_without_a_terminal_prints_plain_progress_lines() {
    let dir = tempfile::tempdir().unwrap();
    let size = input(dir.path(), 1_000);
    let operator = format!("counter={}", eddy_tests::COUNTER);
    let mut child = Command::new(eddy_bin())
        .args(["run", "--follow", "--operator", &operator])
        .args([
            "--input",
            "in.jsonl",
            "--output",
            "out.jsonl",
            "--state",
            "st",
        ])
        .args(["--progress-interval-ms", "100"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let want = "eddy: progress: line 1000, ";
    let whole = format!(", 100.0% of {size} bytes");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let found = loop {
        assert!(
            Instant::now() < deadline,
            "no complete progress line in {seen:#?}"
        );
        let Some(Ok(line)) = lines.next() else {
            panic!("stderr ended: {seen:#?}");
        };
        if line.starts_with(want) {
            break line;
        }
        seen.push(line);
    };
    // Every event read: the share is the whole file, and no ETA is left.
    assert!(found.ends_with(&whole), "{found}");
    // Earlier lines, if any, were progress lines too, in the same form.
    for l in seen.iter().filter(|l| l.starts_with("eddy: progress:")) {
        assert!(
            l.contains(" events/s, ") && l.contains(&format!("% of {size} bytes")),
            "{l}"
        );
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let summary = rest.iter().find(|l| l.starts_with("eddy: 1000 lines in "));
    assert!(summary.is_some(), "no summary in {rest:#?}");
    assert_eq!(read_jsonl(&dir.path().join("out.jsonl")).len(), 1_000);
}

/// On a terminal (a pseudo-terminal from `script`) the run draws a bar with
/// the position in bytes and an ETA, then clears it for the summary.
#[test]
fn a_run_on_a_terminal_draws_a_progress_bar() {
    let dir = tempfile::tempdir().unwrap();
    let size = input(dir.path(), 300_000);
    let cmd = format!(
        "{} run --operator counter={} --input in.jsonl --output out.jsonl --state st",
        eddy_bin().display(),
        eddy_tests::COUNTER
    );
    // `script` (util-linux) runs the command on a pseudo-terminal and
    // copies what it wrote to the log.
    let o = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "tty.log"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("`script` from util-linux runs the command on a terminal");
    assert!(o.status.success(), "{}", stderr(&o));
    let log =
        String::from_utf8_lossy(&std::fs::read(dir.path().join("tty.log")).unwrap()).into_owned();
    // indicatif writes sizes in binary units with two decimals.
    let total = format!("/{:.2} MiB", size as f64 / (1024.0 * 1024.0));
    assert!(
        log.contains(&total),
        "no bar with the file's size {total} in:\n{log}"
    );
    assert!(log.contains(" ETA "), "no ETA in:\n{log}");
    assert!(
        log.contains("eddy: 300000 lines in "),
        "no summary in:\n{log}"
    );
    assert_eq!(read_jsonl(&dir.path().join("out.jsonl")).len(), 300_000);
}

/// `--quiet`: nothing on stderr at all, even when the run takes longer
/// than the progress interval.
#[test]
fn quiet_prints_no_progress_and_no_summary() {
    let dir = tempfile::tempdir().unwrap();
    input(dir.path(), 200_000);
    let operator = format!("counter={}", eddy_tests::COUNTER);
    let o = eddy_in(
        &[
            "run",
            "--quiet",
            "--operator",
            &operator,
            "--input",
            "in.jsonl",
            "--output",
            "out.jsonl",
            "--state",
            "st",
            "--progress-interval-ms",
            "1",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    assert_eq!(read_jsonl(&dir.path().join("out.jsonl")).len(), 200_000);
}
