//! `eddy bench-kafka`: the keyed counter from a Kafka topic to a Kafka
//! topic with exactly-once on, against the same events from a JSON Lines
//! file to a file, in one invocation (the broker runs on the same machine
//! and shares its cores).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use eddy_kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use eddy_kafka::rdkafka::ClientConfig;
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
    Ok(())
}
