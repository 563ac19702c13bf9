//! What the running pipeline shows of itself (`eddy status`, the swap
//! bench): counters per operator and worker, positions, swap pauses.
//! Workers write them; the control endpoint reads them.

use std::sync::atomic::AtomicU64;
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
    /// A Kafka input: per partition, its positions (updated at each
    /// checkpoint).
    pub kafka: Mutex<Vec<KafkaPartition>>,
    /// Per operator, in chain order: swaps and rollbacks in this run.
    pub ops: Vec<OpLive>,
    /// Checkpoints made durable in this run.
    pub checkpoints: CheckpointLive,
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
/// by the swap controller once each is durable.
#[derive(Debug, Default)]
pub struct OpLive {
    /// Swaps to a new version.
    pub swaps: AtomicU64,
    /// Rollbacks to the previous version.
    pub rollbacks: AtomicU64,
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
            kafka: Mutex::new(Vec::new()),
            ops: (0..operators).map(|_| OpLive::default()).collect(),
            checkpoints: CheckpointLive::default(),
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
