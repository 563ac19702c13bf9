//! The operator's [`Limits`] as the host checks them, and the error a
//! refused host call traps with.

use thiserror::Error;

use super::index::lookup;
use super::{OpCtx, MAX_STATE_NAMES};

/// `text` cut to at most `max` bytes (at a character boundary), with a note
/// of how many bytes were cut.
pub fn cap_reason(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}... [{} more bytes cut: max_reason_bytes = {max}]",
        &text[..end],
        text.len() - end
    )
}

/// A host call that cannot be served; it traps the operator.
#[derive(Debug, Error)]
pub enum HostError {
    #[error(
        "state, timers or emit used outside `handle` and `on-timer` (no key is being processed)"
    )]
    /// A state or emit call outside an event.
    NoKey,
    #[error("timers.watermark called in a `handle-batch` call whose events span watermark advances; the host hands them over again, split at the advances")]
    /// The watermark read in a batch that spans watermark advances (the
    /// host then replays the batch split at them; a user never sees this).
    WatermarkInSpan,
    #[error("timers.set: this operator does not export `on-timer` (world `timer-operator` of contract 0.3.0), so its timers could never fire")]
    /// A timer set by an operator without a timer handler.
    NoTimerHandler,
    #[error("timers.set: only the first operator of a chain has timers for now")]
    /// A timer set by a later operator of a chain.
    TimersLaterStage,
    #[error("a new timer would make more than {limit} pending timers for this key, over the limit max_timers_per_key = {limit}")]
    /// More pending timers for one key than `max_timers_per_key`.
    TooManyTimers {
        /// The limit.
        limit: usize,
    },
    #[error(
        "timer names starting with \"\\0ttl:\" are reserved for the host (state time to live)"
    )]
    /// A timer name the host keeps for itself.
    ReservedTimerName,
    #[error("state value of {size} bytes exceeds the limit max_state_value = {limit} bytes")]
    /// A state value over `max_state_value_bytes`.
    StateTooLarge {
        /// The size, in bytes.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    #[error("emitted value of {size} bytes exceeds the limit max_emit = {limit} bytes")]
    /// An emitted payload over `max_emit_bytes`.
    EmitTooLarge {
        /// The size, in bytes.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    #[error("emit called from `migrate` (a migration may only rewrite state)")]
    /// `emit` during a migration.
    EmitInMigrate,
    #[error("reading the stored items of a spilled list: {0}")]
    /// Reading a spilled list's items from the state directory failed.
    Store(String),
    #[error("a spilled list's items are stored, but this operator has no state directory to read them from")]
    /// A spilled list's items are out of memory without a store (cannot
    /// happen in a pipeline: items leave memory only once a reader sees
    /// them).
    NoStore,
    #[error("{0} is not valid UTF-8")]
    /// A name or key that is not UTF-8.
    NotUtf8(&'static str),
    #[error("{what} of {size} bytes exceeds the limit max_name_bytes = {limit} bytes")]
    /// A name over `max_name_bytes`.
    NameTooLong {
        /// What it is.
        what: &'static str,
        /// The size, in bytes.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    #[error("a new state name would make more than {limit} distinct state names for this operator (names are per operator, like columns: keep per-item data in a map or list, not in names of its own)")]
    /// More distinct state names than allowed.
    TooManyNames {
        /// The limit, in bytes.
        limit: usize,
    },
    #[error("emitted key of {size} bytes exceeds the limit max_emit_key_bytes = {limit} bytes")]
    /// An emitted key over `max_emit_key_bytes`.
    KeyTooLong {
        /// The size, in bytes.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    #[error("the event emitted {size} bytes (keys and payloads), over the limit max_emit_bytes_per_event = {limit} bytes")]
    /// An event's emits over `max_emit_bytes_per_event`.
    EventEmitsTooLarge {
        /// The size, in bytes.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    #[error("the event grew the state of its key to {size} bytes, over the limit max_key_state_bytes = {limit} bytes")]
    /// A key's state over `max_key_state_bytes`.
    KeyStateTooLarge {
        /// The size, in bytes.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    #[error("the event holds {size} bytes in the host (what it emitted, its state growth and the state it replaced, kept to undo it), over the limit max_memory_bytes = {limit} bytes")]
    /// What an event holds in the host over `max_memory_bytes`.
    EventTooLarge {
        /// The size, in bytes.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
}

impl From<crate::state::StoreError> for HostError {
    fn from(e: crate::state::StoreError) -> HostError {
        HostError::Store(e.to_string())
    }
}

impl OpCtx {
    pub(super) fn check_emit(&self, size: usize) -> Result<(), HostError> {
        if size > self.limits.max_emit {
            return Err(HostError::EmitTooLarge {
                size,
                limit: self.limits.max_emit,
            });
        }
        Ok(())
    }

    pub(super) fn check_size(&self, size: usize) -> Result<(), HostError> {
        if size > self.limits.max_state_value {
            return Err(HostError::StateTooLarge {
                size,
                limit: self.limits.max_state_value,
            });
        }
        Ok(())
    }

    pub(super) fn check_name(&self, what: &'static str, name: &[u8]) -> Result<(), HostError> {
        if name.len() > self.limits.max_name {
            return Err(HostError::NameTooLong {
                what,
                size: name.len(),
                limit: self.limits.max_name,
            });
        }
        Ok(())
    }

    /// Checks a state name a write is about to use: its length, and, since
    /// every state name an operator writes is kept for its lifetime
    /// (interned), that it is not one too many (looked at only once the
    /// table is full, so it costs nothing before).
    pub(super) fn check_state_name(&self, name: &[u8]) -> Result<(), HostError> {
        self.check_name("state name", name)?;
        if self.names.len() >= MAX_STATE_NAMES && lookup(&self.names, name).is_none() {
            return Err(HostError::TooManyNames {
                limit: MAX_STATE_NAMES,
            });
        }
        Ok(())
    }

    pub(super) fn check_key(&self, key: &[u8]) -> Result<(), HostError> {
        if key.len() > self.limits.max_emit_key {
            return Err(HostError::KeyTooLong {
                size: key.len(),
                limit: self.limits.max_emit_key,
            });
        }
        Ok(())
    }

    /// Checks that the current event may hold `more` bytes besides what it
    /// holds (emits, state growth, replaced state) within
    /// [`Limits::max_memory`], with its key's state at `size` bytes.
    pub(super) fn check_held(&self, size: usize, more: usize) -> Result<(), HostError> {
        let total = self.held + self.emits.bytes() + size.saturating_sub(self.size_at_begin) + more;
        if total > self.limits.max_memory {
            return Err(HostError::EventTooLarge {
                size: total,
                limit: self.limits.max_memory,
            });
        }
        Ok(())
    }

    /// The current key's slot index.
    pub(super) fn current(&self) -> Result<usize, HostError> {
        Ok(self.current.ok_or(HostError::NoKey)? as usize)
    }

    // ---- the state interface -------------------------------------------------
    //
    // Reads look names up without adding them (a name never written has no
    // state); writes check the name's length before it is added.
}
