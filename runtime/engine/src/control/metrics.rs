//! `GET /metrics`: the pipeline's counters in the Prometheus text format
//! (version 0.0.4), read at scrape time from what the workers, the reader,
//! the committer and the swap controller already count. Counters count
//! from the start of this run (a restart starts them at 0 again);
//! positions are gauges.

use std::fmt::{Display, Write};
use std::sync::atomic::Ordering;

use crate::stats::{OpStats, BUCKETS_US};
use crate::swap::Controller;

/// The `Content-Type` of the answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics text.
struct Out(String);

impl Out {
    /// Starts the metric family `name`.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    /// One sample of `name` with `labels`.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// A label value as the text format writes it.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds from microseconds.
fn secs(micros: u64) -> f64 {
    micros as f64 / 1e6
}

/// The per-operator, per-worker counters: name, help, and how to read it.
type PerWorker = (&'static str, &'static str, fn(&OpStats) -> u64);

const PER_WORKER: [PerWorker; 12] = [
    (
        "eddy_events_read_total",
        "Events given to the operator on this worker (handled or failed).",
        |s| s.handled + s.failed,
    ),
    (
        "eddy_events_handled_total",
        "Events the operator handled successfully on this worker.",
        |s| s.handled,
    ),
    (
        "eddy_events_failed_total",
        "Events whose handling failed (trap, error, limit) on this worker; each went to the dead-letter file.",
        |s| s.failed,
    ),
    (
        "eddy_events_emitted_total",
        "Events the operator emitted on this worker (by events and timers).",
        |s| s.emitted,
    ),
    (
        "eddy_events_dead_lettered_total",
        "Events and timers of the operator on this worker that went to the dead-letter file.",
        |s| s.failed + s.timers_failed,
    ),
    (
        "eddy_timers_fired_total",
        "Timers of the operator that fired on this worker.",
        |s| s.timers_fired,
    ),
    (
        "eddy_timers_failed_total",
        "Timers whose handler failed on this worker (dead-lettered).",
        |s| s.timers_failed,
    ),
    (
        "eddy_cpu_limit_hits_total",
        "Events and timers of the operator on this worker whose call ran longer than its CPU budget (max_call_ms); each is among the failed and dead-lettered.",
        |s| s.cpu_limit_hits,
    ),
    (
        "eddy_memory_limit_hits_total",
        "Events and timers of the operator on this worker whose call went over the memory limit (max_memory_bytes); each is among the failed and dead-lettered.",
        |s| s.memory_limit_hits,
    ),
    (
        "eddy_state_cache_hits_total",
        "Lookups of a key the operator's state cache on this worker held.",
        |s| s.cache_hits,
    ),
    (
        "eddy_state_cache_misses_total",
        "Lookups of a key the state cache did not hold: read from the state directory (or new).",
        |s| s.cache_misses,
    ),
    (
        "eddy_state_cache_evictions_total",
        "Keys the state cache evicted to stay within [state] cache_bytes.",
        |s| s.cache_evictions,
    ),
];

/// The per-operator, per-worker gauges: name, help, and how to read it.
const PER_WORKER_GAUGES: [PerWorker; 2] = [
    (
        "eddy_state_cache_keys",
        "Keys the operator's state cache on this worker holds now.",
        |s| s.cache_keys,
    ),
    (
        "eddy_state_cache_bytes",
        "Memory of the operator's state cache on this worker now, as counted against [state] cache_bytes.",
        |s| s.cache_bytes,
    ),
];

/// The metrics of the pipeline `c` serves, now.
pub(super) fn render(c: &Controller) -> String {
    let mut out = Out(String::with_capacity(8192));
    let live = c.live();
    let workers: Vec<Vec<OpStats>> = (0..live.workers.len())
        .map(|w| live.worker(w).ops.clone())
        .collect();
    let names: Vec<&str> = c.operator_names().collect();
    let versions = c.versions().clone();

    out.family(
        "eddy_build_info",
        "gauge",
        "The eddy that runs this pipeline (value 1).",
    );
    out.sample(
        "eddy_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    out.family("eddy_workers", "gauge", "Worker threads.");
    out.sample("eddy_workers", &[], workers.len());

    let families = PER_WORKER
        .iter()
        .map(|f| (f, "counter"))
        .chain(PER_WORKER_GAUGES.iter().map(|f| (f, "gauge")));
    for ((name, help, read), kind) in families {
        out.family(name, kind, help);
        for (op, opname) in names.iter().enumerate() {
            for (w, ops) in workers.iter().enumerate() {
                let s = ops.get(op).copied().unwrap_or_default();
                out.sample(
                    name,
                    &[("operator", opname), ("worker", &w.to_string())],
                    read(&s),
                );
            }
        }
    }

    out.family(
        "eddy_operator_generation",
        "gauge",
        "Generation of the operator's version running now (0 for its first version, one more per swap or rollback).",
    );
    for (opname, v) in names.iter().zip(&versions) {
        out.sample(
            "eddy_operator_generation",
            &[("operator", opname)],
            v.active,
        );
    }
    out.family(
        "eddy_operator_version_info",
        "gauge",
        "The version running now: its content hash (value 1).",
    );
    for (opname, v) in names.iter().zip(&versions) {
        out.sample(
            "eddy_operator_version_info",
            &[
                ("operator", opname),
                ("version", &v.current().hash),
                ("generation", &v.active.to_string()),
            ],
            1,
        );
    }
    for (name, help, rollback) in [
        (
            "eddy_swaps_total",
            "Swaps of the operator to a new version in this run (durable).",
            false,
        ),
        (
            "eddy_rollbacks_total",
            "Rollbacks of the operator to its previous version in this run (durable).",
            true,
        ),
    ] {
        out.family(name, "counter", help);
        for (op, opname) in names.iter().enumerate() {
            let n = live.ops.get(op).map_or(0, |o| match rollback {
                true => o.rollbacks.load(Ordering::Relaxed),
                false => o.swaps.load(Ordering::Relaxed),
            });
            out.sample(name, &[("operator", opname)], n);
        }
    }

    out.family(
        "eddy_handling_duration_seconds",
        "histogram",
        "Time for the operator to handle one run of events in one call: the events of one batch for it on one worker (per batch, not per event), all workers together.",
    );
    for (op, opname) in names.iter().enumerate() {
        let Some(o) = live.ops.get(op) else { continue };
        let (cumulative, sum) = o.handling.read();
        for (bound, n) in BUCKETS_US.iter().zip(&cumulative) {
            let le = secs(*bound).to_string();
            out.sample(
                "eddy_handling_duration_seconds_bucket",
                &[("operator", opname), ("le", &le)],
                n,
            );
        }
        let count = cumulative.last().copied().unwrap_or(0);
        out.sample(
            "eddy_handling_duration_seconds_bucket",
            &[("operator", opname), ("le", "+Inf")],
            count,
        );
        out.sample(
            "eddy_handling_duration_seconds_sum",
            &[("operator", opname)],
            sum,
        );
        out.sample(
            "eddy_handling_duration_seconds_count",
            &[("operator", opname)],
            count,
        );
    }

    let cp = &live.checkpoints;
    let count = cp.count.load(Ordering::Relaxed);
    out.family(
        "eddy_checkpoint_duration_seconds",
        "summary",
        "Time to make checkpoints durable (one write transaction each), in this run.",
    );
    out.sample(
        "eddy_checkpoint_duration_seconds_sum",
        &[],
        secs(cp.micros.load(Ordering::Relaxed)),
    );
    out.sample("eddy_checkpoint_duration_seconds_count", &[], count);
    out.family(
        "eddy_checkpoint_duration_max_seconds",
        "gauge",
        "The longest checkpoint commit of this run.",
    );
    out.sample(
        "eddy_checkpoint_duration_max_seconds",
        &[],
        secs(cp.max_micros.load(Ordering::Relaxed)),
    );
    out.family(
        "eddy_checkpoint_failures_total",
        "counter",
        "Checkpoints whose write transaction failed.",
    );
    out.sample(
        "eddy_checkpoint_failures_total",
        &[],
        cp.failed.load(Ordering::Relaxed),
    );
    out.family(
        "eddy_checkpoint_writes_total",
        "counter",
        "State keys written or deleted by checkpoints in this run.",
    );
    out.sample(
        "eddy_checkpoint_writes_total",
        &[],
        cp.writes.load(Ordering::Relaxed),
    );
    out.family(
        "eddy_checkpoint_written_bytes_total",
        "counter",
        "Bytes of state records written by checkpoints in this run.",
    );
    out.sample(
        "eddy_checkpoint_written_bytes_total",
        &[],
        cp.bytes.load(Ordering::Relaxed),
    );
    out.family(
        "eddy_input_stall_seconds",
        "summary",
        "Time the input stood still for checkpoints in this run: from the barrier (the workers finish what they hold and hand over their state) to the submit of the commit, the wait for the previous commit included.",
    );
    out.sample(
        "eddy_input_stall_seconds_sum",
        &[],
        secs(cp.stall_micros.load(Ordering::Relaxed)),
    );
    out.sample(
        "eddy_input_stall_seconds_count",
        &[],
        cp.stalls.load(Ordering::Relaxed),
    );
    out.family(
        "eddy_input_stall_max_seconds",
        "gauge",
        "The longest input stall for a checkpoint in this run.",
    );
    out.sample(
        "eddy_input_stall_max_seconds",
        &[],
        secs(cp.stall_max_micros.load(Ordering::Relaxed)),
    );
    out.family(
        "eddy_state_directory_size_bytes",
        "gauge",
        "Bytes of the state directory's own files now: the state database and the kept components (the default dead-letter file not counted).",
    );
    out.sample(
        "eddy_state_directory_size_bytes",
        &[],
        c.store().size_bytes(),
    );
    let cmp = &live.compactions;
    out.family(
        "eddy_state_compactions_total",
        "counter",
        "Compactions of the state database while the pipeline ran ([state] compact).",
    );
    out.sample(
        "eddy_state_compactions_total",
        &[],
        cmp.count.load(Ordering::Relaxed),
    );
    out.family(
        "eddy_state_compaction_freed_bytes_total",
        "counter",
        "Bytes those compactions gave back to the file system.",
    );
    out.sample(
        "eddy_state_compaction_freed_bytes_total",
        &[],
        cmp.freed.load(Ordering::Relaxed),
    );
    out.family(
        "eddy_state_compaction_stall_max_seconds",
        "gauge",
        "The longest input stall for a compaction in this run.",
    );
    out.sample(
        "eddy_state_compaction_stall_max_seconds",
        &[],
        secs(cmp.max_micros.load(Ordering::Relaxed)),
    );
    out.family(
        "eddy_state_compactions_busy_total",
        "counter",
        "Compactions put off because a reader of the state was open (tried again soon).",
    );
    out.sample(
        "eddy_state_compactions_busy_total",
        &[],
        cmp.busy.load(Ordering::Relaxed),
    );
    let last = cp.last_ms.load(Ordering::Relaxed);
    if last > 0 {
        out.family(
            "eddy_checkpoint_last_timestamp_seconds",
            "gauge",
            "When the last checkpoint became durable (Unix time).",
        );
        out.sample(
            "eddy_checkpoint_last_timestamp_seconds",
            &[],
            last as f64 / 1e3,
        );
    }

    let w = live.watermark.load(Ordering::Relaxed);
    if w != i64::MIN {
        out.family(
            "eddy_watermark",
            "gauge",
            "The input's watermark, in its time field's unit (9223372036854775807 once the input ended).",
        );
        out.sample("eddy_watermark", &[("input", c.input())], w);
    }

    let lines = live.lines_read.load(Ordering::Relaxed);
    let offset = live.bytes_read.load(Ordering::Relaxed);
    out.family(
        "eddy_source_position_lines",
        "gauge",
        "Input lines read so far, counted from the start of the input.",
    );
    out.sample("eddy_source_position_lines", &[("input", c.input())], lines);
    out.family(
        "eddy_source_position_bytes",
        "gauge",
        "Byte offset in the input after the last line read.",
    );
    out.sample(
        "eddy_source_position_bytes",
        &[("input", c.input())],
        offset,
    );
    let parts = live.kafka().clone();
    if !parts.is_empty() {
        for (name, help, get) in [
            (
                "eddy_kafka_committed_offset",
                "Kafka input: the next offset of the last checkpoint, committed in the consumer group with the outputs.",
                (|p: &crate::stats::KafkaPartition| p.committed) as fn(&crate::stats::KafkaPartition) -> Option<i64>,
            ),
            (
                "eddy_kafka_end_offset",
                "Kafka input: the partition's end (last stable offset) as the consumer last saw it.",
                |p| p.end,
            ),
            (
                "eddy_kafka_lag_records",
                "Kafka input: records after the last checkpoint (end minus committed offset).",
                |p| p.lag,
            ),
        ] {
            out.family(name, "gauge", help);
            for p in &parts {
                if let Some(v) = get(p) {
                    let partition = p.partition.to_string();
                    out.sample(
                        name,
                        &[("topic", p.topic.as_str()), ("partition", partition.as_str())],
                        v,
                    );
                }
            }
        }
    }
    let size = match c.input() {
        "-" => None,
        path => std::fs::metadata(path)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len()),
    };
    if let Some(size) = size {
        out.family(
            "eddy_source_size_bytes",
            "gauge",
            "Size of the input file now.",
        );
        out.sample("eddy_source_size_bytes", &[("input", c.input())], size);
        out.family(
            "eddy_source_lag_bytes",
            "gauge",
            "Bytes of the input file not read yet.",
        );
        out.sample(
            "eddy_source_lag_bytes",
            &[("input", c.input())],
            size.saturating_sub(offset),
        );
    }
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut out = Out(String::new());
        out.family("m_total", "counter", "Help with \\ and\nnewline.");
        out.sample("m_total", &[("k", "v\"")], 3);
        assert_eq!(
            out.0,
            "# HELP m_total Help with \\\\ and\\nnewline.\n# TYPE m_total counter\nm_total{k=\"v\\\"\"} 3\n"
        );
    }
}
