//! Kafka group mode on the real broker of `tests/kafka/broker.sh`: several
//! `eddy run` processes of one pipeline share a 12-partition input through
//! their consumer group, and each partition's state follows it through
//! the changelog topic. Every scenario ends with each output exactly once
//! under read_committed (per key, counts 1, 2, 3, ... with no gap or
//! repeat, which a lost or doubled state would break) and the state in
//! the changelog exactly the reference: a steady run with a fourth process
//! joining, `kill -9` mid-stream, a SIGTERM hand-off (no record handled
//! twice), a process paused past its session timeout (fenced), and a
//! state directory deleted while its process was stopped. Also: the
//! partitioners agree with librdkafka's placement, and a record in the
//! wrong partition is dead-lettered.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eddy_kafka::partition::Partitioner;
use eddy_kafka::rdkafka::config::ClientConfig;
use eddy_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use eddy_kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use eddy_kafka::rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{
    assert_outputs_once, broker, counter_records, create_topic, produce, read_committed_raw,
    unique, TIMEOUT,
};
use crate::util::{counter_events, eddy_bin, record_values, reference, stacks};

const PARTITIONS: i32 = 12;

/// One pipeline's processes in group mode, each with its own state
/// directory, their stderr in `dir/log-N`.
struct Group {
    dir: tempfile::TempDir,
    bootstrap: String,
    input: String,
    output: String,
    group: String,
    procs: Vec<Option<Child>>,
}

impl Group {
    fn new(bootstrap: &str) -> Group {
        Group::with(bootstrap, "counter", eddy_tests::COUNTER, "")
    }

    /// A group running `component` as operator `name`, with `extra`
    /// lines at the end of its `[[operator]]` table... and after it.
    fn with(bootstrap: &str, name: &str, component: &str, extra: &str) -> Group {
        let input = unique("gin");
        let output = unique("gout");
        create_topic(bootstrap, &input, PARTITIONS);
        create_topic(bootstrap, &output, PARTITIONS);
        let dir = tempfile::tempdir().unwrap();
        let group = unique("grp");
        std::fs::write(
            dir.path().join("pipeline.toml"),
            format!(
                r#"workers = 2

[source.kafka]
bootstrap = "{bootstrap}"
topic = "{input}"
group = "{group}"
mode = "group"

[[operator]]
name = "{name}"
component = "{component}"
{extra}

[sink.kafka]
topic = "{output}"

[state]
checkpoint_interval_ms = 200
"#
            ),
        )
        .unwrap();
        Group {
            dir,
            bootstrap: bootstrap.to_string(),
            input,
            output,
            group,
            procs: Vec::new(),
        }
    }

    /// Turns `standby` on in the pipeline file: each process keeps a
    /// copy of the partitions the others own.
    fn standby(&self) {
        let file = self.dir.path().join("pipeline.toml");
        let text = std::fs::read_to_string(&file).unwrap();
        let text = text.replace("mode = \"group\"\n", "mode = \"group\"\nstandby = true\n");
        std::fs::write(&file, text).unwrap();
    }

    fn state(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("state-{i}"))
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("log-{i}"))).unwrap_or_default()
    }

    /// Starts process `i` (again, if it ran before).
    fn start(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("log-{i}")))
            .unwrap();
        let child = Command::new(eddy_bin())
            .args(["run", "pipeline.toml", "--progress-interval-ms", "600000"])
            .args(["--state", self.state(i).to_str().unwrap()])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        if self.procs.len() <= i {
            self.procs.resize_with(i + 1, || None);
        }
        self.procs[i] = Some(child);
    }

    fn pid(&self, i: usize) -> String {
        self.procs[i].as_ref().unwrap().id().to_string()
    }

    fn signal(&self, i: usize, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid(i)])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} process {i}");
    }

    fn kill9(&mut self, i: usize) {
        let mut c = self.procs[i].take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM: process `i` hands its partitions over and stops; `true`
    /// when it exited with success.
    fn stop(&mut self, i: usize) -> bool {
        self.signal(i, "-TERM");
        let c = self.procs[i].as_mut().unwrap();
        let pid = c.id();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                self.procs[i] = None;
                return status.success();
            }
            if Instant::now() >= deadline {
                panic!(
                    "process {i} did not stop; its log:\n{}\n{}",
                    self.log(i),
                    stacks(pid)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until process `i` exits on its own; its status.
    fn wait_exit(&mut self, i: usize, within: Duration) -> std::process::ExitStatus {
        let c = self.procs[i].as_mut().unwrap();
        let pid = c.id();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                self.procs[i] = None;
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "process {i} did not exit; its log:\n{}\n{}",
                    self.log(i),
                    stacks(pid)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until process `i` owns partitions (`eddy status` lists them).
    fn wait_owns(&self, i: usize) -> usize {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let o = Command::new(eddy_bin())
                .args(["status", "--state", self.state(i).to_str().unwrap()])
                .output()
                .unwrap();
            let owned = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("kafka "))
                .count();
            if owned > 0 {
                return owned;
            }
            assert!(
                Instant::now() < deadline,
                "process {i} got no partitions; its log:\n{}",
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Produces `events`.
    fn produce(&self, events: &[(String, u64)]) {
        produce(&self.bootstrap, &self.input, &counter_records(events));
    }

    /// Waits until the group has committed every input record (what is
    /// left running has handled everything); panics with the logs if
    /// that takes longer than `within`.
    fn wait_drained(&self, within: Duration) {
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", &self.group)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(&self.input, p);
        }
        let deadline = Instant::now() + within;
        loop {
            let committed = probe
                .committed_offsets(tpl.clone(), Duration::from_secs(10))
                .ok();
            let drained = committed.as_ref().is_some_and(|c| {
                (0..PARTITIONS).all(|p| {
                    let (_, high) = probe
                        .fetch_watermarks(&self.input, p, Duration::from_secs(10))
                        .unwrap();
                    matches!(
                        c.find_partition(&self.input, p).map(|e| e.offset()),
                        Some(Offset::Offset(o)) if o == high
                    )
                })
            });
            if drained {
                return;
            }
            if Instant::now() > deadline {
                let logs: String = (0..self.procs.len())
                    .map(|i| format!("--- process {i}:\n{}\n", self.log(i)))
                    .collect();
                // Where each partition is: committed offset / end.
                let lag: Vec<String> = (0..PARTITIONS)
                    .map(|p| {
                        let end = probe
                            .fetch_watermarks(&self.input, p, Duration::from_secs(10))
                            .map(|(_, high)| high.to_string())
                            .unwrap_or_else(|e| e.to_string());
                        let at = committed
                            .as_ref()
                            .and_then(|c| c.find_partition(&self.input, p))
                            .map(|e| format!("{:?}", e.offset()))
                            .unwrap_or_else(|| "none".into());
                        format!("{p}: {at} of {end}")
                    })
                    .collect();
                panic!(
                    "the group did not commit every input record in {within:?} (partition: committed of end: {})\n{logs}",
                    lag.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Asserts every output exactly once and the changelog's state
    /// exactly the reference of `events`.
    fn assert_exact(&self, events: &[(String, u64)]) {
        let changelog = format!("{}-counter-changelog", self.group);
        // A killed process's transaction is aborted by the broker at its
        // timeout: until then it hides what follows it.
        settled(&self.bootstrap, &self.output);
        settled(&self.bootstrap, &changelog);
        assert_outputs_once(&self.bootstrap, &self.output, PARTITIONS, events);
        let mut latest: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        for (p, key, value) in read_committed_raw(&self.bootstrap, &changelog, PARTITIONS) {
            let key = key
                .strip_prefix('s')
                .unwrap_or_else(|| panic!("a state record: {key:?}"))
                .to_string();
            assert_eq!(
                p,
                Partitioner::Murmur2.partition(key.as_bytes(), PARTITIONS),
                "changelog record of {key} in its key's partition"
            );
            latest.insert(key, value);
        }
        let got: BTreeMap<String, (u64, u64)> = latest
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .map(|(k, rec)| {
                let v = &record_values(&rec, &["totals"])[0];
                let sum = v["sum"].as_f64().unwrap();
                (k, (v["count"].as_u64().unwrap(), sum as u64))
            })
            .collect();
        assert_eq!(got, reference(events), "the state in the changelog");
    }

    /// Stops every process still running (SIGTERM), checking each exits
    /// with success.
    fn stop_all(&mut self) {
        for i in 0..self.procs.len() {
            if self.procs[i].is_some() {
                assert!(
                    self.stop(i),
                    "process {i} failed; its log:\n{}",
                    self.log(i)
                );
            }
        }
    }

    /// Records handled by process `i`'s runs, from their summaries.
    fn handled(&self, i: usize) -> u64 {
        self.log(i)
            .lines()
            .filter_map(|l| l.split("; counter: ").nth(1))
            .map(|rest| rest.split(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for c in self.procs.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until no transaction is open on `topic` (its last stable offset
/// is its end, in every partition).
fn settled(bootstrap: &str, topic: &str) {
    let client = |isolation: &str| -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", unique("probe"))
            .set("isolation.level", isolation)
            .create()
            .unwrap()
    };
    let (committed, all) = (client("read_committed"), client("read_uncommitted"));
    let deadline = Instant::now() + TIMEOUT;
    for p in 0..PARTITIONS {
        loop {
            let t = Duration::from_secs(10);
            let (_, stable) = committed.fetch_watermarks(topic, p, t).unwrap();
            let (_, end) = all.fetch_watermarks(topic, p, t).unwrap();
            if stable == end {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}/{p}: a transaction stayed open (stable offset {stable}, end {end})"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Events `from..to` of one deterministic stream over 600 keys.
fn events(n: usize) -> Vec<(String, u64)> {
    counter_events(n, 600, 0x9e37_79b9).0
}

/// Three processes share the partitions; a fourth joins mid-stream and
/// takes some over with their state.
#[test]
fn three_processes_then_a_fourth_joins_exactly_once() {
    let Some(bootstrap) = broker("three_processes_then_a_fourth_joins_exactly_once") else {
        return;
    };
    let mut g = Group::new(&bootstrap);
    let all = events(24_000);
    for i in 0..3 {
        g.start(i);
    }
    g.produce(&all[..12_000]);
    g.wait_drained(TIMEOUT);
    g.start(3);
    // Cooperative-sticky: the others give up a quarter of the partitions
    // in one rebalance, the fourth gets them in the next.
    assert!(g.wait_owns(3) > 0);
    g.produce(&all[12_000..]);
    g.wait_drained(TIMEOUT);
    g.stop_all();
    g.assert_exact(&all);
    // The fourth was given partitions, whose state it restored.
    let log = g.log(3);
    assert!(
        log.contains("keys restored from the changelog topics"),
        "the fourth process restored state:\n{log}"
    );
    // A SIGTERM hands over after a final checkpoint, and the processes
    // resumed where the others committed: no record handled twice.
    let handled: u64 = (0..4).map(|i| g.handled(i)).sum();
    assert_eq!(handled, all.len() as u64, "records handled in all");
}

/// `kill -9` of one of three processes mid-stream: its partitions move to
/// the others with their last committed state, and nothing is lost or
/// doubled.
#[test]
fn kill_9_of_one_process_moves_its_partitions_and_loses_nothing() {
    let Some(bootstrap) = broker("kill_9_of_one_process_moves_its_partitions_and_loses_nothing")
    else {
        return;
    };
    let mut g = Group::new(&bootstrap);
    let all = events(30_000);
    for i in 0..3 {
        g.start(i);
    }
    g.produce(&all[..10_000]);
    g.wait_drained(TIMEOUT);
    g.produce(&all[10_000..20_000]);
    g.kill9(1);
    let killed = Instant::now();
    g.produce(&all[20_000..]);
    g.wait_drained(TIMEOUT);
    eprintln!(
        "kill_9: every record committed {:?} after the kill",
        killed.elapsed()
    );
    g.stop_all();
    g.assert_exact(&all);
}

/// With standby copies, the process that takes a killed one's partitions
/// reads only the changelog records its copy lacks (here none or a few),
/// not the partitions' whole changelog, and loses nothing.
#[test]
fn with_standby_a_takeover_reads_only_what_its_copy_lacks() {
    let Some(bootstrap) = broker("with_standby_a_takeover_reads_only_what_its_copy_lacks") else {
        return;
    };
    let mut g = Group::new(&bootstrap);
    g.standby();
    let all = events(20_000);
    g.start(0);
    g.start(1);
    g.wait_owns(1);
    g.produce(&all[..10_000]);
    g.wait_drained(TIMEOUT);
    // Process 0's copy of process 1's partitions follows their changelog
    // (a step every 100 ms when idle).
    std::thread::sleep(Duration::from_secs(3));
    g.kill9(1);
    g.produce(&all[10_000..]);
    g.wait_drained(TIMEOUT);
    g.stop_all();
    g.assert_exact(&all);
    let log = g.log(0);
    let takeover = log
        .lines()
        .rfind(|l| l.contains(" restored ("))
        .unwrap_or_else(|| panic!("process 0 took partitions over:\n{log}"));
    let read: usize = takeover
        .split(" keys, ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("records read in `{takeover}`"));
    let changelog = format!("{}-counter-changelog", g.group);
    let total = read_committed_raw(&bootstrap, &changelog, PARTITIONS).len();
    eprintln!("standby: the takeover read {read} of {total} changelog records: {takeover}");
    assert!(
        read * 10 < total,
        "the takeover read {read} changelog records of {total}: the standby copy did not follow\n{log}"
    );
}

/// SIGTERM of one of two processes: the other takes its partitions from
/// its final checkpoint, so no record is handled twice.
#[test]
fn sigterm_hands_partitions_over_without_replay() {
    let Some(bootstrap) = broker("sigterm_hands_partitions_over_without_replay") else {
        return;
    };
    let mut g = Group::new(&bootstrap);
    let all = events(20_000);
    g.start(0);
    g.start(1);
    g.produce(&all[..10_000]);
    g.wait_drained(TIMEOUT);
    assert!(g.stop(0), "process 0 failed:\n{}", g.log(0));
    g.produce(&all[10_000..]);
    g.wait_drained(TIMEOUT);
    g.stop_all();
    g.assert_exact(&all);
    assert_eq!(
        g.handled(0) + g.handled(1),
        all.len() as u64,
        "records handled: none twice\n{}\n{}",
        g.log(0),
        g.log(1)
    );
}

/// A process paused (SIGSTOP) past its session timeout loses its
/// partitions; when it resumes it is fenced: what it writes never becomes
/// visible, and it stops with an error that says so.
#[test]
fn a_process_paused_past_its_session_timeout_is_fenced() {
    let Some(bootstrap) = broker("a_process_paused_past_its_session_timeout_is_fenced") else {
        return;
    };
    let mut g = Group::new(&bootstrap);
    let all = events(20_000);
    g.start(0);
    g.start(1);
    g.produce(&all[..8_000]);
    g.wait_drained(TIMEOUT);
    // Paused while it owns partitions (a process paused before it took
    // any is no zombie: resumed, it just joins).
    g.wait_owns(0);
    g.wait_owns(1);
    g.signal(0, "-STOP");
    g.produce(&all[8_000..14_000]);
    // Session timeout 6 s: process 1 takes everything.
    g.wait_drained(TIMEOUT);
    g.signal(0, "-CONT");
    // Bounded by its transaction calls' timeouts and retries: under load
    // it once took over two minutes to notice (see docs/kafka.md).
    let resumed = Instant::now();
    let status = g.wait_exit(0, 10 * TIMEOUT);
    eprintln!("the zombie stopped {:?} after SIGCONT", resumed.elapsed());
    assert!(!status.success(), "the zombie stops with an error");
    let log = g.log(0);
    eprintln!("its log:\n{log}");
    assert!(
        log.contains("were lost") || log.contains("fenced") || log.contains("generation"),
        "the zombie says why it stops:\n{log}"
    );
    g.produce(&all[14_000..]);
    g.wait_drained(TIMEOUT);
    g.stop_all();
    g.assert_exact(&all);
}

/// A process paused in the middle of its work (records read, a
/// transaction open, maybe a checkpoint under way) past its session
/// timeout: the others take its partitions from its last commit; resumed,
/// it stops promptly, and nothing it did after that commit is visible.
#[test]
fn a_process_paused_mid_stream_is_fenced_and_stops_promptly() {
    let Some(bootstrap) = broker("a_process_paused_mid_stream_is_fenced_and_stops_promptly") else {
        return;
    };
    let mut g = Group::new(&bootstrap);
    let all = events(40_000);
    g.start(0);
    g.start(1);
    g.produce(&all[..4_000]);
    g.wait_drained(TIMEOUT);
    // It is paused while it owns partitions (see above).
    g.wait_owns(0);
    g.wait_owns(1);
    // Records keep coming while process 0 is stopped: it has some read
    // and not committed, a transaction open.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for chunk in all[4_000..30_000].chunks(1_000) {
                g.produce(chunk);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        std::thread::sleep(Duration::from_millis(1_000));
        g.signal(0, "-STOP");
    });
    // Past its session timeout (6 s): process 1 takes its partitions.
    std::thread::sleep(Duration::from_secs(
        std::env::var("PAUSE_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(9),
    ));
    g.wait_drained(TIMEOUT);
    g.signal(0, "-CONT");
    let resumed = Instant::now();
    let status = g.wait_exit(0, 10 * TIMEOUT);
    let took = resumed.elapsed();
    let log = g.log(0);
    eprintln!("the zombie stopped {took:?} after SIGCONT; its log:\n{log}");
    assert!(!status.success(), "the zombie stops with an error");
    assert!(
        log.contains("were lost") || log.contains("fenced"),
        "the zombie says why it stops:\n{log}"
    );
    // Within a second or so here; bounded generously for a loaded CI
    // machine (it once took minutes, before the sink checked between
    // its long waits whether the group had dropped it).
    assert!(
        took < Duration::from_secs(120),
        "the zombie took {took:?} to stop:\n{log}"
    );
    g.produce(&all[30_000..]);
    g.wait_drained(TIMEOUT);
    g.stop_all();
    g.assert_exact(&all);
}

/// A process whose state directory is deleted while it is stopped gets
/// its partitions' state back from the changelog.
#[test]
fn a_deleted_state_directory_is_restored_from_the_changelog() {
    let Some(bootstrap) = broker("a_deleted_state_directory_is_restored_from_the_changelog") else {
        return;
    };
    let mut g = Group::new(&bootstrap);
    let all = events(16_000);
    g.start(0);
    g.start(1);
    g.produce(&all[..8_000]);
    g.wait_drained(TIMEOUT);
    g.stop_all();
    std::fs::remove_dir_all(g.state(0)).unwrap();
    std::fs::remove_dir_all(g.state(1)).unwrap();
    g.start(0);
    g.start(1);
    g.wait_owns(0);
    g.wait_owns(1);
    g.produce(&all[8_000..]);
    g.wait_drained(TIMEOUT);
    g.stop_all();
    g.assert_exact(&all);
    for i in 0..2 {
        assert!(
            g.log(i).contains("keys restored from the changelog topics"),
            "process {i} restored its partitions' state:\n{}",
            g.log(i)
        );
    }
}

/// A group running the delay operator (`tracking`'s: an alert 100 after
/// a package's last scan), with event time from `ts`.
fn delay_group(bootstrap: &str) -> Group {
    Group::with(
        bootstrap,
        "delay",
        eddy_tests::DELAY,
        "config = { max_gap = 100 }\n\n[source]\ntime = \"ts\"",
    )
}

/// A scan of package `key` at time `ts`, as a Kafka record.
fn scan(key: &str, ts: u64) -> (Option<Vec<u8>>, Vec<u8>) {
    (
        Some(key.as_bytes().to_vec()),
        format!("{{\"location\":\"Oslo\",\"status\":\"scanned\",\"ts\":{ts}}}").into_bytes(),
    )
}

/// Event-time timers follow their partitions: packages scanned while one
/// process owned everything have their delay timers in the changelog; a
/// second process takes half the partitions, restores the timers with the
/// state, and each fires exactly once when the watermark passes it.
#[test]
fn timers_follow_their_partitions() {
    let Some(bootstrap) = broker("timers_follow_their_partitions") else {
        return;
    };
    let mut g = delay_group(&bootstrap);
    // Deadlines at 1100; no partition's watermark reaches it yet (one time
    // for all: a partition's first record does not find the input's
    // watermark moved past it by another's).
    let first: Vec<_> = (0..200).map(|i| scan(&format!("p{i}"), 1000)).collect();
    g.start(0);
    produce(&bootstrap, &g.input, &first);
    g.wait_drained(TIMEOUT);
    g.start(1);
    g.wait_owns(1);
    // Every partition's watermark goes to 5000: every delay fires.
    let later: Vec<_> = (0..600).map(|i| scan(&format!("f{i}"), 5000)).collect();
    produce(&bootstrap, &g.input, &later);
    g.wait_drained(TIMEOUT);
    g.stop_all();
    assert_each_delay_fired_once(&g, 200);
    let log = g.log(1);
    assert!(
        log.contains("keys restored from the changelog topics"),
        "the second process restored state:\n{log}"
    );
    // In the changelog, the packages' timers are gone (fired) and the
    // later scans' are pending (at 5100).
    let changelog = format!("{}-delay-changelog", g.group);
    let mut timers: BTreeMap<String, Option<i64>> = BTreeMap::new();
    for (_, key, value) in read_committed_raw(&bootstrap, &changelog, PARTITIONS) {
        if let Some(t) = key.strip_prefix('t') {
            let at = value.map(|v| i64::from_le_bytes(v.try_into().unwrap()));
            timers.insert(t.to_string(), at);
        }
    }
    for i in 0..200 {
        assert_eq!(timers[&format!("p{i}\0delay")], None, "p{i}'s timer fired");
    }
    for i in 0..600 {
        assert_eq!(timers[&format!("f{i}\0delay")], Some(5100), "f{i}'s timer");
    }
}

/// Asserts the delay operator's output holds exactly one `delayed` alert
/// for each of packages `p0..p{n}`, at its last scan plus 100.
fn assert_each_delay_fired_once(g: &Group, n: usize) {
    settled(&g.bootstrap, &g.output);
    let out = read_committed_raw(&g.bootstrap, &g.output, PARTITIONS);
    let mut delayed: BTreeMap<String, u32> = BTreeMap::new();
    for (_, key, value) in &out {
        let v: serde_json::Value = serde_json::from_slice(value.as_deref().unwrap()).unwrap();
        if v["event"] == "delayed" {
            *delayed.entry(key.clone()).or_default() += 1;
            assert_eq!(v["deadline"], v["last_scan"].as_i64().unwrap() + 100);
        }
    }
    let want: BTreeMap<String, u32> = (0..n).map(|i| (format!("p{i}"), 1)).collect();
    assert_eq!(
        delayed,
        want,
        "each package's delay fired exactly once\n{}\n{}",
        g.log(0),
        g.log(1)
    );
}

/// A process restarted on a state directory that holds timers of
/// partitions another process owns now fires only the timers of the
/// partitions the group gives it back: its directory is a cache, not
/// what it owns.
#[test]
fn a_restarted_process_fires_only_the_timers_of_its_partitions() {
    let Some(bootstrap) = broker("a_restarted_process_fires_only_the_timers_of_its_partitions")
    else {
        return;
    };
    let mut g = delay_group(&bootstrap);
    // Process 0 owns everything while every package's timer is set.
    let first: Vec<_> = (0..200).map(|i| scan(&format!("p{i}"), 1000)).collect();
    g.start(0);
    produce(&bootstrap, &g.input, &first);
    g.wait_drained(TIMEOUT);
    // Process 1 takes half, then everything; process 0 comes back and
    // gets some of them again.
    g.start(1);
    g.wait_owns(1);
    assert!(g.stop(0), "process 0 stops cleanly:\n{}", g.log(0));
    g.start(0);
    g.wait_owns(0);
    let later: Vec<_> = (0..600).map(|i| scan(&format!("f{i}"), 5000)).collect();
    produce(&bootstrap, &g.input, &later);
    g.wait_drained(TIMEOUT);
    g.stop_all();
    assert_each_delay_fired_once(&g, 200);
}

/// A chain that re-keys (views per user emit under the item; recommend
/// counts co-watches per item) across three processes, one killed with
/// `kill -9` mid-stream: the events for `recommend` go through its
/// repartition topic to the process owning the item, and both operators'
/// state in the changelog topics is exactly what one process reading the
/// same events from a file ends with.
#[test]
fn a_chain_that_rekeys_goes_through_its_repartition_topic() {
    let Some(bootstrap) = broker("a_chain_that_rekeys_goes_through_its_repartition_topic") else {
        return;
    };
    let extra = format!(
        "config = {{ history = 5 }}\n\n[[operator]]\nname = \"recommend\"\ncomponent = \"{}\"\nconfig = {{ top = 3 }}",
        eddy_tests::RECOMMEND
    );
    let mut g = Group::with(&bootstrap, "views", eddy_tests::VIEWS, &extra);
    let mut rng = crate::util::Rng(0x5eed);
    let views: Vec<(String, String)> = (0..6000)
        .map(|_| {
            let user = format!("u{}", rng.next() % 300);
            let item = format!("i{}", rng.next() % 40);
            (user, item)
        })
        .collect();
    let records: Vec<_> = views
        .iter()
        .map(|(u, i)| {
            (
                Some(u.as_bytes().to_vec()),
                format!("{{\"user\":\"{u}\",\"item\":\"{i}\"}}").into_bytes(),
            )
        })
        .collect();
    // The same events through one process from a file: the reference.
    let dir = g.dir.path().to_path_buf();
    let lines: String = views
        .iter()
        .map(|(u, i)| format!("{{\"user\":\"{u}\",\"item\":\"{i}\"}}\n"))
        .collect();
    std::fs::write(dir.join("views.jsonl"), lines).unwrap();
    std::fs::write(
        dir.join("reference.toml"),
        format!(
            "workers = 2\n[source]\npath = \"views.jsonl\"\nkey = \"user\"\n[[operator]]\nname = \"views\"\ncomponent = \"{}\"\nconfig = {{ history = 5 }}\n[[operator]]\nname = \"recommend\"\ncomponent = \"{}\"\nconfig = {{ top = 3 }}\n[sink]\npath = \"ref-out.jsonl\"\n[state]\ndir = \"ref-state\"\n",
            eddy_tests::VIEWS,
            eddy_tests::RECOMMEND
        ),
    )
    .unwrap();
    let o = Command::new(eddy_bin())
        .args(["run", "--quiet", "reference.toml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want_out = std::fs::read_to_string(dir.join("ref-out.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(want_out > 1000);

    for i in 0..3 {
        g.start(i);
    }
    produce(&bootstrap, &g.input, &records[..2000]);
    g.wait_drained(TIMEOUT);
    produce(&bootstrap, &g.input, &records[2000..4000]);
    g.kill9(1);
    produce(&bootstrap, &g.input, &records[4000..]);
    g.wait_drained(TIMEOUT);
    // Then what went through the repartition topic: every output there.
    let deadline = Instant::now() + 2 * TIMEOUT;
    loop {
        settled(&bootstrap, &g.output);
        let n = read_committed_raw(&bootstrap, &g.output, PARTITIONS).len();
        if n >= want_out {
            assert_eq!(n, want_out, "outputs: each once");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} outputs of {want_out}\n{}\n{}",
            g.log(0),
            g.log(2)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    g.stop_all();
    let store = eddy_runtime::Store::open(&dir.join("ref-state")).unwrap();
    for op in ["views", "recommend"] {
        let want: BTreeMap<String, Vec<u8>> = store.scan(op).unwrap().into_iter().collect();
        assert!(want.len() >= 40, "{op}: the reference has state");
        let changelog = format!("{}-{op}-changelog", g.group);
        let mut got: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        for (_, key, value) in read_committed_raw(&bootstrap, &changelog, PARTITIONS) {
            if let Some(k) = key.strip_prefix('s') {
                got.insert(k.to_string(), value);
            }
        }
        let got: BTreeMap<String, Vec<u8>> =
            got.into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
        assert_eq!(got.len(), want.len(), "{op}: keys with state");
        for (k, v) in &want {
            assert!(got.get(k) == Some(v), "{op}: the state of {k}");
        }
    }
}

/// Where librdkafka's partitioners put keys is where Eddy expects them.
#[test]
fn partitioners_agree_with_librdkafka() {
    let Some(bootstrap) = broker("partitioners_agree_with_librdkafka") else {
        return;
    };
    for (name, ours) in [
        ("murmur2_random", Partitioner::Murmur2),
        ("consistent_random", Partitioner::Crc32),
    ] {
        let topic = unique("parts");
        create_topic(&bootstrap, &topic, PARTITIONS);
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("partitioner", name)
            .create()
            .unwrap();
        for i in 0..500 {
            let key = format!("key-{i}-ü");
            p.send(BaseRecord::to(&topic).key(&key).payload("x"))
                .unwrap();
        }
        p.flush(TIMEOUT).unwrap();
        let got = read_committed_raw(&bootstrap, &topic, PARTITIONS);
        assert_eq!(got.len(), 500);
        for (partition, key, _) in got {
            assert_eq!(
                ours.partition(key.as_bytes(), PARTITIONS),
                partition,
                "{name}: key {key}"
            );
        }
    }
}

/// A record whose key hashes to another partition (the producer used
/// another partitioner) is dead-lettered with the reason, and the pipeline
/// file's `partitioner` fixes it.
#[test]
fn a_record_in_the_wrong_partition_is_dead_lettered() {
    let Some(bootstrap) = broker("a_record_in_the_wrong_partition_is_dead_lettered") else {
        return;
    };
    let g = Group::new(&bootstrap);
    // librdkafka's default partitioner: CRC32.
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("partitioner", "consistent_random")
        .create()
        .unwrap();
    let keys: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    for k in &keys {
        p.send(BaseRecord::to(&g.input).key(k).payload("{\"amount\":1}"))
            .unwrap();
    }
    p.flush(TIMEOUT).unwrap();
    let misplaced = keys
        .iter()
        .filter(|k| {
            Partitioner::Murmur2.partition(k.as_bytes(), PARTITIONS)
                != Partitioner::Crc32.partition(k.as_bytes(), PARTITIONS)
        })
        .count();
    assert!(misplaced > 0);
    let mut g = g;
    g.start(0);
    g.wait_drained(TIMEOUT);
    g.stop_all();
    let dead = std::fs::read_to_string(g.state(0).join("dead-letter.jsonl")).unwrap_or_default();
    assert_eq!(dead.lines().count(), misplaced, "dead letters:\n{dead}");
    let first: serde_json::Value = serde_json::from_str(dead.lines().next().unwrap()).unwrap();
    let err = first["error"].as_str().unwrap();
    assert!(
        err.contains("(murmur2 over 12 partitions) but the record is in partition")
            && err.contains("set [source.kafka] partitioner to how its producers place keys"),
        "{err}"
    );
}
