//! [`Batch`]: events packed in one buffer, as they travel to a worker.

/// One event in a batch; key and value are ranges of the batch's bytes:
/// the key `start..mid`, the value `mid..end` (`usize`: no amount of
/// emitted bytes can wrap them).
#[derive(Clone, Copy)]
pub(super) struct Ev {
    /// Index of the operator that handles it.
    pub(super) stage: u16,
    pub(super) start: usize,
    pub(super) mid: usize,
    pub(super) end: usize,
    pub(super) time: Option<i64>,
    /// Input line it derives from (for dead letters).
    pub(super) line: u64,
}

/// Events packed in one buffer: one allocation per batch, not per event.
#[derive(Default)]
pub struct Batch {
    pub(super) data: Vec<u8>,
    pub(super) events: Vec<Ev>,
}

impl Batch {
    /// An empty batch with room for `n` events.
    pub fn with_capacity(n: usize) -> Batch {
        Batch {
            data: Vec::with_capacity(n * 64),
            events: Vec::with_capacity(n),
        }
    }

    /// Appends an event for operator `stage`.
    pub fn push(&mut self, stage: u16, key: &str, value: &[u8], time: Option<i64>, line: u64) {
        let start = self.data.len();
        self.data.extend_from_slice(key.as_bytes());
        let mid = self.data.len();
        self.data.extend_from_slice(value);
        let end = self.data.len();
        self.events.push(Ev {
            stage,
            start,
            mid,
            end,
            time,
            line,
        });
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether there is no event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub(super) fn key(&self, e: &Ev) -> &str {
        // Only ever filled from `&str` keys.
        std::str::from_utf8(&self.data[e.start..e.mid]).expect("keys are UTF-8")
    }
}
