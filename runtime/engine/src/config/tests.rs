//! Unit tests of the pipeline file.

use super::*;

fn parse(text: &str) -> Result<Pipeline, PipelineError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.toml");
    std::fs::write(&p, text).unwrap();
    Pipeline::load(Some(&p), Overrides::default())
}

#[test]
fn file_paths_are_relative_to_the_file_and_defaults_apply() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.toml");
    std::fs::write(&p, "[source]\npath = \"in.jsonl\"\n[[operator]]\nname = \"c\"\ncomponent = \"c.wasm\"\nconfig = { field = \"x\" }\n").unwrap();
    let pl = Pipeline::load(Some(&p), Overrides::default()).unwrap();
    assert_eq!(pl.input, Input::File(dir.path().join("in.jsonl")));
    assert_eq!(pl.operators[0].component, dir.path().join("c.wasm"));
    assert_eq!(pl.operators[0].config, serde_json::json!({"field": "x"}));
    assert_eq!(pl.output, Output::Stdout);
    assert_eq!(pl.key_field, "key");
    assert_eq!(pl.state_dir, PathBuf::from("eddy-data"));
    assert!(
        pl.operators[0].limits.cpu_limit,
        "the CPU limit is on by default"
    );
}

#[test]
fn the_cpu_limit_can_be_turned_off_per_operator() {
    let pl = parse(
        "[[operator]]\nname = \"a\"\ncomponent = \"a.wasm\"\ncpu_limit = false\n\
         [[operator]]\nname = \"b\"\ncomponent = \"b.wasm\"\n",
    )
    .unwrap();
    assert!(!pl.operators[0].limits.cpu_limit);
    assert!(pl.operators[1].limits.cpu_limit);
    let e = parse("[[operator]]\nname = \"a\"\ncomponent = \"a.wasm\"\ncpu_limit = \"no\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 4") && e.contains("cpu_limit"), "{e}");
}

#[test]
fn bad_files_name_the_field_and_line() {
    let e = parse("[source]\npath = \"x\"\nkye = \"k\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 3") && e.contains("unknown field `kye`"),
        "{e}"
    );
    let e = parse("workers = \"two\"\n").unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("workers"), "{e}");
    let e = parse("[source]\n").unwrap_err().to_string();
    assert_eq!(
        e,
        "no operator: give --operator NAME=PATH.wasm or [[operator]] tables in a pipeline file"
    );
    let e = parse(
        "[[operator]]\nname=\"a\"\ncomponent=\"x\"\n[[operator]]\nname=\"a\"\ncomponent=\"y\"\n",
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "operator name `a` is used twice");
}

#[test]
fn the_same_file_twice_is_refused_devices_may_be_shared() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("in.jsonl"), "x\n").unwrap();
    std::os::unix::fs::symlink(d.join("in.jsonl"), d.join("link")).unwrap();
    std::os::unix::fs::symlink(d.join("new.jsonl"), d.join("dangling")).unwrap();
    let check = |input: &str, output: &str, dead: &str| {
        let o = Overrides {
            operators: vec![("c".into(), "c.wasm".into())],
            input: Some(d.join(input).to_str().unwrap().into()),
            output: Some(if output == "-" {
                "-".into()
            } else {
                d.join(output).to_str().unwrap().into()
            }),
            dead_letter: Some(d.join(dead)),
            no_control: true,
            ..Overrides::default()
        };
        Pipeline::load(None, o)
            .unwrap()
            .check_files()
            .map_err(|e| e.to_string())
    };
    assert!(check("in.jsonl", "out.jsonl", "dead.jsonl").is_ok());
    let e = check("in.jsonl", "link", "dead.jsonl").unwrap_err();
    assert!(
        e.contains("the output file") && e.contains("is the input file"),
        "{e}"
    );
    let e = check("in.jsonl", "x/../in.jsonl", "dead.jsonl").unwrap_err();
    assert!(e.contains("is the input file"), "{e}");
    let e = check("in.jsonl", "-", "./in.jsonl").unwrap_err();
    assert!(
        e.contains("the dead-letter file") && e.contains("--dead-letter"),
        "{e}"
    );
    // Files that do not exist yet, by path.
    let e = check("in.jsonl", "new.jsonl", "y/./../new.jsonl").unwrap_err();
    assert!(e.contains("is the dead-letter file"), "{e}");
    // A dangling link is its target.
    let e = check("in.jsonl", "dangling", "new.jsonl").unwrap_err();
    assert!(e.contains("is the dead-letter file"), "{e}");
    assert!(!d.join("new.jsonl").exists() && !d.join("x").exists());
    // A path that cannot be looked at is left to fail where it is
    // opened, with its own message.
    assert!(check("in.jsonl", "out.jsonl", "in.jsonl/dead.jsonl").is_ok());
    // Devices are not destroyed by sharing.
    assert!(check("in.jsonl", "/dev/null", "/dev/null").is_ok());
}

#[test]
fn the_watermark_table_is_read_and_a_zero_step_refused() {
    let pl = parse("[source]\ntime = \"ts\"\n[source.watermark]\nmax_out_of_order = 5000\nstep = 100\n[[operator]]\nname = \"a\"\ncomponent = \"a.wasm\"\nmax_timers_per_key = 7\n").unwrap();
    assert_eq!(
        pl.watermark,
        WatermarkSpec {
            max_out_of_order: 5000,
            step: 100,
            allowed_lateness: 0,
            late: LatePolicy::DeadLetter,
        }
    );
    assert_eq!(pl.operators[0].limits.max_timers_per_key, 7);
    let pl = parse("[[operator]]\nname = \"a\"\ncomponent = \"a.wasm\"\n").unwrap();
    assert_eq!(pl.watermark, WatermarkSpec::default());
    assert_eq!(pl.operators[0].limits.max_timers_per_key, 1024);
    let op = "[[operator]]\nname = \"a\"\ncomponent = \"a.wasm\"\n";
    let e = parse(&format!("[source.watermark]\nstep = 0\n{op}"))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "[source.watermark] step must be at least 1");
    let e = parse("[source.watermark]\nmax_out_of_order = -1\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("max_out_of_order") && e.contains("line 2"),
        "{e}"
    );
    let e = parse("[source.watermark]\nbound = 1\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `bound`"), "{e}");
}

#[test]
fn the_late_policy_is_read_and_a_bad_one_named_with_its_line() {
    let op = "[[operator]]\nname = \"a\"\ncomponent = \"a.wasm\"\n";
    for (text, late) in [
        ("drop", LatePolicy::Drop),
        ("deliver", LatePolicy::Deliver),
        ("dead-letter", LatePolicy::DeadLetter),
    ] {
        let pl = parse(&format!(
            "[source]\ntime = \"ts\"\n[source.watermark]\nallowed_lateness = 7\nlate = \"{text}\"\n{op}"
        ))
        .unwrap();
        assert_eq!(pl.watermark.allowed_lateness, 7);
        assert_eq!(pl.watermark.late, late);
    }
    let e = parse(&format!(
        "[source]\ntime = \"ts\"\n[source.watermark]\nlate = \"ignore\"\n{op}"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("line 4")
            && e.contains("unknown variant `ignore`")
            && e.contains("`dead-letter`, `drop`, `deliver`"),
        "{e}"
    );
    let e = parse(&format!("[source.watermark]\nallowed_lateness = -5\n{op}"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 2") && e.contains("allowed_lateness"),
        "{e}"
    );
}

#[test]
fn ttl_tables_are_read_and_need_a_time_field() {
    let op = "[[operator]]\nname = \"a\"\ncomponent = \"a.wasm\"\n";
    let pl = parse(&format!(
        "[source]\ntime = \"ts\"\n{op}ttl.seen = {{ after = 10 }}\nttl.history = {{ after = 7, refresh = \"read\" }}\n"
    ))
    .unwrap();
    assert_eq!(
        pl.operators[0].ttl,
        vec![
            TtlSpec {
                name: "history".into(),
                after: 7,
                refresh: Refresh::Read
            },
            TtlSpec {
                name: "seen".into(),
                after: 10,
                refresh: Refresh::Write
            },
        ]
    );
    let e = parse(&format!("{op}ttl.seen = {{ after = 10 }}\n"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "operator `a`: ttl.seen is in event time: it needs a time field ([source] time)"
    );
    for (bad, want) in [
        ("ttl.seen = { after = -1 }", "after"),
        (
            "ttl.seen = { after = 1, refresh = \"never\" }",
            "unknown variant `never`",
        ),
        ("ttl.seen = { refresh = \"read\" }", "missing field `after`"),
        (
            "ttl.seen = { after = 1, every = 2 }",
            "unknown field `every`",
        ),
    ] {
        let e = parse(&format!("[source]\ntime = \"ts\"\n{op}{bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.contains("line 6"), "{bad}: {e}");
    }
}
