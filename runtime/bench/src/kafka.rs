//! `eddy bench-kafka`: the keyed counter from a Kafka topic to a Kafka
//! topic with exactly-once on, against the same events from a JSON Lines
//! file to a file, in one invocation (the broker runs on the same machine
//! and shares its cores).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use eddy_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use eddy_kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use eddy_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use eddy_runtime::{
    Delivery, Input, KafkaInput, KafkaOutput, OperatorSpec, Output, Pipeline, Shutdown,
};

/// Measure a Kafka-to-Kafka pipeline (exactly once) against a file one.
#[derive(clap::Args, Debug)]
pub struct BenchKafkaArgs {
    /// The counter component.
    #[arg(
        long,
        default_value = "plugins/target/wasm32-wasip2/release/counter.wasm"
    )]
    pub component: PathBuf,
    /// The broker (host:port) [default: $EDDY_KAFKA_BOOTSTRAP, else the
    /// repository's test broker, started by tests/kafka/broker.sh].
    #[arg(long)]
    pub bootstrap: Option<String>,
    /// Events.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Partitions of the input and output topics.
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Worker threads [default: number of cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Checkpoint (and Kafka transaction) intervals to run the Kafka
    /// pipeline with, in ms, comma-separated: one run each.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub interval_ms: Vec<u64>,
    /// Also run group mode (`mode = "group"`, state in changelog topics):
    /// one pipeline, then two sharing the partitions (in this process,
    /// each with its own consumer, producer and state directory), to the
    /// same end; then the failover: two `eddy run` processes under a
    /// steady input, one killed with `kill -9`, and the time until its
    /// partitions are committed again by the other.
    #[arg(long)]
    pub group: bool,
    /// Input records per second during the failover measure.
    #[arg(long, default_value_t = 20_000)]
    pub failover_rate: u64,
    /// Distinct keys given state before the failover (one record each,
    /// handled before the kill): the state the takeover restores. The
    /// failover runs twice, without and with standby copies.
    #[arg(long, default_value_t = 0)]
    pub failover_keys: u64,
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("eddy-bench-{name}-{}-{nanos}", std::process::id())
}

/// Runs the benchmark and prints its report.
pub fn run(a: BenchKafkaArgs) -> Result<()> {
    if !a.component.is_file() {
        bail!(
            "component {} not found: build it with `cd plugins && cargo build --release --target wasm32-wasip2`",
            a.component.display()
        );
    }
    let bootstrap = match &a.bootstrap {
        Some(b) => b.clone(),
        None => eddy_kafka::testing::shared_bootstrap()
            .map_err(|e| anyhow::anyhow!("no Kafka broker: {e}"))?,
    };
    let workers = a.workers.unwrap_or_else(eddy_runtime::default_workers);
    println!(
        "bench-kafka: {} events, {} keys, {} partitions, {workers} workers, broker {bootstrap} (same machine)",
        a.events, a.keys, a.partitions
    );
    let dir = tempfile::tempdir()?;

    // The same events in a file and in a topic.
    let (input, group_base) = (unique("in"), unique("group"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timeout = Duration::from_secs(60);
    rt.block_on(eddy_kafka::admin::create_topic(
        &bootstrap,
        &input,
        a.partitions,
        1,
        timeout,
    ))?;
    let file = dir.path().join("events.jsonl");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("partitioner", "murmur2_random")
        .create()?;
    let t = Instant::now();
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let (mut key, mut value) = (String::new(), String::new());
        for _ in 0..a.events {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = x % a.keys;
            let amount = (x >> 32) % 100;
            key.clear();
            value.clear();
            use std::fmt::Write as _;
            let _ = write!(key, "user-{k}");
            let _ = write!(value, "{{\"amount\":{amount}}}");
            writeln!(f, "{{\"key\":\"{key}\",\"amount\":{amount}}}")?;
            let mut rec = BaseRecord::to(&input)
                .key(key.as_bytes())
                .payload(value.as_bytes());
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        producer.poll(Duration::from_millis(5));
                    }
                }
            }
        }
        f.flush()?;
    }
    producer.flush(Duration::from_secs(300))?;
    println!(
        "  input written: file and topic `{input}` in {:.1}s (not part of the measure)",
        t.elapsed().as_secs_f64()
    );

    let spec = || OperatorSpec {
        name: "counter".into(),
        component: a.component.clone(),
        config: serde_json::json!({}),
        limits: Default::default(),
        ttl: Vec::new(),
        window: None,
    };
    let engine = eddy_runtime::engine()?;
    let base = |input: Input, output: Output, state: &str, interval: u64| Pipeline {
        input,
        key_field: "key".into(),
        time_field: None,
        max_line_bytes: 1 << 20,
        operators: vec![spec()],
        output,
        dead_letter: dir.path().join(state).join("dead-letter.jsonl"),
        state_dir: dir.path().join(state),
        workers,
        checkpoint_interval: Duration::from_millis(interval),
        checkpoint_events: None,
        follow: false,
        watch: false,
        control: false,
        http: None,
        verify_state: false,
        cache_bytes: None,
        compact: None,
        watermark: Default::default(),
    };

    // The file pipeline.
    let p = base(
        Input::File(file.clone()),
        Output::File(dir.path().join("out.jsonl")),
        "state-file",
        1000,
    );
    let ops = eddy_runtime::load_operators(&engine, &p)?;
    let s = eddy_runtime::run(&p, ops, &Shutdown::new())?;
    let file_rate = rate(s.lines, s.elapsed);
    println!(
        "  file -> file:              {file_rate:>10.0} events/s ({} events, {} checkpoints, {:.2}s)",
        s.lines,
        s.checkpoints,
        s.elapsed.as_secs_f64()
    );
    let _ = std::fs::remove_file(dir.path().join("out.jsonl"));

    for (i, &interval) in a.interval_ms.iter().enumerate() {
        let output = unique("out");
        rt.block_on(eddy_kafka::admin::create_topic(
            &bootstrap,
            &output,
            a.partitions,
            1,
            timeout,
        ))?;
        let p = base(
            Input::Kafka(Box::new(KafkaInput {
                bootstrap: bootstrap.clone(),
                topics: vec![input.clone()],
                group: format!("{group_base}-{i}"),
                key_field: None,
                timestamp_time: false,
                until_end: true,
                properties: Vec::new(),
                group_mode: false,
                partitioner: Default::default(),
                instance: None,
                standby: false,
            })),
            Output::Kafka(Box::new(KafkaOutput {
                bootstrap: bootstrap.clone(),
                topic: output.clone(),
                delivery: Delivery::ExactlyOnce,
                transactional_id: Some(unique("txn")),
                dead_letter_topic: None,
                properties: Vec::new(),
            })),
            &format!("state-kafka-{i}"),
            interval,
        );
        let ops = eddy_runtime::load_operators(&engine, &p)?;
        let s = eddy_runtime::run(&p, ops, &Shutdown::new())
            .with_context(|| format!("the Kafka pipeline (interval {interval} ms)"))?;
        let handled: u64 = s.operators.iter().map(|o| o.handled).sum();
        if handled != a.events as u64 {
            bail!(
                "the Kafka pipeline handled {handled} events, not {}",
                a.events
            );
        }
        let r = rate(s.lines, s.elapsed);
        println!(
            "  kafka -> kafka, exactly once, checkpoint/transaction every {interval} ms: {r:>10.0} events/s ({} events, {} transactions, {:.2}s); kafka/file ratio {:.3}",
            s.lines,
            s.checkpoints,
            s.elapsed.as_secs_f64(),
            r / file_rate
        );
    }
    if !a.group {
        return Ok(());
    }
    let interval = a.interval_ms.first().copied().unwrap_or(1000);
    let mut one = None;
    for members in [1usize, 2] {
        let output = unique("out");
        rt.block_on(eddy_kafka::admin::create_topic(
            &bootstrap,
            &output,
            a.partitions,
            1,
            timeout,
        ))?;
        let group = format!("{group_base}-g{members}");
        let mut runs = Vec::new();
        let shutdown = Shutdown::new();
        let mut started = Vec::new();
        for m in 0..members {
            let mut p = base(
                Input::Kafka(Box::new(group_input(&bootstrap, &input, &group))),
                Output::Kafka(Box::new(KafkaOutput {
                    bootstrap: bootstrap.clone(),
                    topic: output.clone(),
                    delivery: Delivery::ExactlyOnce,
                    transactional_id: None,
                    dead_letter_topic: None,
                    properties: Vec::new(),
                })),
                &format!("state-group-{members}-{m}"),
                interval,
            );
            p.workers = (workers / members).max(1);
            let ops = eddy_runtime::load_operators(&engine, &p)?;
            started.push((p, ops));
        }
        let t = Instant::now();
        for (p, ops) in started {
            runs.push(eddy_runtime::start(&p, ops, &shutdown)?);
        }
        wait_committed(
            &bootstrap,
            &input,
            &group,
            a.partitions,
            Duration::from_secs(600),
        )?;
        let took = t.elapsed();
        shutdown.trigger();
        let mut handled = 0;
        for r in runs {
            let s = r.wait()?;
            handled += s.operators.iter().map(|o| o.handled).sum::<u64>();
        }
        if handled != a.events as u64 {
            bail!(
                "group mode with {members} pipeline(s) handled {handled} events, not {}",
                a.events
            );
        }
        let r = rate(a.events as u64, took);
        let against = match one {
            None => {
                one = Some(r);
                String::new()
            }
            Some(o) => format!("; against one: {:.3}", r / o),
        };
        println!(
            "  kafka -> kafka, group mode, {members} pipeline(s) of {} worker(s), checkpoint every {interval} ms: {r:>10.0} events/s ({:.2}s to every offset committed){against}; kafka/file ratio {:.3}",
            (workers / members).max(1),
            took.as_secs_f64(),
            r / file_rate
        );
    }
    let cold = failover(&a, &bootstrap, dir.path(), interval, false)?;
    let warm = failover(&a, &bootstrap, dir.path(), interval, true)?;
    if let (Some(cold), Some(warm)) = (cold, warm) {
        println!(
            "  failover restore with standby / without: {:.3} ({:.3}s / {:.3}s)",
            warm / cold.max(1e-9),
            warm,
            cold
        );
    }
    Ok(())
}

/// A group-mode input of `topic` in `group`.
fn group_input(bootstrap: &str, topic: &str, group: &str) -> KafkaInput {
    KafkaInput {
        bootstrap: bootstrap.to_string(),
        topics: vec![topic.to_string()],
        group: group.to_string(),
        key_field: None,
        timestamp_time: false,
        until_end: false,
        properties: Vec::new(),
        group_mode: true,
        partitioner: Default::default(),
        instance: None,
        standby: false,
    }
}

/// The group's committed offsets of `topic` (per partition; `None`: none).
fn committed(probe: &BaseConsumer, topic: &str, partitions: i32) -> Result<Vec<Option<i64>>> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let c = probe.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok((0..partitions)
        .map(|p| match c.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect())
}

fn probe(bootstrap: &str, group: &str) -> Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()?)
}

/// Waits until `group` committed every record of `topic`.
fn wait_committed(
    bootstrap: &str,
    topic: &str,
    group: &str,
    partitions: i32,
    within: Duration,
) -> Result<()> {
    let probe = probe(bootstrap, group)?;
    let mut ends = Vec::new();
    for p in 0..partitions {
        ends.push(probe.fetch_watermarks(topic, p, Duration::from_secs(10))?.1);
    }
    let t = Instant::now();
    loop {
        let c = committed(&probe, topic, partitions)?;
        if c.iter().zip(&ends).all(|(c, e)| *c == Some(*e)) {
            return Ok(());
        }
        if t.elapsed() > within {
            bail!("group `{group}` did not commit every record of `{topic}` in {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two `eddy run` processes in group mode (with `standby` copies or not)
/// under a steady input, after `failover_keys` keys got state; one is
/// killed with `kill -9`; prints the time until every partition it owned
/// is committed again (by the other), and the other's restore. Returns
/// the restore's time in seconds, when the log says it.
fn failover(
    a: &BenchKafkaArgs,
    bootstrap: &str,
    dir: &std::path::Path,
    interval: u64,
    standby: bool,
) -> Result<Option<f64>> {
    let dir = &dir.join(if standby { "warm" } else { "cold" });
    std::fs::create_dir_all(dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timeout = Duration::from_secs(60);
    let (input, output, group) = (unique("fin"), unique("fout"), unique("fgroup"));
    for t in [&input, &output] {
        rt.block_on(eddy_kafka::admin::create_topic(
            bootstrap,
            t,
            a.partitions,
            1,
            timeout,
        ))?;
    }
    let file = dir.join("failover.toml");
    std::fs::write(
        &file,
        format!(
            "workers = 1\n[source.kafka]\nbootstrap = \"{bootstrap}\"\ntopic = \"{input}\"\ngroup = \"{group}\"\nmode = \"group\"\nstandby = {standby}\n[[operator]]\nname = \"counter\"\ncomponent = \"{}\"\n[sink.kafka]\ntopic = \"{output}\"\n[state]\ncheckpoint_interval_ms = {interval}\n",
            std::fs::canonicalize(&a.component)?.display()
        ),
    )?;
    let exe = std::env::current_exe().context("this program's path")?;
    let spawn = |i: usize| -> Result<std::process::Child> {
        let log = std::fs::File::create(dir.join(format!("failover-{i}.log")))?;
        Ok(std::process::Command::new(&exe)
            .arg("run")
            .arg(&file)
            .args(["--progress-interval-ms", "3600000", "--state"])
            .arg(dir.join(format!("failover-state-{i}")))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()?)
    };
    let mut procs = [spawn(0)?, spawn(1)?];
    let log0 = || std::fs::read_to_string(dir.join("failover-0.log")).unwrap_or_default();
    let current = || log0().matches("standby copy of partitions").count();
    if a.failover_keys > 0 {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "20")
            .set("partitioner", "murmur2_random")
            .create()?;
        let t = Instant::now();
        for i in 0..a.failover_keys {
            let key = format!("pre-{i}");
            let mut rec = BaseRecord::to(&input).key(key.as_bytes()).payload("{}");
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        p.poll(Duration::from_millis(5));
                    }
                }
            }
        }
        p.flush(Duration::from_secs(60))?;
        let group_probe = probe(bootstrap, &group)?;
        let ends = ends(&group_probe, &input, a.partitions)?;
        loop {
            let now = committed(&group_probe, &input, a.partitions)?;
            if now.iter().zip(&ends).all(|(c, e)| c.unwrap_or(0) >= *e) {
                break;
            }
            if t.elapsed() > Duration::from_secs(600) {
                bail!("the {} keys were not handled within 600 s", a.failover_keys);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let handled = t.elapsed();
        let mut note = String::new();
        if standby {
            // The copy follows the last checkpoints' changelog records.
            std::thread::sleep(Duration::from_secs(2));
            let seen = current();
            let limit = Duration::from_secs(30.max(a.failover_keys / 20_000));
            let waited = Instant::now();
            while current() == seen && waited.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(100));
            }
            note = match current() > seen {
                true => format!(
                    "; standby copy current {:.2}s later",
                    waited.elapsed().as_secs_f64() + 2.0
                ),
                false => format!("; standby copy not seen current within {limit:?}"),
            };
        }
        println!(
            "  failover setup: {} keys given state in {:.2}s{note}",
            a.failover_keys,
            handled.as_secs_f64()
        );
    }
    // A steady input: `failover_rate` records/s over `keys` keys.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (bootstrap, input, stop) = (bootstrap.to_string(), input.clone(), stop.clone());
        let (rate, keys) = (a.failover_rate.max(1), a.keys);
        std::thread::spawn(move || -> Result<()> {
            let p: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("linger.ms", "5")
                .set("partitioner", "murmur2_random")
                .create()?;
            let t = Instant::now();
            let mut n: u64 = 0;
            let mut x: u64 = 0x2545_f491_4f6c_dd1d;
            while !stop.load(std::sync::atomic::Ordering::Acquire)
                && t.elapsed() < Duration::from_secs(120)
            {
                let due = (t.elapsed().as_secs_f64() * rate as f64) as u64;
                while n < due {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = format!("user-{}", x % keys);
                    let rec = BaseRecord::to(&input)
                        .key(key.as_bytes())
                        .payload("{\"amount\":1}");
                    if p.send(rec).is_err() {
                        p.poll(Duration::from_millis(5));
                        break;
                    }
                    n += 1;
                }
                p.poll(Duration::from_millis(5));
            }
            p.flush(Duration::from_secs(30))?;
            Ok(())
        })
    };
    let probe = probe(bootstrap, &group)?;
    // Both own partitions and commit, for a few seconds.
    let owned = |i: usize| -> Vec<i32> {
        let o = std::process::Command::new(&exe)
            .args(["status", "--state"])
            .arg(dir.join(format!("failover-state-{i}")))
            .output();
        let text = o
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| l.strip_prefix("kafka "))
            .filter_map(|l| l.split(':').next()?.rsplit('/').next()?.parse().ok())
            .collect()
    };
    let t = Instant::now();
    let victim = loop {
        let (a0, a1) = (owned(0), owned(1));
        if !a0.is_empty() && !a1.is_empty() && t.elapsed() > Duration::from_secs(8) {
            break a1;
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the two processes did not both own partitions within 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let before = committed(&probe, &input, a.partitions)?;
    procs[1].kill()?;
    let killed = Instant::now();
    procs[1].wait()?;
    let flowing = loop {
        let now = committed(&probe, &input, a.partitions)?;
        if victim.iter().all(|&p| now[p as usize] > before[p as usize]) {
            break killed.elapsed();
        }
        if killed.elapsed() > Duration::from_secs(900) {
            bail!("the killed process's partitions were not committed again within 900 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, std::sync::atomic::Ordering::Release);
    let _ = producer.join();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &procs[0].id().to_string()])
        .status();
    let _ = procs[0].wait();
    let log = log0();
    let restore = log
        .lines()
        .rfind(|l| l.contains(" restored ("))
        .and_then(|l| l.split("Kafka group: ").nth(1))
        .unwrap_or("(no restore logged)")
        .to_string();
    println!(
        "  failover ({}, 2 processes, 1 worker each, {} records/s in): kill -9 of one; its {} partition(s) committed again by the other after {:.2}s (session timeout 6 s); the other's restore: {restore}",
        if standby { "standby copies" } else { "no standby" },
        a.failover_rate,
        victim.len(),
        flowing.as_secs_f64()
    );
    Ok(restore_secs(&restore))
}

/// The time in a restore line's `in 1.23s` / `in 15.5ms` / `in 900µs`.
fn restore_secs(line: &str) -> Option<f64> {
    let t = line.rsplit(" in ").next()?;
    let (n, unit) = t.split_at(t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" => n / 1e6,
        "ns" => n / 1e9,
        _ => return None,
    })
}

/// The end offsets of `topic`'s partitions.
fn ends(probe: &BaseConsumer, topic: &str, partitions: i32) -> Result<Vec<i64>> {
    (0..partitions)
        .map(|p| {
            probe
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map(|(_, high)| high)
                .map_err(Into::into)
        })
        .collect()
}
