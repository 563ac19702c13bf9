//! The Kafka input side of the coordinator: records routed to their
//! worker's batch (or dead-lettered), per-partition positions for the
//! checkpoint, the end of a restart's replay, and the watermark (the
//! smallest of the partitions' watermarks).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use crossbeam_channel::bounded;
use eddy_kafka::partition::Partitioner;

use super::{Coordinator, BATCH};
use crate::config::{KafkaInput, WatermarkSpec};
use crate::route::route;
use crate::sink::format::kafka_pos;
use crate::sink::SinkMsg;
use crate::source::{
    decode, KafkaMsg, KafkaPlan, KafkaReader, Part, Record, Verdict, WatermarkGen,
};
use crate::worker::{KeyFilter, Msg};

/// A Kafka input as the coordinator drives it.
pub(in crate::pipeline) struct KafkaFeed {
    pub(super) reader: KafkaReader,
    pub(super) parts: Arc<[Part]>,
    /// Per partition, the next offset to read, once known.
    pub(super) next: Vec<Option<i64>>,
    /// A restart's replay is under way: outputs bound for Kafka are
    /// suppressed (Kafka has them).
    pub(super) replaying: bool,
    /// The routing key is this field of the value (else the message key).
    key_field: Option<String>,
    /// The event time is the message timestamp.
    timestamp_time: bool,
    /// Per partition, its watermark (`None` until it has an event time).
    wms: Vec<Option<WatermarkGen>>,
    /// Per partition, the clock's time when a record of it last came
    /// (for the watermark's idle timeout).
    last_ms: Vec<u64>,
    spec: WatermarkSpec,
    /// The input's watermark: the smallest of the partitions' that have one.
    pub(super) watermark: i64,
    /// The same, as a generator, to judge late events by.
    overall: WatermarkGen,
    /// The input's identity for the watermark in the checkpoint.
    pub(super) id: String,
    /// Per partition: this process owns it (in group mode, as the group
    /// assigned; otherwise every partition).
    pub(super) owned: Vec<bool>,
    /// Group mode: how keys map to partitions.
    pub(super) group: Option<Group>,
}

/// Group mode: how the input's keys map to its partitions.
#[derive(Debug, Clone, Copy)]
pub(in crate::pipeline) struct Group {
    pub(in crate::pipeline) partitioner: Partitioner,
    pub(in crate::pipeline) partitions: i32,
}

impl KafkaFeed {
    /// Drives `reader`, started from `plan`.
    pub(in crate::pipeline) fn new(
        reader: KafkaReader,
        plan: &KafkaPlan,
        input: &KafkaInput,
        spec: WatermarkSpec,
        watermark: Option<i64>,
    ) -> KafkaFeed {
        KafkaFeed {
            reader,
            parts: plan.parts.clone(),
            next: plan.start.clone(),
            replaying: plan.replays(),
            key_field: input.key_field.clone(),
            timestamp_time: input.timestamp_time,
            wms: watermark
                .map(|w| vec![Some(WatermarkGen::resume(spec, w)); plan.parts.len()])
                .unwrap_or_else(|| vec![None; plan.parts.len()]),
            last_ms: vec![0; plan.parts.len()],
            spec,
            watermark: watermark.unwrap_or(i64::MIN),
            overall: match watermark {
                Some(w) => WatermarkGen::resume(spec, w),
                None => WatermarkGen::new(spec),
            },
            id: Self::watermark_id(input),
            owned: vec![!input.group_mode; plan.parts.len()],
            group: input.group_mode.then_some(Group {
                partitioner: input.partitioner,
                partitions: plan.parts.iter().filter(|p| p.stage == 0).count() as i32,
            }),
        }
    }

    /// Counts every partition idle from the clock's time `now` (the start).
    pub(super) fn idle_from(&mut self, now: u64) {
        self.last_ms.fill(now);
    }

    /// The watermark's idle timeout: each partition that has had no record
    /// for `timeout` ms of the clock (`now`) moves its watermark on with
    /// the clock (see [`WatermarkGen::idle`]), so an idle partition no
    /// longer holds the input's back; the input's new watermark if it
    /// advanced.
    pub(super) fn idle(&mut self, now: u64, timeout: u64) -> Option<i64> {
        let mut moved = false;
        for (gen, &last) in self.wms.iter_mut().zip(&self.last_ms) {
            let idle = now.saturating_sub(last);
            if let Some(gen) = gen.as_mut().filter(|_| idle >= timeout) {
                moved |= gen.idle(idle).is_some();
            }
        }
        if moved {
            self.advance()
        } else {
            None
        }
    }

    /// The input's watermark, the smallest of its partitions', when it
    /// advanced.
    fn advance(&mut self) -> Option<i64> {
        let spec = self.spec;
        let min = self
            .wms
            .iter()
            .flatten()
            .map(WatermarkGen::current)
            .min()
            .unwrap_or(i64::MIN);
        if min > self.watermark {
            self.watermark = min;
            self.overall = WatermarkGen::resume(spec, min);
            Some(min)
        } else {
            None
        }
    }

    /// Publishes the partitions' positions for `eddy status`: `committed`
    /// is the cut just committed to Kafka.
    pub(in crate::pipeline) fn publish(&self, live: &crate::stats::Live) {
        let ctx = self.reader.context();
        let mut parts = live.kafka();
        parts.clear();
        for ((p, next), _) in self
            .parts
            .iter()
            .zip(&self.next)
            .zip(&self.owned)
            .filter(|(_, &owned)| owned)
        {
            let end = ctx.end_offset(&p.topic, p.partition);
            parts.push(crate::stats::KafkaPartition {
                topic: p.topic.clone(),
                partition: p.partition,
                committed: *next,
                end,
                lag: match (end, next) {
                    (Some(e), Some(c)) => Some((e - c).max(0)),
                    _ => None,
                },
            });
        }
    }

    /// The name the input's watermark is checkpointed under.
    pub(in crate::pipeline) fn watermark_id(input: &KafkaInput) -> String {
        format!("kafka:{}", input.group)
    }
}

impl Coordinator {
    /// Handles one message of the Kafka reader; `true` at the end of the
    /// input (`until_end`).
    pub(super) fn kafka_msg(&mut self, msg: KafkaMsg) -> Result<bool> {
        match msg {
            KafkaMsg::Records(records) => {
                if self.p.watermark.idle_timeout_ms.is_some() {
                    let now = self.clock.now_ms();
                    let k = self.kafka.as_mut().expect("a Kafka input");
                    for r in &records {
                        if let Some(t) = k.last_ms.get_mut(r.part as usize) {
                            *t = now;
                        }
                    }
                }
                for r in records {
                    self.kafka_record(r)?;
                    if let Some(n) = self.p.checkpoint_events {
                        if self.since_checkpoint >= n {
                            self.checkpoint()?;
                        }
                    }
                }
                let empty = self
                    .kafka
                    .as_ref()
                    .is_some_and(|k| k.reader.messages().is_empty());
                if empty {
                    self.flush_batches()?;
                }
                if std::time::Instant::now() >= self.next_checkpoint {
                    self.checkpoint()?;
                }
            }
            KafkaMsg::ReplayDone => {
                // Everything replayed is handled and its state checkpointed
                // (its outputs dropped: Kafka has them); then outputs flow.
                self.checkpoint()?;
                self.wait_commit()?;
                if let Some(k) = &mut self.kafka {
                    k.replaying = false;
                }
                if self.sink.send(SinkMsg::Suppress(false)).is_err() {
                    return Err(self.sink_failure());
                }
                tracing::info!(
                    "Kafka input: replayed {} records that Kafka already had the outputs of",
                    self.summary.lines
                );
                self.summary.replayed = self.summary.lines;
            }
            KafkaMsg::End => return Ok(true),
            KafkaMsg::Revoke { parts, reply } => {
                self.kafka_revoke(&parts)?;
                let _ = reply.send(());
            }
            KafkaMsg::Assigned { parts, restored } => self.kafka_assigned(&parts, restored)?,
            KafkaMsg::Lost(parts) => {
                let k = self.kafka.as_ref().expect("a Kafka input");
                bail!(
                    "Kafka group: partitions {} were lost: this process was cut off from its group for longer than session.timeout.ms (paused, or unreachable), and other processes own them now; nothing it wrote since its last checkpoint becomes visible (its transaction is aborted), so it stops here: start it again to rejoin the group",
                    names(k, &parts)
                );
            }
        }
        self.live.lines_read.store(self.pos.line, Ordering::Relaxed);
        Ok(false)
    }

    /// Group mode: partitions `parts` move to another process. Everything
    /// read of them is handled: checkpoint (their final offsets and state
    /// changes commit with it), then their keys leave the workers' caches.
    fn kafka_revoke(&mut self, parts: &[u16]) -> Result<()> {
        self.checkpoint()?;
        self.wait_commit()?;
        let k = self.kafka.as_mut().expect("a Kafka input");
        let g = k.group.expect("group mode");
        let revoked: HashSet<(usize, i32)> = parts
            .iter()
            .map(|&i| {
                let p = &k.parts[i as usize];
                (p.stage as usize, p.partition)
            })
            .collect();
        for &i in parts {
            k.owned[i as usize] = false;
            k.next[i as usize] = None;
            k.wms[i as usize] = None;
        }
        let names = names(k, parts);
        self.release(
            Arc::new(move |op: usize, key: &str| {
                revoked.contains(&(op, g.partitioner.partition(key.as_bytes(), g.partitions)))
            }),
            None,
        )?;
        tracing::info!("Kafka group: partitions {names} handed over after a checkpoint");
        if let Some(k) = &self.kafka {
            k.publish(&self.live);
        }
        Ok(())
    }

    /// Group mode: partitions `parts` are this process's now, their state
    /// restored into the state directory: the workers' readers are
    /// renewed (to see it), then their records are taken.
    fn kafka_assigned(&mut self, parts: &[(u16, Option<i64>)], restored: u64) -> Result<()> {
        let k = self.kafka.as_ref().expect("a Kafka input");
        let g = k.group.expect("group mode");
        let taken: HashSet<(usize, i32)> = parts
            .iter()
            .map(|&(i, _)| {
                let p = &k.parts[i as usize];
                (p.stage as usize, p.partition)
            })
            .collect();
        // The restored keys' pending timers go to their workers.
        self.release(
            Arc::new(|_: usize, _: &str| false),
            Some(Arc::new(move |op: usize, key: &str| {
                taken.contains(&(op, g.partitioner.partition(key.as_bytes(), g.partitions)))
            })),
        )?;
        let k = self.kafka.as_mut().expect("a Kafka input");
        for &(i, start) in parts {
            k.owned[i as usize] = true;
            k.next[i as usize] = start;
        }
        self.summary.restored_keys += restored;
        k.publish(&self.live);
        Ok(())
    }

    /// Renews every worker's reader, drops the cached keys `drop` selects
    /// and loads the pending timers of the keys `load` selects, once every
    /// event sent is handled.
    fn release(&mut self, drop: KeyFilter, load: Option<KeyFilter>) -> Result<()> {
        self.flush_batches()?;
        self.wait_inflight(|n| n == 0)?;
        let mut replies = Vec::with_capacity(self.workers.count());
        for w in 0..self.workers.count() {
            let (tx, rx) = bounded(1);
            let msg = Msg::Release {
                drop: drop.clone(),
                load: load.clone(),
                reply: tx,
            };
            if self.workers.send(w, msg).is_err() {
                return Err(self.worker_failure());
            }
            replies.push(rx);
        }
        for rx in replies {
            match rx.recv() {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => {
                    return Err(anyhow!(
                        "Kafka group: {n} key(s) of the partitions handed over changed after their last checkpoint"
                    ))
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(self.worker_failure()),
            }
        }
        Ok(())
    }

    /// Routes one record (or dead-letters it).
    fn kafka_record(&mut self, r: Record) -> Result<()> {
        if !self.kafka.as_ref().expect("a Kafka input").owned[r.part as usize] {
            // Read before its partition moved away: its new owner reads
            // it from the offset this process committed.
            return Ok(());
        }
        self.summary.lines += 1;
        self.pos.line += 1;
        let pos = kafka_pos(r.part, r.offset);
        self.kafka.as_mut().expect("a Kafka input").next[r.part as usize] = Some(r.offset + 1);
        if r.value.len() > self.p.max_line_bytes {
            let reason = format!(
                "message value is {} bytes, longer than max_line_bytes = {}",
                r.value.len(),
                self.p.max_line_bytes
            );
            self.dead_record(&r, &reason);
            return Ok(());
        }
        let k = self.kafka.as_mut().expect("a Kafka input");
        let stage = k.parts[r.part as usize].stage;
        if stage > 0 {
            return self.kafka_repartitioned(r, stage, pos);
        }
        let time_field = self.p.time_field.as_deref();
        let (key, time) = match (&k.key_field, time_field) {
            (Some(field), tf) => match decode(&r.value, field, tf) {
                Ok(d) => (d.key.into_owned(), d.time),
                Err(e) => {
                    let reason = e.to_string();
                    self.dead_record(&r, &reason);
                    return Ok(());
                }
            },
            (None, tf) => {
                let key = match r.key.as_deref().map(std::str::from_utf8) {
                    Some(Ok(key)) => key.to_string(),
                    Some(Err(e)) => {
                        let reason = format!(
                            "message key is not UTF-8 (invalid byte at offset {})",
                            e.valid_up_to()
                        );
                        self.dead_record(&r, &reason);
                        return Ok(());
                    }
                    None => {
                        self.dead_record(
                            &r,
                            "message has no key (give the pipeline a key field to route by a field of the value)",
                        );
                        return Ok(());
                    }
                };
                let time = match tf {
                    Some(field) => match time_of(&r.value, field) {
                        Ok(t) => Some(t),
                        Err(reason) => {
                            self.dead_record(&r, &reason);
                            return Ok(());
                        }
                    },
                    None if k.timestamp_time => r.timestamp,
                    None => None,
                };
                (key, time)
            }
        };
        // Group mode: a key's state lives with the partition it hashes to.
        let k = self.kafka.as_mut().expect("a Kafka input");
        if let Some(g) = k.group {
            let want = g.partitioner.partition(key.as_bytes(), g.partitions);
            let found = k.parts[r.part as usize].partition;
            if want != found {
                let reason = format!(
                    "key `{key}` belongs in partition {want} ({} over {} partitions) but the record is in partition {found}: in group mode a key's state lives with its partition, so the input must be partitioned by the routing key (set [source.kafka] partitioner to how its producers place keys)",
                    g.partitioner.name(),
                    g.partitions
                );
                self.dead_record(&r, &reason);
                return Ok(());
            }
        }
        // The late policy, against the input's watermark (the smallest of
        // the partitions').
        let k = self.kafka.as_mut().expect("a Kafka input");
        let late = match k.overall.judge(time) {
            Verdict::OnTime => false,
            Verdict::Deliver => true,
            Verdict::Drop => {
                self.summary.late_dropped += 1;
                return Ok(());
            }
            Verdict::DeadLetter(reason) => {
                self.summary.late_dead_lettered += 1;
                self.dead_record(&r, &reason);
                return Ok(());
            }
        };
        let w = route(&key, self.workers.count());
        self.pending[w].push(0, &key, &r.value, time, pos);
        if late {
            self.pending[w].flag_last_late();
        }
        self.since_checkpoint += 1;
        if let Some(t) = time {
            if let Some(wm) = self.kafka_watermark(r.part as usize, t) {
                self.mark(wm);
            }
        }
        if self.pending[w].len() >= BATCH {
            self.send_batch(w)?;
        }
        Ok(())
    }

    /// Group mode: an event an earlier operator emitted for operator
    /// `stage`, read from its repartition topic (keyed by the emitted key,
    /// timestamped with the event time), routed to that operator. It was
    /// judged late or not at its origin.
    fn kafka_repartitioned(&mut self, r: Record, stage: u16, pos: u64) -> Result<()> {
        let key = match r.key.as_deref().map(std::str::from_utf8) {
            Some(Ok(key)) => key.to_string(),
            _ => {
                self.dead_record(&r, "repartition record without a UTF-8 key");
                return Ok(());
            }
        };
        let timed =
            self.p.time_field.is_some() || self.kafka.as_ref().is_some_and(|k| k.timestamp_time);
        let time = if timed { r.timestamp } else { None };
        let w = route(&key, self.workers.count());
        self.pending[w].push(stage, &key, &r.value, time, pos);
        self.since_checkpoint += 1;
        if let Some(t) = time {
            if let Some(wm) = self.kafka_watermark(r.part as usize, t) {
                self.mark(wm);
            }
        }
        if self.pending[w].len() >= BATCH {
            self.send_batch(w)?;
        }
        Ok(())
    }

    /// Takes event time `t` of partition `part` into its watermark: the
    /// input's new watermark if it advanced.
    fn kafka_watermark(&mut self, part: usize, t: i64) -> Option<i64> {
        let k = self.kafka.as_mut()?;
        let spec = k.spec;
        let gen = k.wms[part].get_or_insert_with(|| WatermarkGen::new(spec));
        gen.observe(t)?;
        k.advance()
    }

    /// Dead-letters record `r` with `reason`: its topic, partition and
    /// offset, and its value (as a JSON string, or `payload_base64`).
    fn dead_record(&mut self, r: &Record, reason: &str) {
        let k = self.kafka.as_ref().expect("a Kafka input");
        let part = &k.parts[r.part as usize];
        self.summary.bad_lines += 1;
        let rec = serde_json::json!({
            "topic": part.topic,
            "partition": part.partition,
            "offset": r.offset,
            "error": reason,
        });
        let mut b = serde_json::to_vec(&rec).expect("json");
        b.pop();
        b.push(b',');
        // An oversized value is not copied into the dead letter.
        let payload = match r.value.len() > self.p.max_line_bytes {
            true => &[][..],
            false => &r.value[..],
        };
        crate::sink::format::push_string_field(&mut b, "payload", payload);
        b.extend_from_slice(b"}\n");
        let _ = self.sink.send(SinkMsg::Dead(b));
    }
}

/// The integer event time in field `field` of JSON value `value`.
fn time_of(value: &[u8], field: &str) -> Result<i64, String> {
    let v: serde_json::Value =
        serde_json::from_slice(value).map_err(|e| format!("value is not JSON: {e}"))?;
    match v.get(field) {
        Some(t) => t
            .as_i64()
            .ok_or_else(|| format!("time field `{field}` is not an integer: {t}")),
        None => Err(format!("time field `{field}` is missing")),
    }
}

/// The partition numbers of `parts`, for messages.
fn names(k: &KafkaFeed, parts: &[u16]) -> String {
    parts
        .iter()
        .map(|&i| k.parts[i as usize].partition.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
