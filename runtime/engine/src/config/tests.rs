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
            idle_timeout_ms: None,
        }
    );
    assert_eq!(pl.operators[0].limits.max_timers_per_key, 7);
    let pl = parse("[source]\ntime = \"ts\"\n[source.watermark]\nidle_timeout_ms = 30000\n[[operator]]\nname = \"a\"\ncomponent = \"a.wasm\"\n").unwrap();
    assert_eq!(pl.watermark.idle_timeout_ms, Some(30000));
    let err = parse("[source.watermark]\nidle_timeout_ms = 1000\n[[operator]]\nname = \"a\"\ncomponent = \"a.wasm\"\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("idle_timeout_ms moves the event-time watermark: it needs a time field"),
        "{err}"
    );
    let err = parse("[source]\ntime = \"ts\"\n[source.watermark]\nidle_timeout_ms = 0\n[[operator]]\nname = \"a\"\ncomponent = \"a.wasm\"\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("[source.watermark] idle_timeout_ms must be at least 1"),
        "{err}"
    );
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

fn with_flags(input: &str, output: &str) -> Result<Pipeline, PipelineError> {
    let o = Overrides {
        operators: vec![("c".into(), PathBuf::from("c.wasm"))],
        input: Some(input.into()),
        output: Some(output.into()),
        ..Overrides::default()
    };
    Pipeline::load(None, o)
}

#[test]
fn kafka_addresses_on_the_command_line() {
    let p = with_flags(
        "kafka://b1:9092,b2:9092/in-a,in_b?group=g&until_end=true&time=timestamp",
        "kafka://b1:9092/out?delivery=at-least-once&dead_letter_topic=dead",
    )
    .unwrap();
    let Input::Kafka(i) = &p.input else {
        panic!("{:?}", p.input)
    };
    assert_eq!(i.bootstrap, "b1:9092,b2:9092");
    assert_eq!(i.topics, ["in-a", "in_b"]);
    assert_eq!(i.group, "g");
    assert!(i.until_end && i.timestamp_time);
    assert_eq!(i.key_field, None, "the message key routes by default");
    let Output::Kafka(o) = &p.output else {
        panic!("{:?}", p.output)
    };
    assert_eq!(o.topic, "out");
    assert_eq!(o.delivery, Delivery::AtLeastOnce);
    assert_eq!(o.dead_letter_topic.as_deref(), Some("dead"));

    // Each mistake named.
    let err = |i: &str, o: &str| with_flags(i, o).unwrap_err().to_string();
    assert_eq!(
        err("kafka://b:1/in", "-"),
        "--input `kafka://b:1/in`: add ?group=NAME (the consumer group the offsets are committed in)"
    );
    assert_eq!(
        err("kafka://b:1", "-"),
        "--input `kafka://b:1`: write kafka://HOST:PORT/TOPIC (the topic is missing)"
    );
    assert_eq!(
        err("kafka://b:1/in?group=g&colour=red", "-"),
        "--input: unknown parameter `colour` (known: group, time, until_end, mode, partitioner, instance, standby)"
    );
    assert_eq!(
        err("kafka://b:1/in?group=g&mode=many", "-"),
        "--input: mode = \"many\": use \"single\" (this process reads every partition) or \"group\" (processes with the same group share them)"
    );
    assert_eq!(
        err("kafka://b:1/in?group=g&mode=group&partitioner=fnv", "-"),
        "--input: partitioner = \"fnv\": use \"murmur2\" (Java clients, Kafka Streams, Eddy) or \"crc32\" (librdkafka's default)"
    );
    assert_eq!(
        err("kafka://b:1/in?group=g&mode=group&instance=a/b", "-"),
        "--input: instance = \"a/b\": use 1 to 64 of a-z, A-Z, 0-9, `.`, `_`, `-`"
    );
    let Input::Kafka(i) = with_flags(
        "kafka://b:1/in?group=g&mode=group&partitioner=crc32&instance=east-1&standby=true",
        "kafka://b:1/out",
    )
    .unwrap()
    .input
    else {
        panic!("a Kafka input");
    };
    assert!(i.group_mode);
    assert_eq!(i.partitioner, eddy_kafka::partition::Partitioner::Crc32);
    assert_eq!(i.instance.as_deref(), Some("east-1"));
    assert!(i.standby);
    assert_eq!(
        err("kafka://b:1/in?group=g&mode=group&standby=yes", "-"),
        "--input: standby=yes: use true or false"
    );
    assert_eq!(
        err("kafka://b:1/bad topic?group=g", "-"),
        "--input `kafka://b:1/bad topic?group=g`: `bad topic` is not a Kafka topic name (1 to 249 of a-z, A-Z, 0-9, `.`, `_`, `-`)"
    );
    assert_eq!(
        err("kafka://b:1/in?group=g&until_end=maybe", "-"),
        "--input: until_end=maybe: use true or false"
    );
    assert_eq!(
        err("kafka://b:1/in?group=g", "kafka://b:1/out?delivery=twice"),
        "--output: delivery = \"twice\": use \"exactly-once\" or \"at-least-once\""
    );
    assert_eq!(
        err("kafka://b:1/in?group=g", "kafka://b:1/o1,o2"),
        "--output `kafka://b:1/o1,o2`: name one topic"
    );
}

#[test]
fn kafka_tables_in_the_pipeline_file() {
    let p = parse(
        "[source]\nkey = \"user\"\n[source.kafka]\nbootstrap = \"b:9092\"\ntopic = \"in\"\ngroup = \"g\"\n\
         properties = { \"security.protocol\" = \"SASL_SSL\", \"fetch.wait.max.ms\" = 100 }\n\
         [sink.kafka]\ntopic = \"out\"\n\
         [[operator]]\nname = \"c\"\ncomponent = \"c.wasm\"\n",
    )
    .unwrap();
    let Input::Kafka(i) = &p.input else {
        panic!("{:?}", p.input)
    };
    assert_eq!(
        i.key_field.as_deref(),
        Some("user"),
        "a key field routes by it"
    );
    assert_eq!(
        i.properties,
        [
            ("fetch.wait.max.ms".to_string(), "100".to_string()),
            ("security.protocol".to_string(), "SASL_SSL".to_string())
        ]
    );
    let Output::Kafka(o) = &p.output else {
        panic!("{:?}", p.output)
    };
    // The sink takes the source's brokers and properties.
    assert_eq!(o.bootstrap, "b:9092");
    assert_eq!(o.properties, i.properties);
    assert_eq!(o.delivery, Delivery::ExactlyOnce);

    let err = |t: &str| parse(t).unwrap_err().to_string();
    let op = "[[operator]]\nname = \"c\"\ncomponent = \"c.wasm\"\n";
    assert_eq!(
        err(&format!(
            "[source.kafka]\ntopic = \"in\"\ngroup = \"g\"\n{op}"
        )),
        "[source.kafka]: `bootstrap` (the brokers, host:port) is missing"
    );
    assert_eq!(
        err(&format!(
            "[source.kafka]\nbootstrap = \"b:1\"\ntopic = \"in\"\n{op}"
        )),
        "[source.kafka]: `group` (the consumer group the offsets are committed in) is missing"
    );
    assert_eq!(
        err(&format!("[source]\npath = \"x\"\n[source.kafka]\nbootstrap = \"b:1\"\ntopic = \"in\"\ngroup = \"g\"\n{op}")),
        "[source]: give `path` or a [source.kafka] table, not both"
    );
    assert_eq!(
        err(&format!("[source.kafka]\nbootstrap = \"b:1\"\ntopic = \"in\"\ngroup = \"g\"\nproperties = {{ a = [1] }}\n{op}")),
        "[source.kafka] properties: `a` must be a string, number or boolean, not array"
    );
    assert_eq!(
        err(&format!("[source.kafka]\nbootstrap = \"b:1\"\ntopic = \"in\"\ngroup = \"g\"\ntime = \"arrival\"\n{op}")),
        "[source.kafka]: time = \"arrival\": the only setting is \"timestamp\" (the message timestamp); a field of the value is `[source] time` / --time-field"
    );
    assert!(err(&format!(
        "[source.kafka]\nbootstrap = \"b:1\"\ntopic = \"in\"\ngroup = \"g\"\nfollow = true\n{op}"
    ))
    .contains("unknown field `follow`"));
    assert_eq!(
        err(&format!("[sink.kafka]\ntopic = \"out\"\n{op}")),
        "[sink.kafka]: `bootstrap` (the brokers, host:port) is missing"
    );
    let o = Overrides {
        operators: vec![("c".into(), PathBuf::from("c.wasm"))],
        input: Some("kafka://b:1/in?group=g".into()),
        follow: true,
        ..Overrides::default()
    };
    assert_eq!(
        Pipeline::load(None, o).unwrap_err().to_string(),
        "follow is for a file input: a Kafka input is read until the pipeline is stopped (or, with until_end, to the end of its partitions)"
    );
}

#[test]
fn the_state_cache_budget_takes_sizes_with_units_and_refuses_too_small_ones() {
    assert_eq!(parse_bytes("256MiB"), Ok(Some(256 << 20)));
    assert_eq!(parse_bytes("1 GiB"), Ok(Some(1 << 30)));
    assert_eq!(parse_bytes("500MB"), Ok(Some(500_000_000)));
    assert_eq!(parse_bytes("4096"), Ok(Some(4096)));
    assert_eq!(parse_bytes("unlimited"), Ok(None));
    let e = parse_bytes("12 parsecs").unwrap_err();
    assert!(e.contains("unknown unit \"parsecs\""), "{e}");
    let e = parse_bytes("lots").unwrap_err();
    assert!(e.contains("\"lots\" is not a size"), "{e}");

    let op = "[[operator]]\nname = \"a\"\ncomponent = \"a.wasm\"\n";
    // The default, then the file's, in either form.
    assert_eq!(
        parse(&format!("workers = 2\n{op}")).unwrap().cache_bytes,
        Some(DEFAULT_CACHE_BYTES)
    );
    let pl = parse(&format!(
        "workers = 2\n{op}[state]\ncache_bytes = \"64MiB\"\n"
    ))
    .unwrap();
    assert_eq!(pl.cache_bytes, Some(64 << 20));
    let pl = parse(&format!(
        "workers = 2\n{op}[state]\ncache_bytes = 8388608\n"
    ))
    .unwrap();
    assert_eq!(pl.cache_bytes, Some(8 << 20));
    let pl = parse(&format!("{op}[state]\ncache_bytes = \"unlimited\"\n")).unwrap();
    assert_eq!(pl.cache_bytes, None);
    // Too small for the batches in hand: the error names the minimum.
    let e = parse(&format!(
        "workers = 4\n{op}[state]\ncache_bytes = \"1MiB\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("cache_bytes = 1048576 is too small for 4 worker(s) and 1 operator(s): it must be at least 4793491 bytes"),
        "{e}"
    );
    let e = parse(&format!("{op}[state]\ncache_bytes = \"big\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[state] cache_bytes = \"big\" is not a size"),
        "{e}"
    );
}

#[test]
fn state_compact_takes_auto_off_or_a_table_and_names_the_line_of_a_bad_value() {
    let op = "[[operator]]\nname = \"a\"\ncomponent = \"a.wasm\"\n";
    assert_eq!(parse(op).unwrap().compact, Some(CompactPolicy::AUTO));
    let pl = parse(&format!("{op}[state]\ncompact = \"auto\"\n")).unwrap();
    assert_eq!(pl.compact, Some(CompactPolicy::AUTO));
    let pl = parse(&format!("{op}[state]\ncompact = \"off\"\n")).unwrap();
    assert_eq!(pl.compact, None);
    let pl = parse(&format!(
        "{op}[state]\ncompact = {{ min_free = 0.25, every_ms = 5000 }}\n"
    ))
    .unwrap();
    assert_eq!(
        pl.compact,
        Some(CompactPolicy {
            min_free: 0.25,
            every: Duration::from_secs(5)
        })
    );
    // A field left out keeps the default's.
    let pl = parse(&format!("{op}[state]\ncompact = {{ every_ms = 0 }}\n")).unwrap();
    assert_eq!(
        pl.compact,
        Some(CompactPolicy {
            min_free: 0.5,
            every: Duration::ZERO
        })
    );
    // Bad values: the file, the line (line 5 here) and what is expected.
    for (value, want) in [
        (
            "\"sometimes\"",
            "line 5: [state] compact = \"sometimes\": expected \"auto\", \"off\" or a table { min_free = 0.0 to 1.0, every_ms = milliseconds }",
        ),
        (
            "true",
            "line 5: [state] compact = true: expected \"auto\", \"off\"",
        ),
        (
            "{ min_free = 1.5 }",
            "line 5: [state] compact.min_free = 1.5: expected a fraction of the file from 0.0 to 1.0",
        ),
        (
            "{ min_free = \"half\" }",
            "line 5: [state] compact.min_free = \"half\": expected a fraction",
        ),
        (
            "{ every_ms = -1 }",
            "line 5: [state] compact.every_ms = -1: expected a number of milliseconds (0 or more)",
        ),
        (
            "{ often = 1 }",
            "line 5: [state] compact.often: unknown field: expected \"auto\"",
        ),
    ] {
        let e = parse(&format!("{op}[state]\ncompact = {value}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.toml, line 5"), "{e}");
        assert!(e.contains(want), "{value}: {e}");
    }
}
