//! [`start`]: everything a pipeline opens and starts, in order, each step
//! undone (its threads stopped and joined) when a later one fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::unbounded;

use super::coordinator::{Coordinator, KafkaFeed};
use super::{Running, Shutdown, Started};
use crate::checkpoint::{Counted, Writer};
use crate::config::{Delivery, Input, Output, Pipeline};
use crate::control::Server;
use crate::operator::Loaded;
use eddy_kafka::rdkafka::consumer::Consumer as _;

use crate::sink::format::Formats;
use crate::sink::kafka::{check_topic, producer as kafka_producer, KafkaSink};
use crate::sink::{open_output_file, SinkMsg, SinkThread};
use crate::source::{
    changelog_topic, file_id, group_consumer, kafka_consumer, kafka_partitions, kafka_plan,
    repartition_topic, start_group, GroupSetup, KafkaPlan, KafkaReader, ReaderThread, Resume,
};
use crate::state::Store;
use crate::stats::Live;
use crate::swap::{self, Command, Controller};
use crate::worker::Workers;

/// How often `--watch` looks at the component files.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Starts `p` with `operators`: checks its files, opens its state
/// directory (running the version of each operator a swap put in service),
/// resumes its input and outputs from the last checkpoint, starts the
/// sink, the workers (each instantiates every operator), the committer,
/// the control endpoint, `--watch` and the reader, then the coordinator.
/// Returns once the workers are ready and the control endpoint listens.
/// The pipeline stops when its input ends or `shutdown` is triggered,
/// after a final checkpoint.
pub fn start(p: &Pipeline, mut operators: Vec<Loaded>, shutdown: &Shutdown) -> Result<Running> {
    let begun = Instant::now();
    // Before anything is opened for writing.
    p.check_files()?;
    // The budget: an eighth to redb's page cache, the rest to the
    // workers' cached keys.
    let (redb_cache, key_cache) = match p.cache_bytes {
        Some(b) => (Some((b / 8).max(1 << 20)), Some(b - b / 8)),
        None => (None, None),
    };
    let store = match redb_cache {
        Some(c) => Store::open_with_cache(&p.state_dir, p.verify_state, c)?,
        None if p.verify_state => Store::open_verified(&p.state_dir)?,
        None => Store::open(&p.state_dir)?,
    };
    // Which version of each operator runs: a swap made before a restart
    // stays in force.
    let mut versions = Vec::with_capacity(operators.len());
    let mut versions_dirty = false;
    for op in &mut operators {
        let (v, changed) = swap::resolve(&store, op)?;
        versions_dirty |= changed;
        versions.push(v);
    }

    // Input position and output lengths from the last checkpoint.
    let resume = Resume::find(p, &store)?;
    let out_file = match &p.output {
        Output::File(path) => {
            let committed = store.sink_len(&file_id(path))?;
            Some(
                open_output_file(path, committed)
                    .with_context(|| format!("output {}", path.display()))?,
            )
        }
        Output::Stdout | Output::Kafka(_) => None,
    };
    let dead_file = open_output_file(&p.dead_letter, store.sink_len(&file_id(&p.dead_letter))?)
        .with_context(|| format!("dead-letter file {}", p.dead_letter.display()))?;

    // Kafka: the producer first (initialising its transactions fences an
    // earlier process with the same transactional id and aborts its open
    // transaction, so the group's committed offsets read next are final),
    // then where each input partition starts.
    let stop = || shutdown.is_triggered();
    let group_mode = matches!(&p.input, Input::Kafka(i) if i.group_mode);
    if let Input::Kafka(i) = &p.input {
        if i.group_mode {
            check_group_mode(p, i, &operators)?;
            // The changelog topics carry whole records: no list or map
            // spills to rows of its own. No key is this process's until
            // the group assigns its partition (timers load then).
            for op in &mut operators {
                op.limits.spill = false;
                op.limits.owned_at_start = false;
            }
        }
    }
    let kafka_out = match &p.output {
        Output::Kafka(o) => {
            let tid = match (&o.transactional_id, &p.input) {
                // Each process of a group has its own: the group's
                // generation fences one left behind (see docs/kafka.md).
                (Some(t), Input::Kafka(i)) if i.group_mode => {
                    format!("{t}-{}", group_instance(i, &store)?)
                }
                (None, Input::Kafka(i)) if i.group_mode => {
                    format!("eddy-{}-{}", i.group, group_instance(i, &store)?)
                }
                (Some(t), _) => t.clone(),
                (None, Input::Kafka(i)) => format!("eddy-{}", i.group),
                (None, _) => format!("eddy-{}", o.topic),
            };
            if o.delivery == Delivery::ExactlyOnce && !matches!(p.input, Input::Kafka(_)) {
                anyhow::bail!(
                    "exactly-once output to Kafka topic `{}` needs a Kafka input (its offsets commit in the same transaction as the outputs); with a file or stdin input, set delivery = \"at-least-once\" ([sink.kafka] delivery, or ?delivery=at-least-once)",
                    o.topic
                );
            }
            let producer = match &p.input {
                // A transaction left open by a killed process holds back
                // what read_committed readers see of the partitions it
                // wrote until the broker aborts it: after 10 s, not
                // librdkafka's default 60.
                Input::Kafka(i)
                    if i.group_mode
                        && !o
                            .properties
                            .iter()
                            .any(|(k, _)| k == "transaction.timeout.ms") =>
                {
                    let mut o = (**o).clone();
                    o.properties
                        .push(("transaction.timeout.ms".into(), "10000".into()));
                    kafka_producer(&o, &tid)?
                }
                _ => kafka_producer(o, &tid)?,
            };
            check_topic(&producer, &o.topic, "output")?;
            if let Some(t) = &o.dead_letter_topic {
                check_topic(&producer, t, "dead-letter")?;
            }
            Some((o, tid, producer))
        }
        _ => None,
    };
    let kafka_in = match &p.input {
        Input::Kafka(i) if i.group_mode => {
            let consumer = Arc::new(group_consumer(i)?);
            let mut parts = kafka_partitions(i, &consumer, &stop)?;
            let n = parts.len() as i32;
            let mut props = vec![("bootstrap.servers".to_string(), i.bootstrap.clone())];
            props.extend(i.properties.iter().cloned());
            for (stage, op) in operators.iter().enumerate() {
                let topic = changelog_topic(&i.group, &op.name);
                eddy_kafka::admin::ensure_topic(
                    &props,
                    &topic,
                    n,
                    &[("cleanup.policy", "compact")],
                    Duration::from_secs(30),
                )
                .map_err(|e| anyhow::anyhow!("Kafka changelog of operator `{}`: {e}", op.name))?;
                if stage > 0 {
                    // What the operator before emits reaches this one's
                    // keys' owners through this topic.
                    let topic = repartition_topic(&i.group, &op.name);
                    eddy_kafka::admin::ensure_topic(
                        &props,
                        &topic,
                        n,
                        &[("cleanup.policy", "delete")],
                        Duration::from_secs(30),
                    )
                    .map_err(|e| {
                        anyhow::anyhow!("Kafka repartition topic of operator `{}`: {e}", op.name)
                    })?;
                    parts.extend((0..n).map(|partition| crate::source::Part {
                        topic: topic.clone(),
                        partition,
                        stage: stage as u16,
                    }));
                }
            }
            let n = parts.len();
            let plan = KafkaPlan {
                parts: parts.into(),
                start: vec![None; n],
                replay_until: vec![None; n],
            };
            Some((i, consumer, plan))
        }
        Input::Kafka(i) => {
            let consumer = Arc::new(kafka_consumer(i)?);
            let eos = kafka_out
                .as_ref()
                .is_some_and(|(o, ..)| o.delivery == Delivery::ExactlyOnce);
            let plan = kafka_plan(i, &consumer, &store, eos, &stop)?;
            Some((i, consumer, plan))
        }
        _ => None,
    };
    let formats = Formats {
        repartition: group_mode && operators.len() > 1,
        framed: kafka_out.is_some(),
        kafka_parts: kafka_in.as_ref().map(|(_, _, plan)| {
            plan.parts
                .iter()
                .map(|p| (p.topic.clone(), p.partition))
                .collect()
        }),
    };

    // Group mode: raised when the group drops this process (its
    // partitions lost): it never commits again.
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // From here on, each value owns its threads: an early return stops
    // and joins them (in the reverse order of their start).
    let sink = match kafka_out {
        Some((o, transactional_id, producer)) => {
            let input = match &kafka_in {
                Some((i, consumer, _)) => {
                    consumer.group_metadata().ok_or_else(|| {
                        anyhow::anyhow!("Kafka: no group metadata for group `{}`", i.group)
                    })?;
                    let consumer = consumer.clone();
                    let lost = lost.clone();
                    let metadata: crate::sink::kafka::GroupMetadata = Arc::new(move || {
                        Some(crate::sink::kafka::Member {
                            metadata: consumer.group_metadata()?,
                            id: eddy_kafka::context::member_id(&consumer),
                            lost: lost.load(std::sync::atomic::Ordering::Acquire)
                                || consumer.assignment_lost(),
                        })
                    });
                    Some((
                        metadata,
                        formats.kafka_parts.clone().expect("a Kafka input"),
                    ))
                }
                None => None,
            };
            let changelog = match &kafka_in {
                Some((i, _, plan)) if i.group_mode => Some(crate::sink::kafka::Changelog {
                    topics: operators
                        .iter()
                        .map(|op| (op.name.clone(), changelog_topic(&i.group, &op.name)))
                        .collect(),
                    repartition: operators
                        .iter()
                        .enumerate()
                        .map(|(s, op)| (s > 0).then(|| repartition_topic(&i.group, &op.name)))
                        .collect(),
                    partitioner: i.partitioner,
                    partitions: plan.parts.iter().filter(|p| p.stage == 0).count() as i32,
                }),
                _ => None,
            };
            SinkThread::start_kafka(KafkaSink {
                producer,
                topic: o.topic.clone(),
                dead_topic: o.dead_letter_topic.clone(),
                dead_file: o.dead_letter_topic.is_none().then_some(dead_file),
                exactly_once: o.delivery == Delivery::ExactlyOnce,
                transactional_id,
                input,
                changelog,
                rebalanced: false,
                aborted: false,
                broken: Default::default(),
                committed_as: None,
            })?
        }
        None => SinkThread::start(out_file, dead_file)?,
    };
    if kafka_in.as_ref().is_some_and(|(_, _, plan)| plan.replays()) {
        // Kafka has the outputs of what is replayed first.
        let _ = sink.send(SinkMsg::Suppress(true));
    }
    let live = Arc::new(Live::new(p.workers, operators.len()));
    live.lines_read
        .store(resume.pos.line, std::sync::atomic::Ordering::Relaxed);
    live.bytes_read
        .store(resume.pos.offset, std::sync::atomic::Ordering::Relaxed);
    let workers = Workers::start(
        p.workers,
        &operators,
        &store,
        &sink.sender(),
        &live,
        &formats,
        key_cache,
    )?;
    let writer = Writer::start(Counted {
        inner: store.clone(),
        live: live.clone(),
    })?;
    // Before the control endpoint and `--watch`, which end only once the
    // coordinator stops the controller.
    let (reader, kafka) = match kafka_in {
        Some((i, consumer, plan)) if group_mode => {
            let setup = GroupSetup {
                lost: lost.clone(),
                input: (**i).clone(),
                parts: plan.parts.clone(),
                store: store.clone(),
                changelogs: operators
                    .iter()
                    .map(|op| (op.name.clone(), changelog_topic(&i.group, &op.name)))
                    .collect(),
            };
            let r = start_group(consumer, setup)?;
            let feed = KafkaFeed::new(r, &plan, i, p.watermark, None);
            feed.publish(&live);
            (None, Some(feed))
        }
        Some((i, consumer, plan)) => {
            let r = KafkaReader::start(consumer, &plan, i.until_end)?;
            let feed = KafkaFeed::new(r, &plan, i, p.watermark, resume.watermark);
            feed.publish(&live);
            (None, Some(feed))
        }
        None => (Some(ReaderThread::start(p, resume.pos)?), None),
    };

    let (ctl_tx, ctl_rx) = unbounded::<Command>();
    let controller = Arc::new(Controller::new(
        store.clone(),
        p.workers,
        operators.clone(),
        versions,
        ctl_tx,
        live.clone(),
        match &p.input {
            Input::File(path) => path.display().to_string(),
            Input::Stdin => "-".into(),
            Input::Kafka(k) => format!(
                "kafka://{}/{}?group={}",
                k.bootstrap,
                k.topics.join(","),
                k.group
            ),
        },
    ));
    let server = match p.control {
        true => Some(Server::start(
            &p.state_dir,
            controller.clone(),
            p.http.as_ref(),
        )?),
        false => None,
    };
    let watcher = match p.watch {
        true => {
            let files = operators
                .iter()
                .zip(&p.operators)
                .filter(|(op, _)| op.kind.component().is_some())
                .map(|(op, spec)| (op.name.to_string(), spec.component.clone()))
                .collect();
            controller.watch(files, WATCH_EVERY)
        }
        false => None,
    };

    let (resume_line, resume_offset) = (resume.pos.line, resume.pos.offset);
    let started = Started {
        control: server.as_ref().map(|s| s.path().to_path_buf()),
        http: server.as_ref().and_then(Server::http_addr),
        resumed_after_line: resume.pos.line,
    };
    let co = Coordinator::new(super::coordinator::Parts {
        p: p.clone(),
        begun,
        resume,
        operators: &operators,
        workers,
        sink,
        writer,
        controller,
        ctl: ctl_rx,
        server,
        watcher,
        reader,
        kafka,
        live: live.clone(),
        versions_dirty,
    });
    let shutdown = shutdown.clone();
    let coordinator = {
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("eddy-coordinator".into())
            .spawn(move || co.run(&shutdown))?
    };
    Ok(Running {
        started,
        shutdown,
        coordinator: Some(coordinator),
        live,
        input: match &p.input {
            Input::File(path) => Some(path.clone()),
            Input::Stdin | Input::Kafka(_) => None,
        },
        begun: Instant::now(),
        resumed: (resume_line, resume_offset),
    })
}

/// What group mode does not do yet, refused before anything starts.
fn check_group_mode(
    p: &Pipeline,
    i: &crate::config::KafkaInput,
    operators: &[Loaded],
) -> Result<()> {
    let why = |what: &str| anyhow::anyhow!("[source.kafka] mode = \"group\": {what}");
    match &p.output {
        Output::Kafka(o) if o.delivery == Delivery::ExactlyOnce => {}
        _ => {
            return Err(why(
                "the output must be a Kafka topic with delivery = \"exactly-once\" (each partition's state changes go to its changelog topic in the same transaction as the outputs and offsets)",
            ))
        }
    }
    if i.topics.len() != 1 {
        return Err(why(&format!(
            "read one topic, not {} (the group assigns partitions of different topics independently, so one key's records could reach two processes)",
            i.topics.len()
        )));
    }
    if i.until_end {
        return Err(why(
            "until_end is for one process reading every partition; stop a group's processes with SIGTERM (each hands its partitions over)",
        ));
    }
    for op in operators {
        let topic = repartition_topic(&i.group, &op.name);
        let ok = topic.len() <= 249
            && topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(why(&format!(
                "the changelog and repartition topics of operator `{}` would be named like `{topic}`, which is not a Kafka topic name: use a group and operator names of a-z, A-Z, 0-9, `.`, `_`, `-`",
                op.name
            )));
        }
    }
    Ok(())
}

/// This process's name in group mode: `[source.kafka] instance`, or the
/// one made up at its first start and kept in the state directory.
fn group_instance(i: &crate::config::KafkaInput, store: &Store) -> Result<String> {
    if let Some(name) = &i.instance {
        return Ok(name.clone());
    }
    const META: &str = "kafka-group-instance";
    if let Some(v) = store.meta(META)? {
        return String::from_utf8(v)
            .map_err(|_| anyhow::anyhow!("state directory: `{META}` is not UTF-8"));
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    let name = format!("{:016x}", h.finish());
    store.commit(&crate::state::Checkpoint {
        meta: vec![(META.to_string(), name.clone().into_bytes())],
        ..Default::default()
    })?;
    Ok(name)
}
