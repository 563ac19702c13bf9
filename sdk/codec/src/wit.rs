//! The types of `eddy:operator/batch` (`wit/batch.wit`), as both bindings
//! use them: the SDK's `wit_bindgen::generate!` maps the interface here
//! (`with`), and the host lifts and lowers these very types with wasmtime
//! (feature `host`). Field names and order follow the WIT.
//!
//! A batch and a result are columns: lists of numbers with one entry per
//! item, and [`Strings`] columns of byte strings, so that they cross the
//! boundary as a few bulk copies.

use thiserror::Error;
#[cfg(feature = "host")]
use wasmtime::component::{ComponentType, Lift, Lower};

/// Why a [`Strings`] column is not well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum StringsError {
    /// A string ends past the column's bytes.
    #[error("string {index} ends at {end}, past its {bytes} bytes")]
    OutsideBytes {
        /// Index of the string.
        index: usize,
        /// Its end.
        end: u32,
        /// Bytes of the column.
        bytes: usize,
    },
    /// A string ends before the one before it.
    #[error("string {index} ends at {end}, before the string before it ({previous})")]
    Unordered {
        /// Index of the string.
        index: usize,
        /// Its end.
        end: u32,
        /// The end of the string before it.
        previous: u32,
    },
    /// The bytes go on after the last string.
    #[error("{bytes} bytes, but its strings end at {end}")]
    TrailingBytes {
        /// Bytes of the column.
        bytes: usize,
        /// The end of its last string (0 without strings).
        end: u32,
    },
}

/// A column of byte strings in one buffer (Apache Arrow's layout): string
/// `i` is `bytes[ends[i - 1] .. ends[i]]`, the first from 0. Well formed
/// when `ends` never decreases and its last entry is `bytes.len()` (with
/// no strings, `bytes` is empty); readers check it before use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "host", derive(ComponentType, Lift, Lower))]
#[cfg_attr(feature = "host", component(record))]
pub struct Strings {
    /// The strings' bytes, one after the other.
    pub bytes: Vec<u8>,
    /// Where each string ends in `bytes` (one past its last byte).
    pub ends: Vec<u32>,
}

impl Strings {
    /// Number of strings.
    #[inline]
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is no string.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Checks that the column is well formed: every string lies in the
    /// bytes, in order, and the bytes end with the last one. Then
    /// [`Strings::get`] finds every string.
    pub fn check(&self) -> Result<(), StringsError> {
        let bytes = self.bytes.len();
        let mut previous = 0u32;
        for (index, &end) in self.ends.iter().enumerate() {
            if end as usize > bytes {
                return Err(StringsError::OutsideBytes { index, end, bytes });
            }
            if end < previous {
                return Err(StringsError::Unordered {
                    index,
                    end,
                    previous,
                });
            }
            previous = end;
        }
        if previous as usize != bytes {
            return Err(StringsError::TrailingBytes {
                bytes,
                end: previous,
            });
        }
        Ok(())
    }

    /// Where string `i` lies in `bytes`; `None` when there is no such
    /// string or it does not lie in `bytes`.
    #[inline]
    pub fn range(&self, i: usize) -> Option<std::ops::Range<usize>> {
        let end = *self.ends.get(i)? as usize;
        let start = match i {
            0 => 0,
            _ => *self.ends.get(i - 1)? as usize,
        };
        (start <= end && end <= self.bytes.len()).then_some(start..end)
    }

    /// String `i`; `None` when there is no such string or it does not lie
    /// in `bytes`.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.bytes.get(self.range(i)?)
    }

    /// Appends a string.
    #[inline]
    pub fn push(&mut self, s: &[u8]) {
        crate::extend(&mut self.bytes, s);
        self.ends.push(offset(self.bytes.len()));
    }

    /// Appends a string that `write` appends to the buffer it is given;
    /// when `write` fails, nothing is appended and its error returned.
    pub fn push_with<E>(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mark = self.bytes.len();
        match write(&mut self.bytes) {
            Ok(()) => {
                self.ends.push(offset(self.bytes.len()));
                Ok(())
            }
            Err(e) => {
                self.bytes.truncate(mark);
                Err(e)
            }
        }
    }

    /// Keeps the first `n` strings.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.ends.len() {
            return;
        }
        self.ends.truncate(n);
        let end = self.ends.last().map_or(0, |&e| e as usize);
        self.bytes.truncate(end);
    }

    /// Removes every string, keeping the buffers.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// Reads the strings of a column in order, from a position on: each
/// string is the bytes from the end of the one before it to its own end,
/// so reading one costs one bounds check. Strings outside the bytes read
/// as empty (readers check the column first, so none is).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    /// The ends of the strings left to read.
    ends: &'a [u32],
    /// Where the next string starts.
    start: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the first string of `s`.
    pub(crate) fn new(s: &'a Strings) -> Cursor<'a> {
        Cursor {
            bytes: &s.bytes,
            ends: &s.ends,
            start: 0,
        }
    }

    /// The next string.
    #[inline]
    pub(crate) fn next(&mut self) -> Option<&'a [u8]> {
        let (&end, rest) = self.ends.split_first()?;
        self.ends = rest;
        let s = self.bytes.get(self.start..end as usize).unwrap_or_default();
        self.start = end as usize;
        Some(s)
    }

    /// The next `n` strings (at most those left), as a cursor of their own;
    /// this one moves past them.
    #[inline]
    pub(crate) fn split(&mut self, n: usize) -> Cursor<'a> {
        let (head, tail) = self.ends.split_at(n.min(self.ends.len()));
        let first = Cursor {
            bytes: self.bytes,
            ends: head,
            start: self.start,
        };
        if let Some(&end) = head.last() {
            self.start = end as usize;
        }
        self.ends = tail;
        first
    }

    /// Strings left.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }
}

/// An offset in a buffer, as the WIT's `u32`. Buffers are capped at
/// `u32::MAX` bytes (a batch by its builder's cap, a result by the guest's
/// 32-bit memory), so this never saturates in practice; if it did, the
/// column would be refused by its reader, never read out of bounds.
#[inline]
pub(crate) fn offset(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What the host hands `handle-batch`: the batch's keys (each once) with
/// their single values before the batch, and its events in arrival order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "host", derive(ComponentType, Lift, Lower))]
#[cfg_attr(feature = "host", component(record))]
pub struct Batch {
    /// The keys (UTF-8), each once.
    pub keys: Strings,
    /// Per key: how many single values it has (key `i`'s follow those of
    /// keys `0 .. i` in `value_names` and `value_bytes`).
    #[cfg_attr(feature = "host", component(name = "value-counts"))]
    pub value_counts: Vec<u32>,
    /// The values' names (UTF-8), grouped by key in key order.
    #[cfg_attr(feature = "host", component(name = "value-names"))]
    pub value_names: Strings,
    /// The values' bytes, one per name.
    #[cfg_attr(feature = "host", component(name = "value-bytes"))]
    pub value_bytes: Strings,
    /// Per event: the index of its key in `keys`.
    #[cfg_attr(feature = "host", component(name = "event-keys"))]
    pub event_keys: Vec<u32>,
    /// Per event: its payload.
    pub payloads: Strings,
    /// The events that have an event time, as indexes, ascending.
    pub timed: Vec<u32>,
    /// The time of each event in `timed`.
    pub times: Vec<i64>,
}

/// What `handle-batch` returns: per event handled, from the batch's first,
/// its emits and writes, or its failure; and whether the rest needs the
/// per-event path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "host", derive(ComponentType, Lift, Lower))]
#[cfg_attr(feature = "host", component(record))]
pub struct BatchResult {
    /// Per event handled: the number of its emits. Its length is the number
    /// of events handled.
    #[cfg_attr(feature = "host", component(name = "emit-counts"))]
    pub emit_counts: Vec<u32>,
    /// Per event handled: the number of its writes.
    #[cfg_attr(feature = "host", component(name = "write-counts"))]
    pub write_counts: Vec<u32>,
    /// The emitted keys (UTF-8).
    #[cfg_attr(feature = "host", component(name = "emit-keys"))]
    pub emit_keys: Strings,
    /// The emitted payloads, one per key.
    #[cfg_attr(feature = "host", component(name = "emit-payloads"))]
    pub emit_payloads: Strings,
    /// The names (UTF-8) of the values written.
    #[cfg_attr(feature = "host", component(name = "write-names"))]
    pub write_names: Strings,
    /// The new bytes of each write; empty for a delete.
    #[cfg_attr(feature = "host", component(name = "write-values"))]
    pub write_values: Strings,
    /// The writes that delete their value, as indexes in `write_names`,
    /// ascending.
    pub deletes: Vec<u32>,
    /// The events that failed, as indexes in the batch, ascending.
    pub failed: Vec<u32>,
    /// The reason (UTF-8) of each failed event.
    pub reasons: Strings,
    /// The event after the last one handled needs the per-event path.
    pub stop: bool,
}

/// What the host hands a window aggregate's `add` (`wit/window.wit`):
/// accumulators, and events to fold into them in arrival order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "host", derive(ComponentType, Lift, Lower))]
#[cfg_attr(feature = "host", component(record))]
pub struct Adds {
    /// The accumulators, each once; the `fresh` ones are empty.
    pub accumulators: Strings,
    /// The new accumulators, as indexes in `accumulators`, ascending.
    pub fresh: Vec<u32>,
    /// Per event: the index of its accumulator.
    pub targets: Vec<u32>,
    /// Per event: its payload.
    pub payloads: Strings,
    /// Per event: its event time.
    pub times: Vec<i64>,
}

/// What a window aggregate's `add` returns (`wit/window.wit`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "host", derive(ComponentType, Lift, Lower))]
#[cfg_attr(feature = "host", component(record))]
pub struct Added {
    /// Every accumulator of the [`Adds`], in order, after its events.
    pub accumulators: Strings,
    /// The events whose fold failed, as indexes, ascending.
    pub failed: Vec<u32>,
    /// The reason of each failed event, in the same order.
    pub reasons: Strings,
}

/// A window being finished (`wit/window.wit`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "host", derive(ComponentType, Lift, Lower))]
#[cfg_attr(feature = "host", component(record))]
pub struct Bounds {
    /// The key whose window it is.
    pub key: String,
    /// Its first event time (inclusive).
    pub start: i64,
    /// Its end (exclusive).
    pub end: i64,
}

/// Why an [`Added`] does not fit the [`Adds`] it answers.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddedError {
    /// A column is not well formed.
    #[error("`{column}`: {error}")]
    Column {
        /// The column.
        column: &'static str,
        /// What is wrong.
        error: StringsError,
    },
    /// Another number of accumulators than were handed in.
    #[error("{got} accumulators returned for {sent}")]
    Accumulators {
        /// Returned.
        got: usize,
        /// Handed in.
        sent: usize,
    },
    /// `failed` names an event the call did not have, or is not ascending.
    #[error("failed event index {index} is out of range or out of order ({events} events)")]
    Failed {
        /// The index.
        index: u32,
        /// Events handed in.
        events: usize,
    },
    /// `reasons` is not as long as `failed`, or one is not UTF-8.
    #[error("reasons do not match the failed events (one per failed event, UTF-8)")]
    Reasons,
}

impl Added {
    /// Checks the result against the call it answers: well-formed columns,
    /// one accumulator per accumulator sent, failed indexes in range and
    /// ascending, one UTF-8 reason per failed event.
    pub fn check(&self, adds: &Adds) -> Result<(), AddedError> {
        self.accumulators
            .check()
            .map_err(|error| AddedError::Column {
                column: "accumulators",
                error,
            })?;
        self.reasons.check().map_err(|error| AddedError::Column {
            column: "reasons",
            error,
        })?;
        if self.accumulators.len() != adds.accumulators.len() {
            return Err(AddedError::Accumulators {
                got: self.accumulators.len(),
                sent: adds.accumulators.len(),
            });
        }
        let events = adds.targets.len();
        let mut previous: Option<u32> = None;
        for &index in &self.failed {
            if index as usize >= events || previous.is_some_and(|p| p >= index) {
                return Err(AddedError::Failed { index, events });
            }
            previous = Some(index);
        }
        if self.reasons.len() != self.failed.len()
            || (0..self.reasons.len())
                .any(|i| std::str::from_utf8(self.reasons.get(i).unwrap_or_default()).is_err())
        {
            return Err(AddedError::Reasons);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&[u8]]) -> Strings {
        let mut s = Strings::default();
        for i in items {
            s.push(i);
        }
        s
    }

    /// An `add` result is refused, naming what is wrong, unless it fits
    /// the call it answers.
    #[test]
    fn added_is_checked_against_its_adds() {
        let adds = Adds {
            accumulators: strings(&[b"a", b"b"]),
            fresh: vec![],
            targets: vec![0, 1, 1],
            payloads: strings(&[b"x", b"y", b"z"]),
            times: vec![1, 2, 3],
        };
        let ok = Added {
            accumulators: strings(&[b"a1", b"b1"]),
            failed: vec![1],
            reasons: strings(&[b"no"]),
        };
        assert_eq!(ok.check(&adds), Ok(()));
        let check = |f: &dyn Fn(&mut Added)| {
            let mut bad = ok.clone();
            f(&mut bad);
            bad.check(&adds).unwrap_err().to_string()
        };
        assert_eq!(
            check(&|a| a.accumulators = strings(&[b"a1"])),
            "1 accumulators returned for 2"
        );
        assert_eq!(
            check(&|a| a.accumulators.ends[1] = 99),
            "`accumulators`: string 1 ends at 99, past its 4 bytes"
        );
        assert_eq!(
            check(&|a| a.failed = vec![3]),
            "failed event index 3 is out of range or out of order (3 events)"
        );
        assert_eq!(
            check(&|a| {
                a.failed = vec![1, 1];
                a.reasons = strings(&[b"no", b"no"]);
            }),
            "failed event index 1 is out of range or out of order (3 events)"
        );
        assert_eq!(
            check(&|a| a.reasons = strings(&[b"\xff"])),
            "reasons do not match the failed events (one per failed event, UTF-8)"
        );
        assert_eq!(
            check(&|a| a.reasons = strings(&[])),
            "reasons do not match the failed events (one per failed event, UTF-8)"
        );
    }
}
