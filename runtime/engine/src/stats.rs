//! What the running pipeline shows of itself (`eddy status`, the swap
//! bench): counters per operator and worker, positions, swap pauses.
//! Workers write them; the control endpoint reads them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// Counters of one operator on one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpStats {
    /// Events handled successfully.
    pub handled: u64,
    /// Events that failed (dead-lettered).
    pub failed: u64,
    /// Events emitted (by events and by timers).
    pub emitted: u64,
    /// Timers that fired (whatever their handler did).
    #[serde(default)]
    pub timers_fired: u64,
    /// Timers whose handler failed (dead-lettered).
    #[serde(default)]
    pub timers_failed: u64,
    /// State cache lookups of a key that was cached.
    #[serde(default)]
    pub cache_hits: u64,
    /// State cache lookups of a key that was not (read from the store,
    /// or new).
    #[serde(default)]
    pub cache_misses: u64,
    /// Keys evicted from the state cache.
    #[serde(default)]
    pub cache_evictions: u64,
    /// Keys in the state cache now.
    #[serde(default)]
    pub cache_keys: u64,
    /// Memory of the state cache now, in bytes, as counted against
    /// `[state] cache_bytes`.
    #[serde(default)]
    pub cache_bytes: u64,
    /// Events and timers whose call ran out of its CPU budget
    /// (`max_call_ms`, an epoch deadline): counted among the failed.
    #[serde(default)]
    pub cpu_limit_hits: u64,
    /// Events and timers whose call went over the memory limit
    /// (`max_memory_bytes`): counted among the failed.
    #[serde(default)]
    pub memory_limit_hits: u64,
}

impl OpStats {
    /// Counts a failed call that broke the CPU or memory limit, if
    /// `error` says it did.
    pub fn count_limit(&mut self, error: &crate::operator::HandleError) {
        match error.limit() {
            Some(crate::operator::Limit::Cpu) => self.cpu_limit_hits += 1,
            Some(crate::operator::Limit::Memory) => self.memory_limit_hits += 1,
            None => {}
        }
    }
}

/// One hot swap as a worker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SwapPause {
    /// Operator index in the chain.
    pub stage: usize,
    /// Generation swapped in.
    pub generation: u32,
    /// What the swap held the worker up, in microseconds: from the moment
    /// the new version could have started (the old version's last event
    /// on this worker ended, and the new version's first event had reached
    /// the worker) to the start of that first event. The new instance's
    /// slower first run comes on top (`first_run_extra_us`).
    pub pause_us: f64,
    /// The part of `pause_us` before the new instance was in place, in
    /// microseconds.
    pub before_switch_us: f64,
    /// Time between the old version's last event and the moment the new
    /// version's first event reached the worker, in microseconds: the
    /// worker had no event to handle (the input was slower, or a
    /// checkpoint held it). The whole gap between the two versions' events
    /// is `idle_us + pause_us`.
    #[serde(default)]
    pub idle_us: f64,
    /// How much longer the new version's first run of events on this
    /// worker took than at the pace of its second run, in microseconds: a
    /// new instance's first call meets fresh memory and cold caches, which
    /// delays those events too. 0 until its second run (and when not
    /// longer).
    #[serde(default)]
    pub first_run_extra_us: f64,
}

/// What a worker shows of itself while it runs (`eddy status`), updated
/// after every batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerLive {
    /// Counters per operator.
    pub ops: Vec<OpStats>,
    /// Input line of the last event this worker handled (its position).
    pub line: u64,
    /// The most recent swaps (at most `PAUSES_KEPT`), oldest first.
    pub pauses: Vec<SwapPause>,
}

/// Swap pauses kept per worker for `eddy status` and the bench.
pub const PAUSES_KEPT: usize = 4096;

/// Every worker's [`WorkerLive`], by worker id, and the coordinator's
/// position.
#[derive(Debug, Default)]
pub struct Live {
    /// Per worker, by id.
    pub workers: Vec<Mutex<WorkerLive>>,
    /// Input lines read so far (updated by the coordinator).
    pub lines_read: AtomicU64,
    /// Byte offset in the input after the last line read (updated with
    /// `lines_read`).
    pub bytes_read: AtomicU64,
    /// The input's watermark as last announced to the workers (`i64::MIN`:
    /// none yet).
    pub watermark: std::sync::atomic::AtomicI64,
    /// A Kafka input: per partition, its positions (updated at each
    /// checkpoint).
    pub kafka: Mutex<Vec<KafkaPartition>>,
    /// Per operator, in chain order: swaps and rollbacks in this run.
    pub ops: Vec<OpLive>,
    /// Checkpoints made durable in this run.
    pub checkpoints: CheckpointLive,
    /// Compactions of the state database in this run.
    pub compactions: CompactLive,
}

/// One partition of a Kafka input, as `eddy status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KafkaPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset of the last checkpoint (committed in the consumer
    /// group with the outputs, and in the state directory), if any.
    pub committed: Option<i64>,
    /// The partition's end (last stable offset) as the consumer last saw
    /// it, if known yet.
    pub end: Option<i64>,
    /// Records not yet checkpointed: `end - committed` (when both are
    /// known).
    pub lag: Option<i64>,
}

/// Swaps and rollbacks of one operator in this run (`/metrics`), counted
/// by the swap controller once each is durable, and how long its runs of
/// events took.
#[derive(Debug, Default)]
pub struct OpLive {
    /// Swaps to a new version.
    pub swaps: AtomicU64,
    /// Rollbacks to the previous version.
    pub rollbacks: AtomicU64,
    /// Time to handle each run of events a worker hands the operator in
    /// one call (the events of one batch for it; per batch, not per
    /// event), over all workers.
    pub handling: Histogram,
}

/// Upper bounds of the [`Histogram`] buckets, in microseconds (a last
/// bucket, `+Inf`, takes the rest).
pub const BUCKETS_US: [u64; 16] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    1_000_000, 10_000_000,
];

/// A latency histogram that threads add to without a lock: a count per
/// bucket of [`BUCKETS_US`] (not cumulative) and the sum.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket; the last one is `+Inf`.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    /// The sum of the observations, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Adds one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let us = d.as_micros();
        let i = BUCKETS_US.partition_point(|&b| (b as u128) < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// The cumulative count at or under each bound of [`BUCKETS_US`], then
    /// the total count (`+Inf`), and the sum in seconds.
    pub fn read(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        (
            cumulative,
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }
}

/// The checkpoints of this run (`/metrics`), counted by the committer
/// thread around each write transaction.
#[derive(Debug, Default)]
pub struct CheckpointLive {
    /// Checkpoints made durable.
    pub count: AtomicU64,
    /// Checkpoints whose write transaction failed.
    pub failed: AtomicU64,
    /// Time spent committing them, in microseconds.
    pub micros: AtomicU64,
    /// The longest commit, in microseconds.
    pub max_micros: AtomicU64,
    /// State writes (changed or deleted keys) they carried.
    pub writes: AtomicU64,
    /// Bytes of the state records they wrote.
    pub bytes: AtomicU64,
    /// When the last one became durable, in milliseconds since the Unix
    /// epoch (0: none yet in this run).
    pub last_ms: AtomicU64,
    /// Checkpoints the coordinator made (each stops the input while the
    /// workers hand over their state and the previous commit finishes).
    pub stalls: AtomicU64,
    /// Time the input stood still for them, in microseconds.
    pub stall_micros: AtomicU64,
    /// The longest of those stalls, in microseconds.
    pub stall_max_micros: AtomicU64,
}

impl CheckpointLive {
    /// Counts one input stall of `d` (a checkpoint's barrier and wait for
    /// the previous commit).
    pub fn stalled(&self, d: std::time::Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.stalls.fetch_add(1, Ordering::Relaxed);
        self.stall_micros.fetch_add(us, Ordering::Relaxed);
        self.stall_max_micros.fetch_max(us, Ordering::Relaxed);
    }
}

/// Compactions of `state.redb` while the pipeline runs (`[state]
/// compact`), for `eddy status` and `/metrics`.
#[derive(Debug, Default)]
pub struct CompactLive {
    /// Compactions done.
    pub count: AtomicU64,
    /// Bytes they gave back to the file system.
    pub freed: AtomicU64,
    /// Time the input stood still for them (the workers' readers let go,
    /// the compaction, the readers renewed), in microseconds.
    pub micros: AtomicU64,
    /// The longest of them, in microseconds.
    pub max_micros: AtomicU64,
    /// Compactions given up because a reader was open (a state query, a
    /// snapshot, a swap being prepared): tried again soon.
    pub busy: AtomicU64,
    /// Looks at the file's free space that found too little to compact.
    pub not_worth: AtomicU64,
    /// When the last one ended, in milliseconds since the Unix epoch (0:
    /// none yet in this run).
    pub last_ms: AtomicU64,
}

/// What `eddy status` shows of the compactions (`CompactLive`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CompactStatus {
    /// Compactions done in this run.
    pub count: u64,
    /// Bytes they gave back.
    pub freed_bytes: u64,
    /// The longest input stall for one, in microseconds.
    pub max_stall_us: u64,
    /// Compactions given up because a reader was open.
    pub busy: u64,
}

impl CompactLive {
    /// Counts one compaction from `before` to `after` bytes that stalled
    /// the input for `d`.
    pub fn done(&self, before: u64, after: u64, d: std::time::Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.count.fetch_add(1, Ordering::Relaxed);
        self.freed
            .fetch_add(before.saturating_sub(after), Ordering::Relaxed);
        self.micros.fetch_add(us, Ordering::Relaxed);
        self.max_micros.fetch_max(us, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// The counts `eddy status` shows.
    pub fn status(&self) -> CompactStatus {
        CompactStatus {
            count: self.count.load(Ordering::Relaxed),
            freed_bytes: self.freed.load(Ordering::Relaxed),
            max_stall_us: self.max_micros.load(Ordering::Relaxed),
            busy: self.busy.load(Ordering::Relaxed),
        }
    }
}

impl Live {
    /// Counters for `workers` workers running `operators` operators each.
    pub fn new(workers: usize, operators: usize) -> Live {
        Live {
            workers: (0..workers)
                .map(|_| {
                    Mutex::new(WorkerLive {
                        ops: vec![OpStats::default(); operators],
                        ..WorkerLive::default()
                    })
                })
                .collect(),
            lines_read: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            watermark: std::sync::atomic::AtomicI64::new(i64::MIN),
            kafka: Mutex::new(Vec::new()),
            ops: (0..operators).map(|_| OpLive::default()).collect(),
            checkpoints: CheckpointLive::default(),
            compactions: CompactLive::default(),
        }
    }

    /// The Kafka input's partitions (a panic elsewhere does not hide
    /// them).
    pub fn kafka(&self) -> MutexGuard<'_, Vec<KafkaPartition>> {
        self.kafka.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Worker `id`'s counters (a panic elsewhere does not hide them).
    pub fn worker(&self, id: usize) -> MutexGuard<'_, WorkerLive> {
        self.workers[id].lock().unwrap_or_else(|e| e.into_inner())
    }
}
