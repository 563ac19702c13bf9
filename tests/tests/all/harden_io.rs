//! Input and output files that must never be destroyed, split or altered:
//! an output that is the input, a half-written last line, numeric keys,
//! outputs that are devices or pipes, write errors, byte-order marks, bytes
//! that are not UTF-8.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::*;

use crate::util::eddy_in as eddy;

fn counter_operator() -> String {
    format!("counter={}", eddy_tests::COUNTER)
}

fn append(path: &Path, text: &[u8]) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text)
        .unwrap();
}

fn state(entries: &[(&str, (u64, u64))]) -> BTreeMap<String, (u64, u64)> {
    entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Dead letters of a run, empty when there is no dead-letter file.
fn dead_letters(path: &Path) -> Vec<serde_json::Value> {
    read_jsonl(path)
}

/// An output or dead-letter file that is the input (by name, through `..`,
/// a symbolic link or a hard link), or an output that is the dead-letter
/// file, is refused before anything is opened for writing; the input stays
/// byte for byte as it was.
#[test]
fn an_output_that_is_the_input_is_refused_and_the_input_kept() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = b"{\"key\":\"a\",\"amount\":1}\n{\"key\":\"b\",\"amount\":2}\n";
    std::fs::write(d.join("in.jsonl"), input).unwrap();
    std::os::unix::fs::symlink("in.jsonl", d.join("link.jsonl")).unwrap();
    std::fs::hard_link(d.join("in.jsonl"), d.join("hard.jsonl")).unwrap();
    std::fs::create_dir(d.join("sub")).unwrap();
    let operator = counter_operator();
    let destroys = "writing it would destroy the input";
    let cases: &[(&[&str], String)] = &[
        (
            &["--output", "in.jsonl"],
            format!("the output file in.jsonl is the input file (same file as in.jsonl): {destroys}; choose another --output"),
        ),
        (
            &["--output", "./sub/../in.jsonl"],
            "the output file ./sub/../in.jsonl is the input file (same file as in.jsonl)".into(),
        ),
        (
            &["--output", "./nosuchdir/../in.jsonl"],
            "the output file ./nosuchdir/../in.jsonl is the input file".into(),
        ),
        (
            &["--output", "link.jsonl"],
            "the output file link.jsonl is the input file (same file as in.jsonl)".into(),
        ),
        (
            &["--output", "hard.jsonl"],
            "the output file hard.jsonl is the input file (same file as in.jsonl)".into(),
        ),
        (
            &["--output", "-", "--dead-letter", "in.jsonl"],
            format!("the dead-letter file in.jsonl is the input file (same file as in.jsonl): {destroys}; choose another --dead-letter"),
        ),
        (
            &["--output", "out.jsonl", "--dead-letter", "./sub/../out.jsonl"],
            "the output file out.jsonl is the dead-letter file (same file as ./sub/../out.jsonl): outputs and dead letters would be mixed in one file".into(),
        ),
    ];
    for (args, message) in cases {
        let mut all = vec![
            "run",
            "--operator",
            &operator,
            "--input",
            "in.jsonl",
            "--state",
            "state",
            "--no-control",
        ];
        all.extend_from_slice(args);
        let o = eddy(&all, d);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(message.as_str()),
            "{args:?}: got {:?}",
            stderr(&o)
        );
        assert_eq!(
            std::fs::read(d.join("in.jsonl")).unwrap(),
            input,
            "{args:?}"
        );
        assert!(!d.join("out.jsonl").exists(), "{args:?}: nothing written");
        assert!(!d.join("nosuchdir").exists(), "{args:?}: nothing created");
    }
    // Standard input or output redirected to the file counts too:
    // `--input - --output in.jsonl < in.jsonl` and `-i in.jsonl > in.jsonl`.
    let redirected = |args: &[&str], stdin: bool| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(d.join("in.jsonl"))
            .unwrap();
        let mut c = Command::new(eddy_bin());
        c.args([
            "run",
            "--operator",
            &operator,
            "--state",
            "state",
            "--no-control",
        ])
        .args(args)
        .current_dir(d);
        if stdin {
            c.stdin(f);
        } else {
            c.stdin(Stdio::null()).stdout(f);
        }
        c.output().unwrap()
    };
    let o = redirected(&["--input", "-", "--output", "in.jsonl"], true);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("the output file in.jsonl is the input file (same file as standard input)"),
        "{}",
        stderr(&o)
    );
    let o = redirected(&["--input", "in.jsonl"], false);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("the output file standard output is the input file (same file as in.jsonl)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(d.join("in.jsonl")).unwrap(), input);
    // Through a pipeline file too (paths relative to its directory).
    std::fs::write(
        d.join("p.toml"),
        format!(
            "[source]\npath = \"in.jsonl\"\n[[operator]]\nname = \"counter\"\ncomponent = \"{}\"\n[sink]\npath = \"./in.jsonl\"\n[state]\ndir = \"state\"\n",
            eddy_tests::COUNTER
        ),
    )
    .unwrap();
    let o = eddy(&["run", "p.toml", "--no-control"], d);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("is the input file"), "{}", stderr(&o));
    assert_eq!(std::fs::read(d.join("in.jsonl")).unwrap(), input);
}

/// A last line still being written (no `\n`, not complete JSON) is left
/// for a later run, which handles the whole line exactly once.
#[test]
fn a_half_written_last_line_is_handled_whole_by_a_later_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"key\":\"a\",\"amount\":1}\n{\"key\":\"a\",\"amo").unwrap();
    let p = pipeline(dir.path(), &input, &[("counter", eddy_tests::COUNTER)], 2);

    let first = run(&p);
    assert_eq!(first.lines, 1);
    assert_eq!(first.bad_lines, 0);
    assert_eq!(first.incomplete_line, Some(2));
    assert!(dead_letters(&p.dead_letter).is_empty());
    assert_counter_state(&p.state_dir, &state(&[("a", (1, 1))]));

    // Still incomplete: still left alone.
    let again = run(&p);
    assert_eq!((again.lines, again.incomplete_line), (0, Some(2)));

    append(&input, b"unt\":5}\n{\"key\":\"b\",\"amount\":2}\n");
    let second = run(&p);
    assert_eq!(second.resumed_after_line, 1);
    assert_eq!((second.lines, second.bad_lines), (2, 0));
    assert_eq!(second.incomplete_line, None);
    assert!(dead_letters(&p.dead_letter).is_empty());
    let events = [
        ("a".to_string(), 1),
        ("a".to_string(), 5),
        ("b".to_string(), 2),
    ];
    assert_counter_state(&p.state_dir, &reference(&events));
    assert_outputs_once(dir.path(), &events);
}

/// A complete last line without its `\n` is handled at once; the `\n`
/// written later does not count as a line of its own.
#[test]
fn a_complete_last_line_without_newline_is_handled_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"key\":\"a\",\"amount\":1}\n{\"key\":\"b\",\"amount\":2}",
    )
    .unwrap();
    let p = pipeline(dir.path(), &input, &[("counter", eddy_tests::COUNTER)], 2);
    let first = run(&p);
    assert_eq!((first.lines, first.incomplete_line), (2, None));
    assert_counter_state(&p.state_dir, &state(&[("a", (1, 1)), ("b", (1, 2))]));

    append(&input, b"\n{\"key\":\"b\",\"amount\":3}\nnot json\n");
    let second = run(&p);
    assert_eq!(second.resumed_after_line, 2);
    assert_eq!((second.lines, second.bad_lines), (2, 1));
    assert_counter_state(&p.state_dir, &state(&[("a", (1, 1)), ("b", (2, 5))]));
    // Line numbers stay those of the file.
    let dead = dead_letters(&p.dead_letter);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["line"], 4);
}

/// Number keys are their literal text: big integers do not share state,
/// `1E2` is not `100`; `1` and `"1"` are one key.
#[test]
fn number_keys_keep_their_literal_text() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"key\":12345678901234567890123,\"amount\":1}\n\
         {\"key\":12345678901234567890124,\"amount\":2}\n\
         {\"key\":1E2,\"amount\":3}\n\
         {\"key\":100,\"amount\":4}\n\
         {\"key\":1,\"amount\":5}\n\
         {\"key\":\"1\",\"amount\":6}\n\
         {\"key\":1.0,\"amount\":7}\n\
         {\"key\":-0.5,\"amount\":8}\n",
    )
    .unwrap();
    let p = pipeline(dir.path(), &input, &[("counter", eddy_tests::COUNTER)], 2);
    let s = run(&p);
    assert_eq!(s.bad_lines, 0);
    assert_counter_state(
        &p.state_dir,
        &state(&[
            ("12345678901234567890123", (1, 1)),
            ("12345678901234567890124", (1, 2)),
            ("1E2", (1, 3)),
            ("100", (1, 4)),
            ("1", (2, 11)),
            ("1.0", (1, 7)),
            ("-0.5", (1, 8)),
        ]),
    );
}

/// `/dev/null` works as output and dead-letter file; no length is kept for
/// it, and a second run is fine too.
#[test]
fn dev_null_is_a_valid_output() {
    let dir = tempfile::tempdir().unwrap();
    let (events, text) = counter_events(2_000, 50, 11);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, format!("{text}not json\n")).unwrap();
    let mut p = pipeline(dir.path(), &input, &[("counter", eddy_tests::COUNTER)], 2);
    p.output = eddy_runtime::Output::File("/dev/null".into());
    p.dead_letter = "/dev/null".into();
    let s = run(&p);
    assert_eq!((s.lines, s.bad_lines), (2_001, 1));
    assert_counter_state(&p.state_dir, &reference(&events));
    let again = run(&p);
    assert_eq!(again.lines, 0);

    // And through the CLI, exit 0.
    let o = eddy(
        &[
            "run",
            "--operator",
            &counter_operator(),
            "--input",
            "in.jsonl",
            "--output",
            "/dev/null",
            "--state",
            "state2",
            "--no-control",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_counter_state(&dir.path().join("state2"), &reference(&events));
}

/// A FIFO output: its reader gets every line.
#[test]
fn a_fifo_output_gets_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("out.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let (events, text) = counter_events(5_000, 40, 5);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, &text).unwrap();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            std::fs::File::open(&fifo)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            s
        })
    };
    let mut p = pipeline(dir.path(), &input, &[("counter", eddy_tests::COUNTER)], 2);
    p.output = eddy_runtime::Output::File(fifo);
    let s = run(&p);
    assert_eq!(s.lines, 5_000);
    let got = reader.join().unwrap();
    let lines: Vec<serde_json::Value> = got
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), events.len());
    assert_counter_state(&p.state_dir, &reference(&events));
}

/// A full disk fails the run with the file and the OS error.
#[test]
fn a_full_disk_names_the_output_and_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, text) = counter_events(100, 10, 1);
    std::fs::write(dir.path().join("in.jsonl"), &text).unwrap();
    let o = eddy(
        &[
            "run",
            "--operator",
            &counter_operator(),
            "--input",
            "in.jsonl",
            "--output",
            "/dev/full",
            "--state",
            "state",
            "--no-control",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("writing output /dev/full: No space left on device"),
        "{e}"
    );
    assert!(!e.contains("the output writer stopped"), "{e}");
}

/// A closed stdout fails the run with "writing to stdout: Broken pipe".
#[test]
fn a_closed_stdout_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, text) = counter_events(50_000, 100, 2);
    std::fs::write(dir.path().join("in.jsonl"), &text).unwrap();
    let mut child = Command::new(eddy_bin())
        .args([
            "run",
            "--operator",
            &counter_operator(),
            "--input",
            "in.jsonl",
            "--output",
            "-",
            "--state",
            "state",
            "--no-control",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("writing to stdout: Broken pipe"),
        "{}",
        stderr(&o)
    );
}

/// A UTF-8 byte-order mark at the start of a file or of stdin is skipped,
/// not dead-lettered with the first line.
#[test]
fn a_byte_order_mark_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\u{feff}{\"key\":\"a\",\"amount\":1}\n{\"key\":\"b\",\"amount\":2}\n";
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let p = pipeline(dir.path(), &input, &[("counter", eddy_tests::COUNTER)], 2);
    let s = run(&p);
    assert_eq!((s.lines, s.bad_lines), (2, 0));
    assert_counter_state(&p.state_dir, &state(&[("a", (1, 1)), ("b", (1, 2))]));

    let mut child = Command::new(eddy_bin())
        .args([
            "run",
            "--operator",
            &counter_operator(),
            "--input",
            "-",
            "--output",
            "out2.jsonl",
            "--state",
            "state2",
            "--no-control",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("rejected"), "{}", stderr(&o));
    assert_counter_state(
        &dir.path().join("state2"),
        &state(&[("a", (1, 1)), ("b", (1, 2))]),
    );
}

/// A dead-lettered line that is not UTF-8 keeps its bytes, in base64.
#[test]
fn a_dead_letter_that_is_not_utf8_keeps_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        b"{\"key\":\"\xff\xfe\",\"amount\":1}\n{\"key\":\"a\",\"amount\":1}\n",
    )
    .unwrap();
    let p = pipeline(dir.path(), &input, &[("counter", eddy_tests::COUNTER)], 1);
    let s = run(&p);
    assert_eq!(s.bad_lines, 1);
    let dead = dead_letters(&p.dead_letter);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["line"], 1);
    assert!(dead[0].get("payload").is_none(), "{}", dead[0]);
    // base64 of the line's bytes.
    assert_eq!(
        dead[0]["payload_base64"],
        "eyJrZXkiOiL//iIsImFtb3VudCI6MX0="
    );
}
