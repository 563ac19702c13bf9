//! [`Batch`]: events packed in one buffer, as they travel to a worker,
//! with the hot swaps and watermark advances that fall between two of its
//! events.

use std::time::Instant;

use crate::operator::Operator;

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
    /// A late event delivered under `late = "deliver"` (first operator
    /// only): handled on its own, flagged late.
    pub(super) late: bool,
}

/// A hot swap carried in a batch: before the batch's event `at`, operator
/// `stage` becomes `op`.
pub(super) struct Switch {
    pub(super) at: usize,
    pub(super) stage: usize,
    pub(super) op: Box<dyn Operator>,
    pub(super) generation: u32,
}

/// Something that happens between two events of a batch.
pub(super) enum Cut {
    /// A hot swap.
    Switch(Switch),
    /// The watermark of the first operator's input advances to `w`, at
    /// input line `line`: its timers due there fire (unless not `fire`:
    /// the watermark a restart resumes at).
    Mark {
        at: usize,
        w: i64,
        line: u64,
        fire: bool,
    },
}

impl Cut {
    /// The index of the event it comes before.
    pub(super) fn at(&self) -> usize {
        match self {
            Cut::Switch(s) => s.at,
            Cut::Mark { at, .. } => *at,
        }
    }
}

/// Events packed in one buffer: one allocation per batch, not per event.
#[derive(Default)]
pub struct Batch {
    pub(super) data: Vec<u8>,
    pub(super) events: Vec<Ev>,
    /// Swaps at a barrier and watermark advances between two events of
    /// the batch (or before its first, or after its last), in the order
    /// they were made.
    pub(super) cuts: Vec<Cut>,
    /// When the batch was handed to its worker (set by the sender): the
    /// earliest its events could be handled, for swap pauses.
    pub(super) sent: Option<Instant>,
}

impl Batch {
    /// An empty batch with room for `n` events.
    pub fn with_capacity(n: usize) -> Batch {
        Batch {
            data: Vec::with_capacity(n * 64),
            events: Vec::with_capacity(n),
            cuts: Vec::new(),
            sent: None,
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
            late: false,
        });
    }

    /// Flags the event pushed last as late (`[source.watermark] late =
    /// "deliver"`): it is handled on its own, and the operator's
    /// `timers.late` returns true while it is.
    pub fn flag_last_late(&mut self) {
        if let Some(e) = self.events.last_mut() {
            e.late = true;
        }
    }

    /// Swaps operator `stage` to `op` (already instantiated and
    /// initialised, running generation `generation`) at this point of the
    /// stream: the events pushed so far go to the old version, later ones
    /// to `op`. For the first operator of a chain only, whose events all
    /// come from the coordinator's batches; a later operator's events also
    /// come from peers, and it switches by [`super::Msg::Swap`].
    pub fn switch_here(&mut self, stage: usize, op: Box<dyn Operator>, generation: u32) {
        self.cuts.push(Cut::Switch(Switch {
            at: self.events.len(),
            stage,
            op,
            generation,
        }));
    }

    /// Advances the watermark of the first operator's input to `w` at this
    /// point of the stream (input line `line`): the events pushed so far
    /// are handled before, then the timers due at `w` fire, then later
    /// events are handled. The coordinator puts the same advance in every
    /// worker's batch, so each sees it at the same point of the input.
    /// Without `fire`, the operator takes up `w` and nothing fires: the
    /// watermark of the checkpoint a restart resumes from.
    pub fn mark_here(&mut self, w: i64, line: u64, fire: bool) {
        self.cuts.push(Cut::Mark {
            at: self.events.len(),
            w,
            line,
            fire,
        });
    }

    /// Whether it carries a swap or a watermark advance (then it is sent
    /// even with no event).
    pub fn carries_cut(&self) -> bool {
        !self.cuts.is_empty()
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
