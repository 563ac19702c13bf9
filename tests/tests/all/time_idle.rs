//! The watermark's idle timeout (`[source.watermark] idle_timeout_ms`) on
//! a live input, driven by the test clock (`EDDY_TEST_CLOCK`): once no
//! input has come for the timeout, the watermark goes on with the clock
//! from the largest time read, and the timers it passes fire. The clock
//! is a file the test writes, so no step waits for real time to pass, and
//! each watermark is exact.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use eddy_kafka::rdkafka::config::ClientConfig;
use eddy_kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eddy_runtime::control;
use serde_json::{json, Value};

use crate::kafka::{broker, create_topic, unique, TIMEOUT};
use crate::util::*;

/// Sets the test clock to `ms` (written whole: a reader never sees part of
/// the number).
fn set_clock(d: &Path, ms: u64) {
    let tmp = d.join("clock.tmp");
    std::fs::write(&tmp, ms.to_string()).unwrap();
    std::fs::rename(&tmp, d.join("clock")).unwrap();
}

fn append(d: &Path, lines: &[Value]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("in.jsonl"))
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

/// Waits (at most a minute) until the running pipeline's status satisfies
/// `ok`; fails with the last status.
fn wait_status(d: &Path, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let socket = control::socket_path(&d.join("st"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(Ok(s)) = control::get_json(&socket, "/status") {
            if ok(&s) {
                return s;
            }
            last = s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what}: not within a minute; last status: {last}");
}

/// Waits (at most a minute) until `out.jsonl` has `n` lines; returns them.
fn wait_outputs(d: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = read_jsonl(&d.join("out.jsonl"));
        if out.len() >= n || Instant::now() >= deadline {
            assert_eq!(out.len(), n, "outputs: {out:?}");
            return out;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `eddy run` in `d` of the `timers` operator from `source` (the pipeline
/// file's `[source]` tables), with the test clock `d/clock`.
fn start(d: &Path, source: &str) -> Child {
    let toml = format!(
        r#"workers = 2
{source}
[[operator]]
name = "timers"
component = "{}"
[sink]
path = "out.jsonl"
dead_letter = "dead.jsonl"
[state]
dir = "st"
"#,
        eddy_tests::TIMERS
    );
    std::fs::write(d.join("pipeline.toml"), toml).unwrap();
    Command::new(eddy_bin())
        .args(["run", "-q", "pipeline.toml"])
        .env("EDDY_TEST_CLOCK", d.join("clock"))
        .current_dir(d)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(d.join("log")).unwrap())
        .spawn()
        .unwrap()
}

fn watermark(s: &Value) -> Option<i64> {
    s["watermark"].as_i64()
}

#[test]
fn an_idle_live_input_moves_the_watermark_on_with_the_clock_and_fires_what_it_passes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    set_clock(d, 0);
    std::fs::write(d.join("in.jsonl"), "").unwrap();
    append(
        d,
        &[
            json!({"key": "a", "ts": 1000, "set": [["timeout", 6000]]}),
            json!({"key": "b", "ts": 2000}),
        ],
    );
    let source = r#"[source]
path = "in.jsonl"
follow = true
key = "key"
time = "ts"
[source.watermark]
idle_timeout_ms = 3000"#;
    let mut child = start(d, source);
    let log = || std::fs::read_to_string(d.join("log")).unwrap_or_default();

    // Read at clock 0: the watermark is the largest time read.
    wait_status(d, "both events read", |s| {
        s["lines_read"] == 2 && watermark(s) == Some(2000)
    });
    assert_eq!(wait_outputs(d, 2).len(), 2);

    // Idle for 3,500 ms (past the timeout): 2000 + 3500.
    set_clock(d, 3500);
    wait_status(d, "the first idle advance", |s| watermark(s) == Some(5500));
    // `/metrics` says the same (read by a Prometheus text parser).
    let metrics = crate::http::scrape(&control::socket_path(&d.join("st")));
    assert_eq!(
        metrics.get(&("eddy_watermark".into(), String::new(), String::new())),
        Some(&5500.0),
        "{metrics:?}"
    );
    // Idle for 4,001 ms: 6001 passes the timer at 6000, which fires.
    set_clock(d, 4001);
    let out = wait_outputs(d, 3);
    assert_eq!(out[2]["key"], "a", "{out:?}");
    assert_eq!(
        out[2]["value"],
        json!({"fired": "timeout", "at": 6000, "wm": 6001, "n": 1}),
        "{out:?}"
    );

    // Input again, at clock 4001. An event older than the watermark the
    // clock moved on is late (dead-lettered); a newer one moves it as
    // usual.
    append(
        d,
        &[
            json!({"key": "a", "ts": 3000}),
            json!({"key": "b", "ts": 7000, "set": [["t", 8000]]}),
        ],
    );
    wait_status(d, "the new events read", |s| {
        s["lines_read"] == 4 && watermark(s) == Some(7000)
    });
    let out = wait_outputs(d, 4);
    assert_eq!(out[3]["key"], "b", "{out:?}");
    // Idle for 4,001 ms again (from the clock at that input): 7000 + 4001.
    set_clock(d, 4001 + 4001);
    let out = wait_outputs(d, 5);
    assert_eq!(
        out[4],
        json!({"key": "b", "value": {"fired": "t", "at": 8000, "wm": 11001, "n": 1}}),
        "{out:?}"
    );
    let dead = read_jsonl(&d.join("dead.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["line"], 3, "{dead:?}");
    assert!(
        dead[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("late event: time 3000 is below the watermark 6001"),
        "{dead:?}"
    );

    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = wait_within(&mut child, Duration::from_secs(60), log);
    assert!(status.success(), "{}", log());
}

/// Produces `events` (their `key` as the record's key) to partition
/// `partition` of `topic`, in order.
fn produce_to(bootstrap: &str, topic: &str, partition: i32, events: &[Value]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for e in events {
        let (key, value) = (e["key"].as_str().unwrap(), e.to_string());
        let rec = BaseRecord::to(topic)
            .partition(partition)
            .key(key)
            .payload(&value);
        p.send(rec).map_err(|(e, _)| e).unwrap();
    }
    p.flush(TIMEOUT).expect("records delivered");
}

/// On a Kafka input the watermark is the smallest of the partitions':
/// with `idle_timeout_ms`, a partition that has had no record for that
/// long moves on with the clock from its largest time, so it no longer
/// holds the watermark back, and a timer fires though that partition went
/// quiet while another stays busy.
#[test]
fn an_idle_kafka_partition_no_longer_holds_the_watermark_back() {
    let Some(b) = broker("an_idle_kafka_partition_no_longer_holds_the_watermark_back") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (topic, group) = (unique("idle"), unique("g"));
    create_topic(&b, &topic, 2);
    set_clock(d, 0);
    // max_out_of_order 5000: whichever partition Eddy reads first, the
    // other's first record is on time.
    produce_to(
        &b,
        &topic,
        0,
        &[json!({"key": "a", "ts": 1000, "set": [["timeout", 5000]]})],
    );
    produce_to(&b, &topic, 1, &[json!({"key": "b", "ts": 2000})]);
    let source = format!(
        r#"[source]
key = "key"
time = "ts"
[source.kafka]
bootstrap = "{b}"
topic = "{topic}"
group = "{group}"
[source.watermark]
max_out_of_order = 5000
idle_timeout_ms = 3000"#
    );
    let mut child = start(d, &source);
    let log = || std::fs::read_to_string(d.join("log")).unwrap_or_default();
    assert_eq!(wait_outputs(d, 2).len(), 2);

    // Partition 0 goes on (read at clock 1000), partition 1 is quiet: the
    // watermark is held at partition 1's, 2000 - 5000.
    set_clock(d, 1000);
    produce_to(&b, &topic, 0, &[json!({"key": "a", "ts": 30000})]);
    assert_eq!(wait_outputs(d, 3)[2]["key"], "a");
    wait_status(d, "held by the quiet partition", |s| {
        watermark(s) == Some(-3000)
    });

    // From here partition 0 stays busy (a record every 10 ms, read at
    // clock 3500 or later: never idle), which keeps Eddy's loop busy too.
    set_clock(d, 3500);
    let busy = Arc::new(AtomicBool::new(true));
    let feeder = {
        let (b, topic, busy) = (b.clone(), topic.clone(), busy.clone());
        std::thread::spawn(move || {
            let p: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &b)
                .set("linger.ms", "0")
                .create()
                .unwrap();
            let mut ts = 30_001;
            let deadline = Instant::now() + 2 * TIMEOUT;
            while busy.load(Ordering::Relaxed) && Instant::now() < deadline {
                let value = json!({"key": "c", "ts": ts}).to_string();
                let rec = BaseRecord::to(&topic).partition(0).key("c").payload(&value);
                p.send(rec).map_err(|(e, _)| e).unwrap();
                p.flush(TIMEOUT).expect("record delivered");
                ts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // Partition 1 idle for 3,500 ms: 2000 + 3500 - 5000 (partition 0 is
    // at 30000 and more, minus 5000).
    wait_status(d, "partition 1 moved on", |s| watermark(s) == Some(500));
    // Partition 1 idle for 8,001 ms: 5001 passes the timer at 5000.
    set_clock(d, 8001);
    let deadline = Instant::now() + TIMEOUT;
    let fired = loop {
        let out = read_jsonl(&d.join("out.jsonl"));
        if let Some(f) = out.iter().find(|o| o["value"].get("fired").is_some()) {
            break f.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no timer fired: {out:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    busy.store(false, Ordering::Relaxed);
    feeder.join().unwrap();
    assert_eq!(
        fired,
        json!({"key": "a", "value": {"fired": "timeout", "at": 5000, "wm": 5001, "n": 1}}),
        "{}",
        log()
    );
    assert!(
        read_jsonl(&d.join("dead.jsonl")).is_empty(),
        "{}",
        std::fs::read_to_string(d.join("dead.jsonl")).unwrap_or_default()
    );

    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = wait_within(&mut child, Duration::from_secs(60), log);
    assert!(status.success(), "{}", log());
}
