//! The host's checked reader of what a guest returned: [`CheckedResult`].
//!
//! Everything in a [`BatchResult`] comes from the component, which may be
//! buggy or hostile. [`CheckedResult::new`] checks all of it in one pass
//! before the host applies anything, and refuses a result with a
//! [`ResultError`] naming the column or event at fault; once checked, the
//! outcomes are read without further checks.

use std::fmt;

use thiserror::Error;

use crate::wit::{BatchResult, Cursor, Strings, StringsError};

/// Per-item limits the host holds a result to, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest state name written.
    pub max_name: usize,
    /// Largest state value written.
    pub max_value: usize,
    /// Longest emitted key.
    pub max_emit_key: usize,
    /// Largest emitted payload.
    pub max_emit: usize,
}

impl Limits {
    /// No limit at all.
    pub const NONE: Limits = Limits {
        max_name: usize::MAX,
        max_value: usize::MAX,
        max_emit_key: usize::MAX,
        max_emit: usize::MAX,
    };
}

/// A `strings` column of a result, named in errors as in the WIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// `emit-keys`.
    EmitKeys,
    /// `emit-payloads`.
    EmitPayloads,
    /// `write-names`.
    WriteNames,
    /// `write-values`.
    WriteValues,
    /// `reasons`.
    Reasons,
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Column::EmitKeys => "emit-keys",
            Column::EmitPayloads => "emit-payloads",
            Column::WriteNames => "write-names",
            Column::WriteValues => "write-values",
            Column::Reasons => "reasons",
        })
    }
}

/// One byte string of a result, by the event it belongs to: named in
/// errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The key of emit `emit` (counted within the event's emits) of event
    /// `event`.
    EmitKey {
        /// Index of the event in the batch.
        event: usize,
        /// Index of the emit within the event's.
        emit: usize,
    },
    /// The payload of an emit.
    EmitPayload {
        /// Index of the event in the batch.
        event: usize,
        /// Index of the emit within the event's.
        emit: usize,
    },
    /// The state name of a write.
    WriteName {
        /// Index of the event in the batch.
        event: usize,
        /// Index of the write within the event's.
        write: usize,
    },
    /// The new value of a write.
    WriteValue {
        /// Index of the event in the batch.
        event: usize,
        /// Index of the write within the event's.
        write: usize,
    },
    /// The reason of a failed event.
    Reason {
        /// Index of the event in the batch.
        event: usize,
    },
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Field::EmitKey { event, emit } => write!(f, "event {event}: emit {emit} key"),
            Field::EmitPayload { event, emit } => write!(f, "event {event}: emit {emit} payload"),
            Field::WriteName { event, write } => write!(f, "event {event}: write {write} name"),
            Field::WriteValue { event, write } => write!(f, "event {event}: write {write} value"),
            Field::Reason { event } => write!(f, "event {event}: reason"),
        }
    }
}

/// Why a result was refused. Each names the column, list or event at
/// fault, with the index in it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResultError {
    /// A `strings` column that is not well formed.
    #[error("{column}: {error}")]
    Column {
        /// The column.
        column: Column,
        /// What is wrong with it.
        error: StringsError,
    },
    /// More events handled than the batch had.
    #[error("{handled} events handled (emit-counts) for a batch of {events} events")]
    TooManyHandled {
        /// Entries of `emit-counts`.
        handled: usize,
        /// Events in the batch.
        events: usize,
    },
    /// `write-counts` is not as long as `emit-counts`.
    #[error("write-counts has {writes} entries, emit-counts {emits}: one each per event handled")]
    Counts {
        /// Entries of `emit-counts`.
        emits: usize,
        /// Entries of `write-counts`.
        writes: usize,
    },
    /// Fewer events handled than the batch had, without `stop`.
    #[error("{handled} of the batch's {events} events handled, without `stop`")]
    MissingEvents {
        /// Events handled.
        handled: usize,
        /// Events in the batch.
        events: usize,
    },
    /// `stop` with every event handled: no event is left to stop at.
    #[error("`stop` after all {events} events of the batch were handled")]
    StopAfterAll {
        /// Events in the batch.
        events: usize,
    },
    /// Two columns that go together have different lengths.
    #[error("{a} holds {a_len} strings but {b} holds {b_len}: one each per item")]
    Columns {
        /// One column.
        a: Column,
        /// Its length.
        a_len: usize,
        /// The other.
        b: Column,
        /// Its length.
        b_len: usize,
    },
    /// An entry of `failed` or `deletes` that is not ascending or points
    /// past what it indexes.
    #[error(
        "{list}: entry {index} is {value}, but it must be above the one before and below {bound}"
    )]
    Index {
        /// `failed` or `deletes`.
        list: &'static str,
        /// Index of the entry.
        index: usize,
        /// Its value.
        value: u32,
        /// What it indexes: events handled, or writes.
        bound: usize,
    },
    /// Not one reason per failed event.
    #[error("reasons holds {reasons} strings for {failed} failed events")]
    Reasons {
        /// Strings of `reasons`.
        reasons: usize,
        /// Entries of `failed`.
        failed: usize,
    },
    /// An event's counts run past the emits or writes the result holds.
    #[error("event {event}: {count} {column} counted, but only {left} of the {total} in {column} are left")]
    Overrun {
        /// Index of the event.
        event: usize,
        /// `emit-keys` or `write-names`.
        column: Column,
        /// The event's count.
        count: u32,
        /// Strings of the column not used by earlier events.
        left: usize,
        /// Strings of the column.
        total: usize,
    },
    /// The events' counts leave strings of a column unused.
    #[error("the events handled count {used} of the {total} strings in {column}")]
    Unused {
        /// `emit-keys` or `write-names`.
        column: Column,
        /// Strings the counts add up to.
        used: u64,
        /// Strings of the column.
        total: usize,
    },
    /// A failed event with emits or writes.
    #[error("event {event}: failed, but with {emits} emits and {writes} writes")]
    FailedWithOutput {
        /// Index of the event.
        event: usize,
        /// Its emit count.
        emits: u32,
        /// Its write count.
        writes: u32,
    },
    /// A delete with value bytes.
    #[error("event {event}: write {write} deletes its value, but has {len} value bytes")]
    DeleteWithValue {
        /// Index of the event.
        event: usize,
        /// Index of the write within the event's.
        write: usize,
        /// Bytes of its value.
        len: usize,
    },
    /// A key, name or reason that is not UTF-8.
    #[error("{field} is not UTF-8 (invalid from byte {valid_up_to})")]
    NotUtf8 {
        /// The field.
        field: Field,
        /// Bytes of it that are valid UTF-8.
        valid_up_to: usize,
    },
    /// A key, name, value or payload over its limit.
    #[error("{field} is {len} bytes, over the limit of {limit} bytes")]
    TooLong {
        /// The field.
        field: Field,
        /// Its length.
        len: usize,
        /// The limit ([`Limits`]).
        limit: usize,
    },
}

/// Checks that `s` is a well-formed column.
fn column(s: &Strings, column: Column) -> Result<(), ResultError> {
    s.check()
        .map_err(|error| ResultError::Column { column, error })
}

/// Checks that `list` is strictly ascending and below `bound`.
fn ascending(list: &[u32], name: &'static str, bound: usize) -> Result<(), ResultError> {
    let mut floor = 0u64;
    for (index, &value) in list.iter().enumerate() {
        if (value as u64) < floor || value as usize >= bound {
            return Err(ResultError::Index {
                list: name,
                index,
                value,
                bound,
            });
        }
        floor = value as u64 + 1;
    }
    Ok(())
}

fn same_length(a: &Strings, ac: Column, b: &Strings, bc: Column) -> Result<(), ResultError> {
    match a.len() == b.len() {
        true => Ok(()),
        false => Err(ResultError::Columns {
            a: ac,
            a_len: a.len(),
            b: bc,
            b_len: b.len(),
        }),
    }
}

/// Checks that `b` is UTF-8 (known when its column is ASCII) and within
/// `limit`.
#[inline]
fn text(b: &[u8], ascii: bool, limit: usize, field: impl Fn() -> Field) -> Result<(), ResultError> {
    if !ascii {
        if let Err(e) = std::str::from_utf8(b) {
            return Err(ResultError::NotUtf8 {
                field: field(),
                valid_up_to: e.valid_up_to(),
            });
        }
    }
    within(b.len(), limit, field)
}

#[inline]
fn within(len: usize, limit: usize, field: impl Fn() -> Field) -> Result<(), ResultError> {
    match len > limit {
        true => Err(ResultError::TooLong {
            field: field(),
            len,
            limit,
        }),
        false => Ok(()),
    }
}

/// The next `count` strings from `*at` (which moves past them), checked to
/// be there.
fn take(
    at: &mut usize,
    count: u32,
    total: usize,
    event: usize,
    column: Column,
) -> Result<std::ops::Range<usize>, ResultError> {
    let left = total - *at;
    if count as usize > left {
        return Err(ResultError::Overrun {
            event,
            column,
            count,
            left,
            total,
        });
    }
    let range = *at..*at + count as usize;
    *at = range.end;
    Ok(range)
}

/// A [`BatchResult`] checked against the batch it answers:
///
/// - every `strings` column is well formed (its strings lie in its bytes,
///   in order, and its bytes end with the last one), and the columns that
///   go together are as long as each other;
/// - no more events handled than the batch had, and fewer exactly when
///   `stop`;
/// - the emit and write counts add up exactly to the emits and writes the
///   result holds;
/// - `failed` and `deletes` are ascending and index events handled and
///   writes; a failed event has no emits or writes, a delete no value, and
///   each failed event has a reason;
/// - emitted keys, names and reasons are UTF-8, and keys, payloads, names
///   and values are within the [`Limits`].
#[derive(Debug, Clone, Copy)]
pub struct CheckedResult<'a> {
    result: &'a BatchResult,
}

impl<'a> CheckedResult<'a> {
    /// Checks `result`, the answer to a batch of `events` events.
    pub fn new(
        result: &'a BatchResult,
        events: usize,
        limits: &Limits,
    ) -> Result<CheckedResult<'a>, ResultError> {
        let r = result;
        column(&r.emit_keys, Column::EmitKeys)?;
        column(&r.emit_payloads, Column::EmitPayloads)?;
        column(&r.write_names, Column::WriteNames)?;
        column(&r.write_values, Column::WriteValues)?;
        column(&r.reasons, Column::Reasons)?;
        same_length(
            &r.emit_keys,
            Column::EmitKeys,
            &r.emit_payloads,
            Column::EmitPayloads,
        )?;
        same_length(
            &r.write_names,
            Column::WriteNames,
            &r.write_values,
            Column::WriteValues,
        )?;
        let handled = r.emit_counts.len();
        if handled > events {
            return Err(ResultError::TooManyHandled { handled, events });
        }
        if r.write_counts.len() != handled {
            return Err(ResultError::Counts {
                emits: handled,
                writes: r.write_counts.len(),
            });
        }
        match (r.stop, handled < events) {
            (false, true) => return Err(ResultError::MissingEvents { handled, events }),
            (true, false) => return Err(ResultError::StopAfterAll { events }),
            _ => {}
        }
        ascending(&r.failed, "failed", handled)?;
        ascending(&r.deletes, "deletes", r.write_names.len())?;
        if r.reasons.len() != r.failed.len() {
            return Err(ResultError::Reasons {
                reasons: r.reasons.len(),
                failed: r.failed.len(),
            });
        }
        let (mut e, mut w, mut f, mut d) = (0usize, 0usize, 0usize, 0usize);
        let mut keys = Cursor::new(&r.emit_keys);
        let mut payloads = Cursor::new(&r.emit_payloads);
        let mut names = Cursor::new(&r.write_names);
        let mut values = Cursor::new(&r.write_values);
        let mut reasons = Cursor::new(&r.reasons);
        // Keys and names are mostly ASCII: a whole column is checked at
        // once, and only a column that is not is checked string by string.
        let keys_ascii = r.emit_keys.bytes.is_ascii();
        let names_ascii = r.write_names.bytes.is_ascii();
        for (event, (&ne, &nw)) in r.emit_counts.iter().zip(&r.write_counts).enumerate() {
            if r.failed.get(f).is_some_and(|&x| x as usize == event) {
                if ne != 0 || nw != 0 {
                    return Err(ResultError::FailedWithOutput {
                        event,
                        emits: ne,
                        writes: nw,
                    });
                }
                let reason = reasons.next().unwrap_or_default();
                text(reason, false, usize::MAX, || Field::Reason { event })?;
                f += 1;
                continue;
            }
            take(&mut e, ne, r.emit_keys.len(), event, Column::EmitKeys)?;
            for emit in 0..ne as usize {
                let key = keys.next().unwrap_or_default();
                text(key, keys_ascii, limits.max_emit_key, || Field::EmitKey {
                    event,
                    emit,
                })?;
                let payload = payloads.next().unwrap_or_default().len();
                within(payload, limits.max_emit, || Field::EmitPayload {
                    event,
                    emit,
                })?;
            }
            let writes = take(&mut w, nw, r.write_names.len(), event, Column::WriteNames)?;
            for (write, i) in writes.enumerate() {
                let name = names.next().unwrap_or_default();
                text(name, names_ascii, limits.max_name, || Field::WriteName {
                    event,
                    write,
                })?;
                let value = values.next().unwrap_or_default().len();
                if r.deletes.get(d).is_some_and(|&x| x as usize == i) {
                    d += 1;
                    if value != 0 {
                        return Err(ResultError::DeleteWithValue {
                            event,
                            write,
                            len: value,
                        });
                    }
                } else {
                    within(value, limits.max_value, || Field::WriteValue {
                        event,
                        write,
                    })?;
                }
            }
        }
        let sum = |counts: &[u32]| counts.iter().map(|&c| c as u64).sum::<u64>();
        if e != r.emit_keys.len() {
            return Err(ResultError::Unused {
                column: Column::EmitKeys,
                used: sum(&r.emit_counts),
                total: r.emit_keys.len(),
            });
        }
        if w != r.write_names.len() {
            return Err(ResultError::Unused {
                column: Column::WriteNames,
                used: sum(&r.write_counts),
                total: r.write_names.len(),
            });
        }
        Ok(CheckedResult { result })
    }

    /// Number of events handled (not counting the one `stop` ends at).
    pub fn handled(&self) -> usize {
        self.result.emit_counts.len()
    }

    /// Whether the result ends with a `stop`.
    pub fn stops(&self) -> bool {
        self.result.stop
    }

    /// The outcomes, in order: one per event handled, then
    /// [`Handled::Stop`] when the result stops.
    pub fn iter(&self) -> Outcomes<'a> {
        let r = self.result;
        Outcomes {
            result: r,
            event: 0,
            failed: 0,
            write: 0,
            deletes: &r.deletes,
            keys: Cursor::new(&r.emit_keys),
            payloads: Cursor::new(&r.emit_payloads),
            names: Cursor::new(&r.write_names),
            values: Cursor::new(&r.write_values),
            reasons: Cursor::new(&r.reasons),
            stopped: false,
        }
    }
}

impl<'a> IntoIterator for CheckedResult<'a> {
    type Item = Handled<'a>;
    type IntoIter = Outcomes<'a>;
    fn into_iter(self) -> Outcomes<'a> {
        self.iter()
    }
}

/// Text of a checked string.
#[inline]
fn as_str(b: &[u8]) -> &str {
    debug_assert!(std::str::from_utf8(b).is_ok());
    // SAFETY: `CheckedResult::new` checked that every string read as text
    // (emitted keys, write names, reasons) is UTF-8, and the result it
    // borrows cannot change while it lives; only the iterators below, made
    // from a `CheckedResult`, call this, on those strings, read in the same
    // order as the check read them.
    unsafe { std::str::from_utf8_unchecked(b) }
}

/// The outcome of one event, read from a [`CheckedResult`].
#[derive(Debug, Clone)]
pub enum Handled<'a> {
    /// Handled: its emits and writes, in order.
    Ok {
        /// Its emits: (key, payload).
        emits: Emits<'a>,
        /// Its writes: (name, new bytes or `None` to delete).
        writes: Writes<'a>,
    },
    /// The operator failed the event.
    Failed {
        /// Why (not truncated: the host caps it).
        reason: &'a str,
    },
    /// This event and the rest of the batch need the per-event path.
    Stop,
}

/// The outcomes of a [`CheckedResult`], in order.
#[derive(Debug, Clone)]
pub struct Outcomes<'a> {
    result: &'a BatchResult,
    /// The next event.
    event: usize,
    /// The next entry of `failed`.
    failed: usize,
    /// Index of the next write, and the deletes from it on.
    write: usize,
    deletes: &'a [u32],
    /// The next emit, write and reason.
    keys: Cursor<'a>,
    payloads: Cursor<'a>,
    names: Cursor<'a>,
    values: Cursor<'a>,
    reasons: Cursor<'a>,
    stopped: bool,
}

impl<'a> Iterator for Outcomes<'a> {
    type Item = Handled<'a>;

    #[inline]
    fn next(&mut self) -> Option<Handled<'a>> {
        let r = self.result;
        let event = self.event;
        let Some((&ne, &nw)) = r.emit_counts.get(event).zip(r.write_counts.get(event)) else {
            if r.stop && !self.stopped {
                self.stopped = true;
                return Some(Handled::Stop);
            }
            return None;
        };
        self.event += 1;
        if r.failed
            .get(self.failed)
            .is_some_and(|&f| f as usize == event)
        {
            self.failed += 1;
            let reason = self.reasons.next().unwrap_or_default();
            return Some(Handled::Failed {
                reason: as_str(reason),
            });
        }
        let (ne, nw) = (ne as usize, nw as usize);
        let emits = Emits {
            keys: self.keys.split(ne),
            payloads: self.payloads.split(ne),
        };
        let writes = Writes {
            names: self.names.split(nw),
            values: self.values.split(nw),
            write: self.write,
            deletes: self.deletes,
        };
        self.write += nw;
        while self
            .deletes
            .first()
            .is_some_and(|&d| (d as usize) < self.write)
        {
            self.deletes = &self.deletes[1..];
        }
        Some(Handled::Ok { emits, writes })
    }
}

/// The emits of one handled event: (key, payload).
#[derive(Debug, Clone)]
pub struct Emits<'a> {
    keys: Cursor<'a>,
    payloads: Cursor<'a>,
}

impl<'a> Iterator for Emits<'a> {
    type Item = (&'a str, &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let key = self.keys.next()?;
        Some((as_str(key), self.payloads.next().unwrap_or_default()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.keys.len(), Some(self.keys.len()))
    }
}

impl ExactSizeIterator for Emits<'_> {}

/// The writes of one handled event: (name, new bytes or `None` to delete).
#[derive(Debug, Clone)]
pub struct Writes<'a> {
    names: Cursor<'a>,
    values: Cursor<'a>,
    /// Index of the next write in the result, and the deletes from it on.
    write: usize,
    deletes: &'a [u32],
}

impl<'a> Iterator for Writes<'a> {
    type Item = (&'a str, Option<&'a [u8]>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let name = self.names.next()?;
        let value = self.values.next().unwrap_or_default();
        let deleted = self
            .deletes
            .first()
            .is_some_and(|&d| d as usize == self.write);
        if deleted {
            self.deletes = &self.deletes[1..];
        }
        self.write += 1;
        Some((as_str(name), (!deleted).then_some(value)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.names.len(), Some(self.names.len()))
    }
}

impl ExactSizeIterator for Writes<'_> {}
