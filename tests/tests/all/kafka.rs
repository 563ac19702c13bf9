//! Kafka in and out, against the real broker of `tests/kafka/broker.sh`:
//! exactly-once outputs (read_committed) and exact state across restarts,
//! `kill -9`, and a crash between the Kafka commit and the state
//! directory's; bad records dead-lettered with their topic, partition and
//! offset.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eddy_kafka::rdkafka::config::ClientConfig;
use eddy_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use eddy_kafka::rdkafka::error::KafkaError;
use eddy_kafka::rdkafka::message::Message;
use eddy_kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use eddy_kafka::rdkafka::{Offset, TopicPartitionList};

use crate::util::{
    assert_counter_state, counter_events, eddy_bin, reference, skipped, stderr, Rng,
};

pub(crate) const TIMEOUT: Duration = Duration::from_secs(60);

/// The shared broker, or `None` after saying the test is skipped (in CI,
/// where the broker must run, a failure).
pub(crate) fn broker(test: &str) -> Option<String> {
    match eddy_kafka::testing::shared_bootstrap() {
        Ok(b) => Some(b),
        Err(why) => {
            if std::env::var_os("CI").is_some() {
                panic!("CI must run {test}, but there is no Kafka broker: {why}");
            }
            skipped(&format!("{test}: no Kafka broker: {why}"));
            None
        }
    }
}

/// A broker of `test`'s own in `dir/broker` (one it may stop and
/// restart); `None`, said as skipped, when none starts outside CI.
fn own_broker(test: &str, dir: &Path) -> Option<eddy_kafka::testing::OwnBroker> {
    match eddy_kafka::testing::OwnBroker::start(&dir.join("broker")) {
        Ok(b) => Some(b),
        Err(why) => {
            if std::env::var_os("CI").is_some() {
                panic!("CI must run {test}, but no broker of its own started: {why}");
            }
            skipped(&format!("{test}: no Kafka broker: {why}"));
            None
        }
    }
}

pub(crate) fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

pub(crate) fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(eddy_kafka::admin::create_topic(
            bootstrap, topic, partitions, 1, TIMEOUT,
        ))
        .unwrap_or_else(|e| panic!("creating {topic}: {e}"));
}

/// Produces `(key, value)` records (a `None` key: no key), in order.
pub(crate) fn produce(bootstrap: &str, topic: &str, records: &[(Option<Vec<u8>>, Vec<u8>)]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    for (k, v) in records {
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(v);
        if let Some(k) = k {
            rec = rec.key(k);
        }
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(TIMEOUT).expect("inputs delivered");
}

/// Counter events as keyed Kafka records.
pub(crate) fn counter_records(events: &[(String, u64)]) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    events
        .iter()
        .map(|(k, a)| {
            (
                Some(k.as_bytes().to_vec()),
                format!("{{\"amount\":{a}}}").into_bytes(),
            )
        })
        .collect()
}

/// Every record of `topic` a read_committed reader sees, as (partition,
/// key, value), in partition and offset order.
pub(crate) fn read_committed(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(i32, String, String)> {
    read_committed_raw(bootstrap, topic, partitions)
        .into_iter()
        .map(|(p, k, v)| {
            (
                p,
                k,
                String::from_utf8_lossy(&v.unwrap_or_default()).into_owned(),
            )
        })
        .collect()
}

/// Every record of `topic` as a read_committed reader sees it: (partition,
/// key, value; `None` for a tombstone), in partition and offset order.
pub(crate) fn read_committed_raw(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(i32, String, Option<Vec<u8>>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut at_end = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while at_end.len() < partitions as usize {
        assert!(Instant::now() < deadline, "reading {topic}: no end in time");
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => out.push((
                m.partition(),
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().map(<[u8]>::to_vec),
            )),
        }
    }
    out.sort_by_key(|r| r.0);
    out
}

/// Asserts the counter's outputs in `topic` are exactly one per event of
/// `events`: per key, counts 1, 2, 3, ... in order, and the sums of the
/// reference.
pub(crate) fn assert_outputs_once(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    events: &[(String, u64)],
) {
    let out = read_committed(bootstrap, topic, partitions);
    assert_eq!(
        out.len(),
        events.len(),
        "exactly one output per input event"
    );
    let mut seen: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for (_, key, value) in &out {
        let v: serde_json::Value = serde_json::from_str(value).unwrap();
        let e = seen.entry(key.clone()).or_default();
        e.0 += 1;
        assert_eq!(v["count"].as_u64(), Some(e.0), "{key}: {value}");
        e.1 = v["sum"].as_f64().unwrap();
    }
    for (key, (count, sum)) in reference(events) {
        assert_eq!(seen[&key], (count, sum as f64), "last output of {key}");
    }
}

/// `eddy run` of the counter in `dir` with state in `dir/state` and two
/// workers (`--quiet` when `quiet`); the caller adds the rest.
fn eddy_cmd(dir: &Path, quiet: bool) -> Command {
    let mut c = Command::new(eddy_bin());
    c.arg("run")
        .args(["--operator", &format!("counter={}", eddy_tests::COUNTER)])
        .args(["--state", dir.join("state").to_str().unwrap()])
        .args(["--workers", "2"])
        .current_dir(dir)
        .stdin(Stdio::null());
    if quiet {
        c.arg("--quiet");
    }
    c
}

fn eddy_run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = eddy_cmd(dir, true);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Two runs over a growing topic: each output once, state exact.
#[test]
fn kafka_to_kafka_exactly_once_across_runs() {
    let Some(b) = broker("kafka_to_kafka_exactly_once_across_runs") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (input, output, group) = (unique("in"), unique("out"), unique("g"));
    create_topic(&b, &input, 3);
    create_topic(&b, &output, 2);
    let (events, _) = counter_events(3000, 50, 7);
    let (first, second) = events.split_at(2000);
    let in_url = format!("kafka://{b}/{input}?group={group}&until_end=true");
    let out_url = format!("kafka://{b}/{output}");
    produce(&b, &input, &counter_records(first));
    let o = eddy_run(dir.path(), &["--input", &in_url, "--output", &out_url], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_outputs_once(&b, &output, 2, first);
    assert_counter_state(&dir.path().join("state"), &reference(first));

    produce(&b, &input, &counter_records(second));
    let o = eddy_run(dir.path(), &["--input", &in_url, "--output", &out_url], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_outputs_once(&b, &output, 2, &events);
    assert_counter_state(&dir.path().join("state"), &reference(&events));
}

/// The one window where Kafka and the state directory disagree: the
/// process dies after the Kafka transaction commits and before the state
/// directory's checkpoint does. The restart replays the gap with its
/// outputs suppressed: no output twice, none lost, state exact.
#[test]
fn crash_between_the_kafka_commit_and_the_state_commit_replays_the_gap() {
    let Some(b) = broker("crash_between_the_kafka_commit_and_the_state_commit") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (input, output, group) = (unique("in"), unique("out"), unique("g"));
    create_topic(&b, &input, 2);
    create_topic(&b, &output, 2);
    let (events, _) = counter_events(4000, 40, 11);
    produce(&b, &input, &counter_records(&events));
    let in_url = format!("kafka://{b}/{input}?group={group}&until_end=true");
    let out_url = format!("kafka://{b}/{output}");
    let args = [
        "--input",
        &in_url,
        "--output",
        &out_url,
        "--checkpoint-events",
        "1000",
    ];
    let o = eddy_run(
        dir.path(),
        &args,
        &[("EDDY_TEST_ABORT_AFTER_KAFKA_COMMITS", "2")],
    );
    assert!(!o.status.success(), "the run should have aborted");
    assert!(
        stderr(&o).contains("aborting after a Kafka commit"),
        "{}",
        stderr(&o)
    );
    let o = eddy_cmd(dir.path(), false).args(args).output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    // The second checkpoint's records were replayed: about 1000.
    let at = err
        .find(" replayed with outputs suppressed (Kafka had them)")
        .unwrap_or_else(|| panic!("no replay reported: {err}"));
    let digits = err[..at]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap();
    let replayed: u64 = digits.parse().unwrap();
    assert!((1..=2000).contains(&replayed), "replayed {replayed}: {err}");
    assert_outputs_once(&b, &output, 2, &events);
    assert_counter_state(&dir.path().join("state"), &reference(&events));
}

/// `kill -9` at random moments while the input grows, then a run to the
/// end: each output once, state exact.
#[test]
fn sigkill_mid_stream_then_restart_is_exactly_once() {
    let Some(b) = broker("sigkill_mid_stream_then_restart_is_exactly_once") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (input, output, group) = (unique("in"), unique("out"), unique("g"));
    create_topic(&b, &input, 3);
    create_topic(&b, &output, 3);
    let (events, _) = counter_events(12_000, 60, 5);
    let mut rounds = 0;
    let in_url = format!("kafka://{b}/{input}?group={group}");
    let out_url = format!("kafka://{b}/{output}");
    let mut rng = Rng(99);
    for chunk in events.chunks(1200) {
        rounds += 1;
        produce(&b, &input, &counter_records(chunk));
        let mut child = eddy_cmd(dir.path(), true)
            .args(["--checkpoint-interval-ms", "50"])
            .args(["--input", &in_url, "--output", &out_url])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200 + rng.next() % 1200));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    assert_eq!(rounds, 10);
    let end_url = format!("{in_url}&until_end=true");
    let o = eddy_run(
        dir.path(),
        &["--input", &end_url, "--output", &out_url],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_outputs_once(&b, &output, 3, &events);
    assert_counter_state(&dir.path().join("state"), &reference(&events));
}

/// A record without a key, one whose key is not UTF-8, and one the
/// operator refuses: dead-lettered with topic, partition and offset; the
/// others counted.
#[test]
fn bad_records_are_dead_lettered_with_their_position() {
    let Some(b) = broker("bad_records_are_dead_lettered_with_their_position") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (input, output, group) = (unique("in"), unique("out"), unique("g"));
    create_topic(&b, &input, 1);
    create_topic(&b, &output, 1);
    produce(
        &b,
        &input,
        &[
            (Some(b"a".to_vec()), b"{\"amount\":1}".to_vec()),
            (None, b"{\"amount\":2}".to_vec()),
            (Some(vec![0xff, 0x01]), b"{\"amount\":3}".to_vec()),
            (Some(b"a".to_vec()), b"{\"amount\":\"lots\"}".to_vec()),
            (Some(b"a".to_vec()), b"{\"amount\":5}".to_vec()),
            (
                Some(b"a".to_vec()),
                format!("{{\"amount\":6,\"pad\":\"{}\"}}", "x".repeat(200)).into_bytes(),
            ),
        ],
    );
    // The tables of a pipeline file, this time.
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nmax_line_bytes = 100\n[source.kafka]\nbootstrap = \"{b}\"\ntopic = \"{input}\"\ngroup = \"{group}\"\nuntil_end = true\n[sink.kafka]\ntopic = \"{output}\"\n"
        ),
    )
    .unwrap();
    let o = eddy_run(dir.path(), &["pipeline.toml"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = read_committed(&b, &output, 1);
    let values: Vec<&str> = out.iter().map(|(_, _, v)| v.as_str()).collect();
    assert_eq!(
        values,
        ["{\"count\":1,\"sum\":1.0}", "{\"count\":2,\"sum\":6.0}"]
    );
    let dead = std::fs::read_to_string(dir.path().join("state/dead-letter.jsonl")).unwrap();
    let mut dead: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Records refused before the operator and by it reach the file by
    // different threads.
    dead.sort_by_key(|d| d["offset"].as_u64());
    assert_eq!(dead.len(), 4, "{dead:?}");
    assert_eq!(dead[0]["topic"], input.as_str());
    assert_eq!(dead[0]["partition"], 0);
    assert_eq!(dead[0]["offset"], 1);
    assert!(dead[0]["error"]
        .as_str()
        .unwrap()
        .starts_with("message has no key"));
    assert_eq!(dead[1]["offset"], 2);
    assert_eq!(
        dead[1]["error"],
        "message key is not UTF-8 (invalid byte at offset 0)"
    );
    // The operator's refusal, with its position instead of a line.
    assert_eq!(dead[2]["operator"], "counter");
    assert_eq!(dead[2]["key"], "a");
    assert_eq!(dead[2]["topic"], input.as_str());
    assert_eq!(dead[2]["partition"], 0);
    assert_eq!(dead[2]["offset"], 3);
    assert!(dead[2].get("line").is_none(), "{}", dead[2]);
    assert_eq!(dead[2]["payload"]["amount"], "lots");
    assert_eq!(dead[3]["offset"], 5);
    assert_eq!(
        dead[3]["error"],
        "message value is 221 bytes, longer than max_line_bytes = 100"
    );
}

/// A missing input or output topic is an error at start that names it.
#[test]
fn missing_topics_are_named() {
    let Some(b) = broker("missing_topics_are_named") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (unique("in"), unique("out"));
    create_topic(&b, &input, 1);
    let o = eddy_run(
        dir.path(),
        &[
            "--input",
            &format!("kafka://{b}/no-such-topic-{input}?group=g"),
            "--output",
            "-",
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("Kafka input topic `no-such-topic-{input}`")),
        "{}",
        stderr(&o)
    );
    let o = eddy_run(
        dir.path(),
        &[
            "--input",
            &format!("kafka://{b}/{input}?group=g"),
            "--output",
            &format!("kafka://{b}/{output}"),
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("Kafka output topic `{output}`")),
        "{}",
        stderr(&o)
    );
}

/// A file input cannot give exactly-once output to Kafka: refused with
/// what to do; at least once it works.
#[test]
fn file_input_to_kafka_is_at_least_once_only() {
    let dir = tempfile::tempdir().unwrap();
    let (events, text) = counter_events(500, 10, 3);
    std::fs::write(dir.path().join("in.jsonl"), text).unwrap();
    let o = eddy_run(
        dir.path(),
        &["--input", "in.jsonl", "--output", "kafka://127.0.0.1:1/out"],
        &[],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("exactly-once output to Kafka topic `out` needs a Kafka input"),
        "{}",
        stderr(&o)
    );
    let Some(b) = broker("file_input_to_kafka_is_at_least_once_only") else {
        return;
    };
    let output = unique("out");
    create_topic(&b, &output, 2);
    let url = format!("kafka://{b}/{output}?delivery=at-least-once");
    let o = eddy_run(dir.path(), &["--input", "in.jsonl", "--output", &url], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_outputs_once(&b, &output, 2, &events);
}

/// Sends `sig` (`-TERM`, `-STOP`...) to `child`.
fn signal(child: &std::process::Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Waits until `topic` (2 partitions) holds `n` committed outputs while
/// `child` runs: fails with its `log` if it stops first or they do not
/// come.
fn wait_outputs_of(
    child: &mut std::process::Child,
    log: &dyn Fn() -> String,
    bootstrap: &str,
    topic: &str,
    n: usize,
) {
    let deadline = Instant::now() + 2 * TIMEOUT;
    while read_committed(bootstrap, topic, 2).len() < n {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("eddy stopped ({status}) before its {n} outputs:\n{}", log());
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} outputs:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SIGTERM: `child` stops after a final checkpoint, with success.
fn stop_gracefully(child: &mut std::process::Child, log: &dyn Fn() -> String) {
    signal(child, "-TERM");
    let status = crate::util::wait_within(child, 3 * TIMEOUT, log);
    assert!(status.success(), "{}", log());
}

/// The broker stops and starts again mid-run (on a broker of the test's
/// own): Eddy logs, waits, carries on; after a stop and a run to the end,
/// each output once and the state exact.
#[test]
fn broker_restart_mid_run_loses_and_repeats_nothing() {
    let test = "broker_restart_mid_run_loses_and_repeats_nothing";
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = own_broker(test, dir.path()) else {
        return;
    };
    let b = broker.bootstrap().to_string();
    let (input, output, group) = (unique("in"), unique("out"), unique("g"));
    create_topic(&b, &input, 2);
    create_topic(&b, &output, 2);
    let (events, _) = counter_events(8000, 30, 17);
    let (before, after) = events.split_at(5000);
    produce(&b, &input, &counter_records(before));
    let in_url = format!("kafka://{b}/{input}?group={group}");
    let out_url = format!("kafka://{b}/{output}");
    let log = std::fs::File::create(dir.path().join("eddy.log")).unwrap();
    let mut child = eddy_cmd(dir.path(), true)
        .args(["--checkpoint-interval-ms", "100"])
        .args(["--input", &in_url, "--output", &out_url])
        .stderr(log)
        .spawn()
        .unwrap();
    // Mid-run: once the first records' outputs are there (a loaded
    // machine may take seconds to start the pipeline).
    wait_outputs(&b, &output, 2, 1);
    broker.restart().expect("broker restart");
    produce(&b, &input, &counter_records(after));
    let log = || std::fs::read_to_string(dir.path().join("eddy.log")).unwrap();
    wait_outputs_of(&mut child, &log, &b, &output, events.len());
    // A graceful stop: a final checkpoint.
    stop_gracefully(&mut child, &log);
    let end_url = format!("{in_url}&until_end=true");
    let o = eddy_run(
        dir.path(),
        &["--input", &end_url, "--output", &out_url],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_outputs_once(&b, &output, 2, &events);
    assert_counter_state(&dir.path().join("state"), &reference(&events));
}

/// The broker goes away for longer than the producer waits for its
/// records (3 s here), while the pipeline is busy: its open transaction
/// fails. The transaction is aborted and made again with the same records
/// once the broker is back; the run never stops, and each output is
/// written once.
#[test]
fn a_transaction_the_broker_fails_is_made_again_with_the_same_records() {
    let test = "a_transaction_the_broker_fails_is_made_again_with_the_same_records";
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = own_broker(test, dir.path()) else {
        return;
    };
    let b = broker.bootstrap().to_string();
    let (input, output, group) = (unique("in"), unique("out"), unique("g"));
    create_topic(&b, &input, 2);
    create_topic(&b, &output, 2);
    // Each event costs some work (half a million rounds of arithmetic),
    // so that the pipeline has a backlog of records it fetched when the
    // broker goes away.
    let keys = 100;
    let n = 60_000;
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                Some(format!("k{}", i % keys).into_bytes()),
                br#"{"action":"busy","size":500000}"#.to_vec(),
            )
        })
        .collect();
    produce(&b, &input, &records);
    std::fs::write(
        dir.path().join("pipeline.toml"),
        format!(
            r#"workers = 2

[source.kafka]
bootstrap = "{b}"
topic = "{input}"
group = "{group}"

[[operator]]
name = "counter"
component = "{component}"

[sink.kafka]
topic = "{output}"
# A record not written within 3 s fails its transaction.
properties = {{ "message.timeout.ms" = 3000 }}

[state]
checkpoint_interval_ms = 100
"#,
            component = eddy_tests::FAULTY
        ),
    )
    .unwrap();
    let log_file = dir.path().join("eddy.log");
    let mut child = Command::new(eddy_bin())
        .args(["run", "pipeline.toml", "--quiet"])
        .args(["--state", dir.path().join("state").to_str().unwrap()])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log_file).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_file).unwrap_or_default();
    wait_outputs(&b, &output, 2, 1);
    // The broker goes while the pipeline stands still, then the pipeline
    // works on through its backlog: its records cannot be written.
    signal(&child, "-STOP");
    broker.stop().expect("broker stop");
    signal(&child, "-CONT");
    std::thread::sleep(Duration::from_secs(6));
    broker.resume().expect("broker resume");
    wait_outputs_of(&mut child, &log, &b, &output, n);
    stop_gracefully(&mut child, &log);
    assert!(
        log().contains("making the transaction again"),
        "the broker's absence failed no transaction (the pipeline was done before it went away?):\n{}",
        log()
    );
    // Each event's output once: per key, n = 1, 2, 3, ... in order.
    let out = read_committed(&b, &output, 2);
    assert_eq!(out.len(), n, "exactly one output per input event");
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for (_, key, value) in &out {
        let v: serde_json::Value = serde_json::from_str(value).unwrap();
        let e = seen.entry(key.clone()).or_default();
        *e += 1;
        assert_eq!(v["n"].as_u64(), Some(*e), "{key}: {value}");
    }
    assert_eq!(seen.len(), keys);
}

/// Waits until `topic` holds at least `n` committed records.
fn wait_outputs(bootstrap: &str, topic: &str, partitions: i32, n: usize) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if read_committed(bootstrap, topic, partitions).len() >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{topic}: fewer than {n} outputs");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Hot swap and rollback on a running Kafka pipeline: each output once,
/// per key the versions change once at the barrier and once at the
/// rollback, the state carried through.
#[test]
fn swap_and_rollback_on_a_kafka_pipeline() {
    let Some(b) = broker("swap_and_rollback_on_a_kafka_pipeline") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (input, output, group) = (unique("in"), unique("out"), unique("g"));
    create_topic(&b, &input, 2);
    create_topic(&b, &output, 2);
    let (events, _) = counter_events(3000, 20, 23);
    let state = dir.path().join("state");
    let mut child = eddy_cmd(dir.path(), true)
        .args(["--checkpoint-interval-ms", "100"])
        .args(["--input", &format!("kafka://{b}/{input}?group={group}")])
        .args(["--output", &format!("kafka://{b}/{output}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state_arg = state.to_str().unwrap();
    let mut sent = 0;
    for (step, upto) in [(None, 1000), (Some("swap"), 2000), (Some("rollback"), 3000)] {
        match step {
            Some("swap") => {
                let o = crate::util::eddy_in(
                    &[
                        "swap",
                        "counter",
                        eddy_tests::COUNTER_V2,
                        "--state",
                        state_arg,
                    ],
                    dir.path(),
                );
                assert!(o.status.success(), "{}", stderr(&o));
            }
            Some(_) => {
                let o = crate::util::eddy_in(
                    &["rollback", "counter", "--state", state_arg],
                    dir.path(),
                );
                assert!(o.status.success(), "{}", stderr(&o));
            }
            None => {}
        }
        produce(&b, &input, &counter_records(&events[sent..upto]));
        sent = upto;
        wait_outputs(&b, &output, 2, upto);
    }
    // `eddy status`: per partition, the committed offsets add up to every
    // input record, and the lag is 0 once the partition ends are known.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let o = crate::util::eddy_in(&["status", "--state", state_arg], dir.path());
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let parts: Vec<(i64, String)> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("kafka {input}/")))
            .map(|l| {
                let committed = l
                    .split("committed offset ")
                    .nth(1)
                    .and_then(|r| r.split(',').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(-1);
                (committed, l.rsplit(", ").next().unwrap_or("").to_string())
            })
            .collect();
        let total: i64 = parts.iter().map(|(c, _)| c).sum();
        if parts.len() == 2 && total == 3000 && parts.iter().all(|(_, lag)| lag == "lag 0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "eddy status never showed the partitions caught up:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(child.wait().unwrap().success());
    assert_outputs_once(&b, &output, 2, &events);
    assert_counter_state(&state, &reference(&events));
    // Per key, in order: version 1, then 2 (the swap), then 1 again.
    let out = read_committed(&b, &output, 2);
    let mut phases: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, key, value) in &out {
        let v: serde_json::Value = serde_json::from_str(value).unwrap();
        let version = v["version"].as_u64().unwrap_or(1);
        let p = phases.entry(key.clone()).or_default();
        if p.last() != Some(&version) {
            p.push(version);
        }
    }
    for (key, p) in &phases {
        assert_eq!(p, &[1, 2, 1], "versions of {key}'s outputs in order");
    }
}

/// Event time from a field of the value: an event older than the
/// watermark is dead-lettered (the default late policy) with its position.
#[test]
fn late_kafka_records_are_dead_lettered_with_their_position() {
    let Some(b) = broker("late_kafka_records_are_dead_lettered_with_their_position") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (input, group) = (unique("in"), unique("g"));
    create_topic(&b, &input, 1);
    let rec = |t: u64| {
        (
            Some(b"k".to_vec()),
            format!("{{\"t\":{t},\"amount\":1}}").into_bytes(),
        )
    };
    produce(&b, &input, &[rec(10), rec(20), rec(5), rec(30)]);
    let url = format!("kafka://{b}/{input}?group={group}&until_end=true");
    let o = eddy_run(
        dir.path(),
        &[
            "--input",
            &url,
            "--output",
            "out.jsonl",
            "--time-field",
            "t",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(out.lines().count(), 3, "{out}");
    let dead = std::fs::read_to_string(dir.path().join("state/dead-letter.jsonl")).unwrap();
    let dead: serde_json::Value = serde_json::from_str(dead.trim()).unwrap();
    assert_eq!(dead["offset"], 2);
    assert_eq!(dead["partition"], 0);
    assert_eq!(
        dead["error"],
        "late event: time 5 is below the watermark 20 minus allowed_lateness 0"
    );
}

/// Dead letters to a topic, in the same transactions as the outputs: a
/// read_committed reader of the dead-letter topic sees each once.
#[test]
fn dead_letters_go_to_a_topic_in_the_transactions() {
    let Some(b) = broker("dead_letters_go_to_a_topic_in_the_transactions") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (input, output, dead, group) = (unique("in"), unique("out"), unique("dead"), unique("g"));
    create_topic(&b, &input, 1);
    create_topic(&b, &output, 1);
    create_topic(&b, &dead, 1);
    produce(
        &b,
        &input,
        &[
            (Some(b"a".to_vec()), b"{\"amount\":1}".to_vec()),
            (None, b"{\"amount\":2}".to_vec()),
            (Some(b"a".to_vec()), b"{\"amount\":\"lots\"}".to_vec()),
        ],
    );
    let in_url = format!("kafka://{b}/{input}?group={group}&until_end=true");
    let out_url = format!("kafka://{b}/{output}?dead_letter_topic={dead}");
    let o = eddy_run(dir.path(), &["--input", &in_url, "--output", &out_url], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_committed(&b, &output, 1).len(), 1);
    let mut letters: Vec<serde_json::Value> = read_committed(&b, &dead, 1)
        .iter()
        .map(|(_, _, v)| serde_json::from_str(v).unwrap())
        .collect();
    letters.sort_by_key(|d| d["offset"].as_u64());
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0]["offset"], 1);
    assert!(letters[0]["error"]
        .as_str()
        .unwrap()
        .starts_with("message has no key"));
    assert_eq!(letters[1]["offset"], 2);
    assert_eq!(letters[1]["operator"], "counter");
    // Nothing in the dead-letter file.
    let file =
        std::fs::read_to_string(dir.path().join("state/dead-letter.jsonl")).unwrap_or_default();
    assert_eq!(file, "");
}
